"""The console-script entry: exit statuses and lazy command loading."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

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
    from pathlib import Path

    from ccl_cache_cli.reference import render

    doc = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert doc.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: run `python -m ccl_cache_cli.reference > docs/cli.md`"
    )
