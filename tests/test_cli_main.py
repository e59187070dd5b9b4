"""The console-script entry: exit statuses, lazy command loading, the generated reference, and
option defaults read from the config dataclasses."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ccl_cache.errors import ConfigError
from ccl_cache_cli import main as main_mod


def _run_main(monkeypatch: pytest.MonkeyPatch, command: click.Command, argv: list[str]) -> int:
    monkeypatch.setitem(main_mod.COMMANDS, command.name, ("main", f"_test_{command.name}", "test"))
    monkeypatch.setattr(main_mod, f"_test_{command.name}", command, raising=False)
    with pytest.raises(SystemExit) as exc:
        main_mod.main([command.name, *argv])
        raise SystemExit(0)  # main() returned normally: status 0
    return int(exc.value.code or 0)


def test_ctx_exit_status_reaches_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: with standalone_mode=False click *returns* ctx.exit(1); main() must exit with it.
    @click.command("failing")
    @click.pass_context
    def failing(ctx: click.Context) -> None:
        ctx.exit(1)

    assert _run_main(monkeypatch, failing, []) == 1


def test_library_error_is_one_line_and_status_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    @click.command("broken")
    def broken() -> None:
        raise ConfigError("option --frames=0: expected a positive integer")

    assert _run_main(monkeypatch, broken, []) == 2
    assert "error: option --frames=0" in capsys.readouterr().err


def test_success_is_status_0(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command("fine")
    def fine() -> None:
        click.echo("ok")

    assert _run_main(monkeypatch, fine, []) == 0


def test_help_lists_every_command_without_importing_torch() -> None:
    code = (
        "import sys; from ccl_cache_cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in main_mod.COMMANDS:
        assert name in out
    assert out.strip().endswith("NO-TORCH")


def test_cli_reference_is_current() -> None:
    from ccl_cache_cli.reference import render

    doc = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert doc.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: run `python -m ccl_cache_cli.reference > docs/cli.md`"
    )


def _commands() -> list[tuple[str, click.Command]]:
    """Every command and every benchmark subcommand, by the words that run it."""
    root = click.Context(main_mod.cli, info_name="ccl-cache")
    found: list[tuple[str, click.Command]] = []
    for name in main_mod.COMMANDS:
        command = main_mod.cli.get_command(root, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            ctx = click.Context(command, parent=root, info_name=name)
            found += [(f"{name} {sub}", command.get_command(ctx, sub)) for sub in command.list_commands(ctx)]
        else:
            found.append((name, command))
    return found


# Options whose value is no config dataclass field with a default: required values, output
# switches, KEY=VALUE lists parsed into a dict field, arguments of library functions. Any other
# option reads its default from its field through common.config_option.
PLAIN_OPTIONS: dict[str, set[str]] = {
    "synth": {"workers", "overwrite", "as_json"},
    "probe": {"as_json", "coverage"},
    "teach": {"modality", "arch", "out", "fmt", "root", "overwrite", "quiet", "as_json"},
    "extract": {"store", "quiet", "as_json", "dry_run", "no_probe"},
    "merge": {"overwrite", "as_json"},
    "info": {"as_json", "check", "list_failures"},
    "verify": {"repair", "as_json"},
    "cache-clips": {"as_json", "quiet", "dry_run", "no_probe"},
    "gaps": {"out", "html", "top", "no_store", "as_json"},
    "distill": {"preset", "student_opt", "loss_opt", "out", "quiet", "dry_run", "no_probe", "as_json"},
    "embed": {"store", "checkpoint", "device", "workers", "run_name", "as_json"},
    "index": {"run", "teacher", "split", "out", "overwrite", "as_json"},
    "retrieve": {"index_dir", "queries", "as_json"},
    "benchmark retrieval": {"as_json"},
    "benchmark table": {"out", "train_opts", "loss_opts", "quiet", "as_json"},
    "demo": {"quick", "as_json"},
    "doctor": {"path", "as_json"},
}


def test_every_option_default_is_read_from_its_config_field() -> None:
    """A default restated in an option (and drifting from the library's) cannot come back: every
    option is a ConfigOption whose default, as the command turns it into the field's value, is
    the field's default, or is named in PLAIN_OPTIONS."""
    from ccl_cache_cli.common import ConfigOption, field_default

    commands = _commands()
    assert {name for name, _ in commands} == set(PLAIN_OPTIONS)
    mapped = 0
    for name, command in commands:
        options = [p for p in command.params if isinstance(p, click.Option)]
        plain = {p.name for p in options if not isinstance(p, ConfigOption)}
        assert plain == PLAIN_OPTIONS[name], f"{name}: options without a config field: {sorted(plain)}"
        ctx = click.Context(command, info_name=name)
        for option in options:
            if not isinstance(option, ConfigOption):
                continue
            mapped += 1
            where = f"{name} {option.opts[0]} ({option.config.__name__}.{option.field})"
            if option.given_only:  # passed on only when given: the library's default applies
                assert option.default is None, where
                continue
            value = option.to_field(option.process_value(ctx, option.get_default(ctx)))
            assert value == field_default(option.config, option.field), f"{where}: default gives {value!r}"
    assert mapped > 100  # the walk saw the options (distill alone has over 30)


@pytest.mark.parametrize("argv, module, entry, config_name, given", [
    (["distill", "{tmp}", "--out", "{tmp}/run"], "distill", "train", "TrainConfig",
     {"store": "{tmp}", "out": "{tmp}/run"}),
    (["extract", "{tmp}/m.csv", "--store", "{tmp}/s.zarr"], "extract", "run_extraction", "ExtractConfig",
     {"manifest": "{tmp}/m.csv", "store": "{tmp}/s.zarr"}),
    (["cache-clips", "{tmp}"], "cache_clips", "build_frame_cache", "FrameCacheConfig", {}),
    (["index", "{tmp}", "--teacher", "audio/x", "--out", "{tmp}/ix"], "index", "index_store", "IndexConfig", {}),
    (["retrieve", "--index", "{tmp}", "--query", "q"], "retrieve", "run_retrieve", "RetrieveConfig",
     {"index": "{tmp}", "queries": ("q",)}),
    (["synth", "{tmp}/synth"], "synth", "generate", "SynthConfig", {}),
    (["teach", "{tmp}/m.csv", "--modality", "image", "--arch", "small_image", "--out", "{tmp}/t.pt"], "teach",
     "train_teacher", "TeachConfig", {"modality": "image", "arch": "small_image"}),
    (["benchmark", "retrieval", "{tmp}"], "benchmark_retrieval", "run_benchmark", "RetrievalBenchConfig",
     {"store": "{tmp}"}),
    (["benchmark", "table", "{tmp}", "--out", "{tmp}/t"], "benchmark_table", "run_table", "TableConfig",
     {"store": "{tmp}", "out": "{tmp}/t"}),
    (["demo"], "demo", "run_demo", "DemoConfig", {}),
])
def test_a_command_without_options_hands_the_library_its_default_config(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], module: str, entry: str,
        config_name: str, given: dict[str, object]) -> None:
    """End to end: the config a command builds from its required values alone equals the
    dataclass built from them (every other field at its default)."""
    class Built(Exception):
        pass

    cli_module = importlib.import_module(f"ccl_cache_cli.{module}")
    config_cls = getattr(cli_module, config_name)

    def stop(*args: object, **kwargs: object) -> None:
        raise Built(next(a for a in [*args, *kwargs.values()] if isinstance(a, config_cls)))

    monkeypatch.setattr(cli_module, entry, stop)
    if module == "teach":
        monkeypatch.setattr(cli_module, "load_manifest", lambda *args, **kwargs: [])
    if module == "distill":
        monkeypatch.setattr(cli_module, "log_to_console", lambda: None)  # no handler left on the logger

    def fill(value: object) -> object:
        return value.replace("{tmp}", str(tmp_path)) if isinstance(value, str) else value

    result = CliRunner().invoke(main_mod.cli, [fill(a) for a in argv])
    assert isinstance(result.exception, Built), result.output
    assert result.exception.args[0] == config_cls(**{k: fill(v) for k, v in given.items()})


def test_tables_written_to_a_pipe_keep_whole_values(tmp_path: Path) -> None:
    """Piped, rich cut table cells at 80 columns ("prese…"); a pipe now gets whole values."""
    from test_info_cli import build

    store = tmp_path / ("a-store-folder-with-a-long-name-" * 3) / "cache.zarr"
    store.parent.mkdir()
    build(store)
    out = subprocess.run([sys.executable, "-m", "ccl_cache_cli.main", "info", str(store)], capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "80"}, check=True)
    assert str(store) in out.stderr  # not wrapped at 80 columns
    cut = [line for line in out.stderr.splitlines() if "…" in line and "manifest sha256" not in line]
    assert not cut, cut  # no table cell cut short


def test_method_names_are_read_in_any_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--method CCL` was refused ("invalid choice"); method names are the registry's in any case."""
    from ccl_cache_cli import benchmark_table, distill

    seen: dict = {}
    monkeypatch.setattr(distill, "train", lambda config, progress=None: seen.setdefault("distill", config) and {})
    result = CliRunner().invoke(main_mod.cli, ["distill", str(tmp_path), "--method", "CCL", "--out", str(tmp_path / "r"),
                                               "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen["distill"].method == "ccl"
    assert benchmark_table._methods("CCL,Baseline") == ("ccl", "baseline")


def test_the_small_preset_sets_the_demos_settings_and_typed_options_win(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """README step 3 trained with the paper's defaults (SGD 1e-3, 16x112²), under which a short
    small-student run stays at chance; `--preset small` is the demo's setting, which learns."""
    from ccl_cache.train import PRESETS
    from ccl_cache_cli import distill

    seen: list = []
    monkeypatch.setattr(distill, "train", lambda config, progress=None: seen.append(config) and {})
    args = ["distill", str(tmp_path), "--out", str(tmp_path / "r"), "--quiet", "--preset", "small"]
    assert CliRunner().invoke(main_mod.cli, args).exit_code == 0
    assert CliRunner().invoke(main_mod.cli, [*args, "--lr", "0.01", "--student-opt", "width=8"]).exit_code == 0
    small, typed = seen
    assert {k: getattr(small, k) for k in PRESETS["small"]} == PRESETS["small"]
    assert typed.lr == 0.01 and typed.student_options == {"width": 8} and typed.optimizer == "adamw"
    from ccl_cache.experiments.demo import DemoConfig

    demo = DemoConfig()  # the preset is the demo's setting, the one docs/results.md shows learning
    assert (demo.batch_size, demo.optimizer, demo.lr, demo.frames, demo.size, demo.student_width) == (
        small.batch_size, small.optimizer, small.lr, small.frames, small.size, small.student_options["width"])


def test_an_error_raised_in_a_loader_worker_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """torch rebuilds a worker's exception with the worker's traceback in its message; the user
    sees the message alone, as for an error in the main process."""
    from ccl_cache.errors import StoreError

    wrapped = StoreError("Caught StoreError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1, in read\nccl_cache.errors.StoreError: s.zarr: array "
                         "'teachers/audio/x/embedding' rows 0:4 is damaged; run `ccl-cache verify s.zarr`")

    def fail(*args: object, **kwargs: object) -> None:
        raise wrapped

    monkeypatch.setattr(main_mod.cli, "main", fail)
    with pytest.raises(SystemExit) as status:
        main_mod.main(["info", "x"])
    err = capsys.readouterr().err
    assert status.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: s.zarr: array 'teachers/audio/x/embedding' rows 0:4 is damaged")
