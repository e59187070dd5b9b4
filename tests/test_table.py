"""The method table (`ccl-cache benchmark table`, ccl_cache.experiments.table): grid, outputs, resume, skip.

The grid tests train real (tiny) runs on the shared session store of fixtures_pipeline: rows
baseline + ccl + fitnet, columns A and AI, one seed, one epoch. One cell is interrupted mid-epoch
through the library, then the CLI finishes the grid (resuming that cell from its checkpoint) and a
second CLI run skips every cell.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
import torch
from click.testing import CliRunner

from ccl_cache.errors import ConfigError
from ccl_cache.experiments.table import (
    Cell, CellResult, TableConfig, TableResult, aggregate, best_methods, csv_text, markdown,
    parse_grouped_loss_options, parse_seeds, parse_train_options, run_table,
)
from ccl_cache_cli.main import cli, main

# Every cell: the smallest student and clips that still train (3 steps of 4 clips per epoch).
TINY_TRAIN = {"batch_size": 4, "frames": 4, "size": 32, "workers": 0, "device": "cpu", "test_max_windows": 2,
              "student_options": {"width": 4}, "lr": 0.05}
CLI_TINY = ["--batch-size", "4", "--frames", "4", "--size", "32", "--workers", "0", "--device", "cpu",
            "--test-max-windows", "2", "--train-opt", "student_options={width: 4}", "--lr", "0.05"]
GRID = ["--methods", "ccl,fitnet", "--modalities", "A,AI", "--seeds", "1", "--epochs", "1", "--student", "small"]
CELLS = ["baseline-seed1", "ccl-A-seed1", "ccl-AI-seed1", "fitnet-A-seed1", "fitnet-AI-seed1"]


# ============================================================================================
# Options and configuration (no training)


def test_seeds_count_or_list() -> None:
    assert parse_seeds("3") == (1, 2, 3)
    assert parse_seeds("1,5,9") == (1, 5, 9)
    assert parse_seeds("7,") == (7,)
    with pytest.raises(ConfigError, match="count"):
        parse_seeds("three")
    with pytest.raises(ConfigError, match="at least one"):
        parse_seeds("0")


def test_loss_and_train_options_are_typed() -> None:
    assert parse_grouped_loss_options(["ccl.tau_audio=0.3", "fitnet.beta=10", "ccl.jsd=false"]) == {
        "ccl": {"tau_audio": 0.3, "jsd": False}, "fitnet": {"beta": 10.0}}
    with pytest.raises(ConfigError, match="method.key=value"):
        parse_grouped_loss_options(["tau_audio=0.3"])
    with pytest.raises(ConfigError, match="no option 'nope'"):
        parse_grouped_loss_options(["ccl.nope=1"])
    parsed = parse_train_options(["grad_clip=1", "milestones=[2, 4]", "deterministic=true", "amp=off",
                                  "student_options={width: 8}"])
    assert parsed == {"grad_clip": 1, "milestones": (2, 4), "deterministic": True, "amp": "off",
                      "student_options": {"width": 8}}
    assert isinstance(parse_train_options(["lr=1"])["lr"], float)
    with pytest.raises(ConfigError, match="key one of"):
        parse_train_options(["epochs=3"])  # a table-level setting, not a shared train option
    with pytest.raises(ConfigError, match="type int"):
        parse_train_options(["batch_size=big"])


def test_grid_layout_and_reference_row() -> None:
    config = TableConfig(store="s.zarr", methods=("crd", "ccl"), modalities=("AI", "A"), seeds=(1, 2))
    assert config.method_names() == ("baseline", "crd", "ccl")
    assert config.columns() == ("A", "AI")  # the paper's order, whatever order was asked
    names = [c.name for c in config.cells()]
    assert names[:5] == ["baseline-seed1", "crd-A-seed1", "crd-AI-seed1", "ccl-A-seed1", "ccl-AI-seed1"]
    assert len(names) == 10 and names[5] == "baseline-seed2"  # seed-major: whole seeds finish first
    baseline = config.cell_config(Cell("baseline", None, 2))
    assert baseline.teachers == () and baseline.seed == 2 and baseline.out == str(Path("runs/table/baseline-seed2"))
    ccl_a = config.cell_config(Cell("ccl", "A", 1))
    assert ccl_a.teachers == ("audio",) and ccl_a.write_embeddings is False
    # A method's options reach every column; each column takes those of its own teachers.
    tuned = dataclasses.replace(config, loss_options={"ccl": {"tau_audio": 0.3, "tau_image": 0.2, "lam": 0.5}})
    assert tuned.cell_config(Cell("ccl", "A", 1)).loss_options == {"tau_audio": 0.3, "lam": 0.5}
    assert tuned.cell_config(Cell("ccl", "AI", 1)).loss_options == {"tau_audio": 0.3, "tau_image": 0.2, "lam": 0.5}
    tuned.cell_config(Cell("ccl", "A", 1)).validate()
    every = TableConfig(store="s.zarr").method_names()
    assert every[0] == "baseline" and {"ccl", "crd", "cmc", "fitnet", "pkt", "cor", "rkd"} <= set(every)


@pytest.mark.parametrize("bad, match", [
    ({"methods": ("nope",)}, "unknown loss 'nope'"),
    ({"modalities": ("V",)}, "choose among A, I, AI"),
    ({"seeds": (1, 1)}, "each once"),
    ({"epochs": 0}, "at least 1"),
    ({"loss_options": {"crd": {"beta": 1.0}}}, "not in the table"),
    ({"loss_options": {"ccl": {"tau_audio": -1.0}}}, "positive temperature"),
    ({"train_options": {"seed": 3}}, "set by the table"),
    ({"train_options": {"colour": "red"}}, "not a TrainConfig field"),
    ({"train_options": {"batch_size": 1}}, "batch_size=1"),
    ({"teachers": ("image",)}, "column A needs a audio teacher"),
])
def test_bad_configs_are_refused_with_the_fix(bad: dict[str, Any], match: str) -> None:
    config = TableConfig(store="s.zarr", **{"methods": ("ccl",), **bad})
    with pytest.raises(ConfigError, match=match):
        config.validate()


def _fake(method: str, column: str | None, seed: int, video: float, clip: float) -> CellResult:
    return CellResult(Cell(method, column, seed), f"runs/{method}", "trained",
                      {"video_top1": video, "clip_top1": clip}, 1.0)


def test_aggregation_markdown_and_csv_without_training() -> None:
    config = TableConfig(store="s.zarr", methods=("ccl",), modalities=("A", "AI"), seeds=(1, 2))
    cells = [_fake("baseline", None, 1, 0.50, 0.40), _fake("baseline", None, 2, 0.60, 0.50),
             _fake("ccl", "A", 1, 0.70, 0.30), _fake("ccl", "A", 2, 0.80, 0.40),
             _fake("ccl", "AI", 1, 0.40, 0.60), _fake("ccl", "AI", 2, 0.50, 0.70)]
    stats = aggregate(config, cells)
    assert stats["baseline"]["A"]["video_top1"] == stats["baseline"]["AI"]["video_top1"]  # one row, every column
    s = stats["ccl"]["A"]["video_top1"]
    assert s.mean == pytest.approx(0.75) and s.std == pytest.approx(0.0707107, rel=1e-5) and s.n == 2
    best = best_methods(stats, config.columns())
    assert best["video_top1"] == {"A": ["ccl"], "AI": ["baseline"]}
    assert best["clip_top1"] == {"A": ["baseline"], "AI": ["ccl"]}
    result = TableResult(config, tuple(cells), stats, best, {}, 0.0)
    md = markdown(result).splitlines()
    first = md.index("## Test video top-1 (%)")
    assert md[first + 2] == "| method | A | AI |"
    assert md[first + 4] == "| baseline | 55.0 ± 7.1 | **55.0 ± 7.1** |"
    assert md[first + 5] == "| ccl | **75.0 ± 7.1** | 45.0 ± 7.1 |"
    rows = list(csv.DictReader(io.StringIO(csv_text(result))))
    assert [(r["method"], r["column"]) for r in rows] == [("baseline", "A"), ("baseline", "AI"), ("ccl", "A"),
                                                          ("ccl", "AI")]
    assert float(rows[2]["video_top1_mean"]) == pytest.approx(0.75)
    assert rows[2]["video_top1_values"] == "0.700000;0.800000"


# ============================================================================================
# A real grid through the CLI: outputs, layout, interrupted cell resumed, finished cells skipped


class _Stop(Exception):
    """Stands in for Ctrl-C / a killed job in the middle of a cell."""


def _interrupt_at(cell: str, step: int) -> Any:
    def progress(event: str, data: Mapping[str, Any]) -> None:
        if event == "train" and data["cell"] == cell and data["event"] == "steps" and data["data"]["step"] >= step:
            raise _Stop(cell)

    return progress


def _cli_json(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: these steps are tiny, and a thread pool on a shared 2-core machine
    spends more time synchronising than computing. Restored for the other tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grid(pipeline: Any, one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The grid: interrupted in ccl-AI after its first checkpointed step, finished by the CLI,
    then run again. Returns both CLI answers, the out dir and summary mtimes in between."""
    out = tmp_path_factory.mktemp("table") / "grid"
    # First attempt (library): checkpoint every step so the stop leaves a mid-epoch checkpoint.
    config = TableConfig(store=str(pipeline.store), out=str(out), methods=("ccl", "fitnet"), modalities=("A", "AI"),
                         seeds=(1,), epochs=1, student="small",
                         train_options={**TINY_TRAIN, "save_every": 1, "log_every": 1})
    with pytest.raises(_Stop):
        run_table(config, progress=_interrupt_at("ccl-AI-seed1", step=2))
    assert (out / "ccl-AI-seed1" / "checkpoints" / "last.pt").exists()
    assert not (out / "ccl-AI-seed1" / "summary.json").exists()
    args = ["benchmark", "table", str(pipeline.store), "--out", str(out), *GRID, *CLI_TINY, "--json"]
    first = _cli_json(args)
    mtimes = {c: (out / c / "summary.json").stat().st_mtime_ns for c in CELLS}
    second = _cli_json(args)
    return {"out": out, "first": first, "second": second, "mtimes": mtimes, "store": pipeline.store}


def test_grid_writes_every_output(grid: dict[str, Any]) -> None:
    out: Path = grid["out"]
    for name in ("table.md", "table.csv", "table.json", "table.png", "table.yaml"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == CELLS
    for cell in CELLS:
        summary = json.loads((out / cell / "summary.json").read_text())
        assert set(summary["test"]) >= {"video_top1", "clip_top1"}
    assert json.loads((out / "table.json").read_text())["rows"] == grid["second"]["rows"]


def test_grid_layout(grid: dict[str, Any]) -> None:
    table = grid["first"]
    assert table["methods"] == ["baseline", "ccl", "fitnet"] and table["columns"] == ["A", "AI"]
    assert [c["cell"] for c in table["cells"]] == CELLS
    rows = table["rows"]
    assert rows["baseline"]["A"] == rows["baseline"]["AI"]  # the reference row fills every column
    for method in ("ccl", "fitnet"):
        for column in ("A", "AI"):
            stat = rows[method][column]["video_top1"]
            assert stat["n"] == 1 and stat["std"] == 0.0 and 0.0 <= stat["mean"] <= 1.0
    md = (grid["out"] / "table.md").read_text().splitlines()
    header = md.index("| method | A | AI |")
    body = md[header + 2: header + 5]
    assert [line.split("|")[1].strip() for line in body] == ["baseline", "ccl", "fitnet"]
    for col in (2, 3):  # each column has its best value in bold
        assert any(line.split("|")[col].strip().startswith("**") for line in body)
    rows_csv = list(csv.DictReader(io.StringIO((grid["out"] / "table.csv").read_text())))
    assert len(rows_csv) == 6 and {r["column"] for r in rows_csv} == {"A", "AI"}


def test_interrupted_cell_resumes_and_finished_cells_are_skipped(grid: dict[str, Any]) -> None:
    status = {c["cell"]: c for c in grid["first"]["cells"]}
    assert status["baseline-seed1"]["status"] == "skipped" and status["ccl-A-seed1"]["status"] == "skipped"
    assert status["ccl-AI-seed1"]["status"] == "resumed"
    assert status["ccl-AI-seed1"]["resumed_from"] == {"epoch": 0, "step": 1}  # the step-1 checkpoint
    assert status["fitnet-A-seed1"]["status"] == status["fitnet-AI-seed1"]["status"] == "trained"
    # The resumed run logged the steps after the checkpoint only once (metrics.jsonl truncated on resume).
    records = [json.loads(line) for line in (grid["out"] / "ccl-AI-seed1" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records if r["kind"] == "train"]
    summary = json.loads((grid["out"] / "ccl-AI-seed1" / "summary.json").read_text())
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == summary["global_step"]
    # Second CLI run: nothing retrained, summaries untouched, same table.
    assert all(c["status"] == "skipped" for c in grid["second"]["cells"])
    assert {c: (grid["out"] / c / "summary.json").stat().st_mtime_ns for c in CELLS} == grid["mtimes"]
    assert grid["second"]["rows"] == grid["first"]["rows"]


def test_changed_settings_on_a_finished_grid_are_refused(grid: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    args = ["benchmark", "table", str(grid["store"]), "--out", str(grid["out"]), *GRID, *CLI_TINY, "--lr", "0.01"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "baseline-seed1 holds a finished run with other settings" in err and "lr: checkpoint=0.05 now=0.01" in err
