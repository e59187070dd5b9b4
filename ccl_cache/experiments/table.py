"""The method table: Table 1 of Chen et al., "Distilling Audio-Visual Knowledge by Compositional
Contrastive Learning" (CVPR 2021), on any store.

Every distillation method of :data:`ccl_cache.losses.LOSSES` is trained with the same student,
data, epochs and seeds from the audio teacher (column A), the image teacher (I) and both (AI);
the test video top-1 (softmax averaged over non-overlapping windows) and clip top-1 are reported
as mean ± std over seeds. A method that uses no teacher (``uses_teachers = False``, e.g. the
cross-entropy ``baseline``) is trained once per seed and shown in every column, as in the paper;
``baseline`` is always part of the table as the reference row.

Each cell (method × column × seed) is one ordinary training run (:func:`ccl_cache.train.train`)
in its own directory ``out/<method>-<A|I|AI>-seed<k>/`` (``out/<method>-seed<k>/`` for a
teacher-free method). The grid resumes: a cell whose ``summary.json`` holds test metrics is
skipped (after checking that it was trained with the same settings), a cell with a checkpoint but
no summary resumes from ``checkpoints/last.pt`` through the trainer's resume, anything else trains
from scratch. Outputs in ``out/``: ``table.md`` (the paper's layout, best per column in bold),
``table.csv``, ``table.json``, ``table.png`` (one bar chart per column with std error bars) and
``table.yaml`` (the resolved configuration), all written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import yaml

from ccl_cache import hardware
from ccl_cache.errors import ConfigError
from ccl_cache.fileio import atomic_path, atomic_write_text, save_config, to_plain, write_json
from ccl_cache.losses import LOSSES
from ccl_cache.manifest import canonical_splits
from ccl_cache.train import checkpoint as ckpt
from ccl_cache.train import RESUME_FREE, TrainConfig, options_for_teachers, resolve_config, train

COLUMNS: dict[str, tuple[str, ...]] = {"A": ("audio",), "I": ("image",), "AI": ("audio", "image")}
"""Table 1's columns: the teacher modalities each method distils from."""

REFERENCE = "baseline"
"""The reference row every table holds (cross-entropy only, no teacher)."""

METRICS: tuple[str, ...] = ("video_top1", "clip_top1")
"""Test metrics aggregated per cell; the first is the one the table shows first and bolds."""

CELL_FIELDS = frozenset({"store", "method", "loss_options", "teachers", "seed", "out", "run_name", "resume",
                         "epochs", "student"})
"""TrainConfig fields the table sets per cell (or at its top level): not train options."""

TABLE_TRAIN_DEFAULTS: dict[str, Any] = {"write_embeddings": False}
"""Cell defaults that differ from a single run's: a table measures recognition, so writing every
cell's student embeddings into the store (a full extra pass over the store) is opt-in."""

TableProgress = Callable[[str, Mapping[str, Any]], None]
"""``progress(event, data)``; events: plan, cell, train (a forwarded trainer event), cell_done, done."""


# ============================================================================================
# Configuration and the grid


@dataclass(frozen=True)
class Cell:
    """One training run of the grid: ``method`` from the teachers of ``column`` with ``seed``.

    ``column`` is None for a teacher-free method (its result fills every column).
    """

    method: str
    column: str | None
    seed: int

    @property
    def name(self) -> str:
        """The run directory name: ``ccl-AI-seed1``, or ``baseline-seed1`` without teachers."""
        middle = f"-{self.column}" if self.column is not None else ""
        return f"{self.method}{middle}-seed{self.seed}"


def uses_teachers(method: str) -> bool:
    """Whether ``method`` distils from teachers (asked of the registry, never of the name)."""
    return bool(LOSSES.get(method).uses_teachers)


@dataclass(frozen=True)
class TableConfig:
    """What the table compares; every cell shares everything but method, column and seed.

    ``methods``: registered loss names, or ``("all",)`` for every registered method;
    ``baseline`` is added as the reference row. ``modalities``: columns among A, I, AI.
    ``seeds``: the seeds every cell is trained with. ``teachers``: the store's teachers as
    modalities or keys (``"audio/cnn14"``); each column uses those of its modalities.
    ``loss_options``: per method, its ``--loss-opt`` values (e.g. ``{"ccl": {"tau_audio": 0.5}}``).
    ``train_options``: any other :class:`~ccl_cache.train.TrainConfig` field (batch_size, lr,
    frames, size, workers, device, ...), the same for every cell.
    """

    store: str
    out: str = "runs/table"
    methods: tuple[str, ...] = ("all",)
    modalities: tuple[str, ...] = ("A", "I", "AI")
    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int = 300
    student: str = "r21d_ccl"
    teachers: tuple[str, ...] = ("audio", "image")
    loss_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ resolution
    def method_names(self) -> tuple[str, ...]:
        """The table's rows: the reference first, then the methods asked for (``all`` expanded)."""
        asked: list[str] = []
        for name in self.methods:
            asked += LOSSES.names() if name == "all" else [name]
        for name in asked:
            LOSSES.get(name)  # ConfigError listing the registered methods
        ordered = [REFERENCE] + [n for n in asked if n != REFERENCE]
        return tuple(dict.fromkeys(ordered))

    def columns(self) -> tuple[str, ...]:
        """The table's columns in the paper's order (A, I, AI), each asked-for once."""
        return tuple(c for c in COLUMNS if c in self.modalities)

    def cells(self) -> list[Cell]:
        """Every run of the grid, seed-major, so that an interrupted grid has whole seeds done."""
        grid: list[Cell] = []
        for seed in self.seeds:
            for method in self.method_names():
                if not uses_teachers(method):
                    grid.append(Cell(method, None, seed))
                    continue
                grid += [Cell(method, column, seed) for column in self.columns()]
        return grid

    def column_teachers(self, column: str | None) -> tuple[str, ...]:
        """The teacher specs a column's runs load (none for a teacher-free cell)."""
        if column is None:
            return ()
        chosen = tuple(t for t in self.teachers if t.split("/", 1)[0] in COLUMNS[column])
        missing = [m for m in COLUMNS[column] if not any(t.split("/", 1)[0] == m for t in chosen)]
        if missing:
            raise ConfigError(
                f"column {column} needs a {missing[0]} teacher but teachers={list(self.teachers)}; "
                f"add '{missing[0]}' (or '{missing[0]}/<name>') to --teachers or drop {column} from --modalities"
            )
        return chosen

    def cell_config(self, cell: Cell) -> TrainConfig:
        """The training configuration of one cell."""
        teachers = self.column_teachers(cell.column)
        return TrainConfig(
            **{**TABLE_TRAIN_DEFAULTS, **self.train_options},
            store=str(self.store), method=cell.method, teachers=teachers, student=self.student, epochs=self.epochs,
            # A method's options reach every column: the A and I columns take the ones for their teacher.
            loss_options=options_for_teachers(self.loss_options.get(cell.method, {}), teachers),
            seed=cell.seed, out=str(Path(self.out) / cell.name), resume=False,
        )

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """ConfigError naming the first bad value and what to pass instead."""
        methods = self.method_names()
        bad_cols = [m for m in self.modalities if m not in COLUMNS]
        if bad_cols or not self.modalities:
            raise ConfigError(f"modalities {list(self.modalities)}: choose among {', '.join(COLUMNS)} (e.g. A,I,AI)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds {list(self.seeds)}: give at least one seed, each once")
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}: need at least 1")
        for method, options in self.loss_options.items():
            if method not in methods:
                raise ConfigError(f"loss options given for {method!r}, which is not in the table "
                                  f"({', '.join(methods)}); add it to --methods or drop its --loss-opt")
            LOSSES.get(method).make_options(**options)
        names = {f.name for f in fields(TrainConfig)}
        for key in self.train_options:
            if key in CELL_FIELDS:
                raise ConfigError(f"train option {key!r} is set by the table for each cell; use the table's own "
                                  "--epochs, --student, --seeds, --teachers, --out or --loss-opt instead")
            if key not in names:
                valid = ", ".join(sorted(names - CELL_FIELDS))
                raise ConfigError(f"train option {key!r} is not a TrainConfig field; valid: {valid}")
        for cell in self._one_cell_per_method():
            self.cell_config(cell).validate()

    def _one_cell_per_method(self) -> list[Cell]:
        seen: dict[str, Cell] = {}
        for cell in self.cells():
            seen.setdefault(cell.method, cell)
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"3"`` → seeds (1, 2, 3); ``"1,5,9"`` → those seeds."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give a count (3) or a list of seeds (1,5,9)") from None
    if "," not in str(text) and len(values) == 1:
        if values[0] < 1:
            raise ConfigError(f"--seeds {text!r}: need at least one seed")
        return tuple(range(1, values[0] + 1))
    if not values:
        raise ConfigError(f"--seeds {text!r}: give a count (3) or a list of seeds (1,5,9)")
    return tuple(values)


def parse_grouped_loss_options(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["ccl.tau_audio=0.3", "crd.beta=1"]`` → ``{"ccl": {"tau_audio": 0.3}, "crd": {"beta": 1.0}}``."""
    from ccl_cache.losses import parse_loss_options

    grouped: dict[str, list[str]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot or "=" not in rest or not method:
            raise ConfigError(f"--loss-opt {item!r}: expected method.key=value, e.g. ccl.tau_audio=0.5")
        grouped.setdefault(method, []).append(rest)
    return {method: parse_loss_options(method, values) for method, values in grouped.items()}


def parse_train_options(items: Iterable[str]) -> dict[str, Any]:
    """``["grad_clip=1.0", "milestones=[5, 8]"]`` → typed TrainConfig values (``--train-opt``).

    A value is parsed as YAML (numbers, booleans, lists, ``null``) and converted to the type of
    the field's default where that default is a plain number or string.
    """
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults or key in CELL_FIELDS:
            valid = ", ".join(sorted(set(defaults) - CELL_FIELDS))
            raise ConfigError(f"--train-opt {item!r}: expected key=value with key one of: {valid}")
        value = yaml.safe_load(raw) if raw.strip() else None
        kind = type(defaults[key])
        try:
            if kind in (int, float) and not isinstance(value, bool) and value is not None:
                value = kind(value)
            elif kind is bool and not isinstance(value, bool):
                raise ValueError(raw)
            elif kind is str and value is not None:
                value = str(raw.strip())
        except (TypeError, ValueError):
            raise ConfigError(f"--train-opt {item!r}: expected a value of type {kind.__name__} "
                              f"(default {defaults[key]!r})") from None
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


# ============================================================================================
# Results


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1; 0 for one seed) of a metric over seeds."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        arr = np.asarray(values, dtype=np.float64)
        std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
        return cls(float(arr.mean()), std, tuple(float(v) for v in arr))

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class CellResult:
    """One finished cell: where it ran, how (trained, resumed, skipped) and its test metrics."""

    cell: Cell
    run_dir: str
    status: str  # "trained" | "resumed" | "skipped"
    test: dict[str, float]
    time_s: float
    resumed_from: dict[str, int] | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class TableResult:
    """The aggregated table: ``stats[method][column][metric]``, the best method per column."""

    config: TableConfig
    cells: tuple[CellResult, ...]
    stats: dict[str, dict[str, dict[str, Stat]]]
    best: dict[str, dict[str, list[str]]]  # metric -> column -> best method(s)
    outputs: dict[str, str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        rows = {
            method: {col: {m: {"mean": s.mean, "std": s.std, "n": s.n, "values": list(s.values)}
                           for m, s in per.items()} for col, per in cols.items()}
            for method, cols in self.stats.items()
        }
        cells = [{"cell": c.cell.name, "method": c.cell.method, "column": c.cell.column, "seed": c.cell.seed,
                  "run_dir": c.run_dir, "status": c.status, "test": c.test, "time_s": c.time_s,
                  "resumed_from": c.resumed_from, "data": c.data} for c in self.cells]
        return {"format": "ccl-cache-table", "version": 1, "config": self.config.to_dict(),
                "methods": list(self.stats), "columns": list(self.config.columns()), "metrics": list(METRICS),
                "rows": rows, "best": self.best, "cells": cells, "outputs": self.outputs,
                "seconds": self.seconds}


def aggregate(config: TableConfig, results: Sequence[CellResult]) -> dict[str, dict[str, dict[str, Stat]]]:
    """Mean ± std over seeds per (method, column); teacher-free methods fill every column."""
    stats: dict[str, dict[str, dict[str, Stat]]] = {}
    for method in config.method_names():
        stats[method] = {}
        for column in config.columns():
            want = None if not uses_teachers(method) else column
            mine = [r for r in results if r.cell.method == method and r.cell.column == want]
            if mine:
                stats[method][column] = {m: Stat.of([r.test[m] for r in mine]) for m in METRICS}
    return stats


def best_methods(stats: Mapping[str, Mapping[str, Mapping[str, Stat]]], columns: Sequence[str]
                 ) -> dict[str, dict[str, list[str]]]:
    """Per metric and column, the method(s) with the highest mean (ties all win)."""
    best: dict[str, dict[str, list[str]]] = {}
    for metric in METRICS:
        best[metric] = {}
        for column in columns:
            means = {m: cols[column][metric].mean for m, cols in stats.items() if column in cols}
            if means:
                top = max(means.values())
                best[metric][column] = [m for m, v in means.items() if math.isclose(v, top, abs_tol=1e-12)]
    return best


# ============================================================================================
# Running the grid


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The cell's summary.json when it is complete (holds the test metrics), else None."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    test = summary.get("test") if isinstance(summary, dict) else None
    if not isinstance(test, dict) or not all(isinstance(test.get(m), (int, float)) for m in METRICS):
        return None
    return summary


def _check_finished(run_dir: Path, expected: TrainConfig) -> None:
    """ConfigError when a finished cell was trained with other settings than this table's."""
    path = run_dir / "config.yaml"
    try:
        saved = TrainConfig.from_dict(yaml.safe_load(path.read_text(encoding="utf-8"))).to_dict()
    except (OSError, yaml.YAMLError, ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the finished cell's configuration ({exc}); delete {run_dir} "
                          "to retrain that cell") from None
    resolved = resolve_config(expected, hardware.resolve_device(expected.device)).to_dict()
    diffs = ckpt.config_differences(saved, resolved, RESUME_FREE)
    if diffs:
        raise ConfigError(
            f"{run_dir} holds a finished run with other settings than this table's: {'; '.join(diffs)}. "
            "Rerun with the original options, pass another --out, or delete that directory to retrain it"
        )


def _check_store(config: TableConfig) -> None:
    """Fail before hours of training: the store opens, has test clips and every needed teacher."""
    from ccl_cache.data import resolve_teachers
    from ccl_cache.store import open_store

    with open_store(config.store, "r") as store:
        if "test" not in canonical_splits(store.clips.split):
            raise ConfigError(f"{config.store}: has no clips in split 'test'; the table reports test top-1, so "
                              "give the manifest a test split and extract again")
        for column in config.columns():
            resolve_teachers(store, config.column_teachers(column))


def run_cell(config: TableConfig, cell: Cell, progress: TableProgress) -> CellResult:
    """Train (or resume, or skip when finished) one cell and return its test metrics."""
    cfg = config.cell_config(cell)
    run_dir = Path(cfg.out)
    summary = _read_summary(run_dir)
    if summary is not None:
        _check_finished(run_dir, cfg)
        progress("cell", {"cell": cell.name, "status": "skipped", "run_dir": str(run_dir)})
        return CellResult(cell, str(run_dir), "skipped", _metrics(summary), float(summary.get("time_s", 0.0)),
                          None, summary.get("data"))
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    status = "resumed" if resume else "trained"
    progress("cell", {"cell": cell.name, "status": status, "run_dir": str(run_dir)})
    started: dict[str, int] = {}

    def forward(event: str, data: Mapping[str, Any]) -> None:
        if event == "start":
            started.update(epoch=int(data["start_epoch"]), step=int(data["start_step"]))
        progress("train", {"cell": cell.name, "event": event, "data": data})

    began = time.perf_counter()
    summary = train(replace(cfg, resume=resume), progress=forward)
    result = CellResult(cell, str(run_dir), status, _metrics(summary), time.perf_counter() - began,
                        dict(started) if resume else None, summary.get("data"))
    progress("cell_done", {"cell": cell.name, "status": status, "test": result.test, "time_s": result.time_s})
    return result


def _metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    test = summary.get("test") or {}
    missing = [m for m in METRICS if not isinstance(test.get(m), (int, float))]
    if missing:
        raise ConfigError(f"run {summary.get('run')!r} has no test {missing[0]} (test split empty?); "
                          "the table needs test clips in the store")
    return {m: float(test[m]) for m in METRICS}


def _silent(event: str, data: Mapping[str, Any]) -> None:
    """Default progress: nothing."""


def run_table(config: TableConfig, progress: TableProgress | None = None) -> TableResult:
    """Run (or resume) the grid of ``config`` and write the table files; returns the table.

    Raises ConfigError for bad settings or a store without what the columns need before any
    training starts; an interrupted grid resumes when called again with the same config.
    """
    report = progress or _silent
    config.validate()
    _check_store(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "table.yaml")
    began = time.perf_counter()
    cells = config.cells()
    done = sum(_read_summary(out / c.name) is not None for c in cells)
    report("plan", {"cells": [c.name for c in cells], "done": done, "todo": len(cells) - done, "out": str(out)})
    results = [run_cell(config, cell, report) for cell in cells]
    stats = aggregate(config, results)
    best = best_methods(stats, config.columns())
    outputs = {name: str(out / f"table.{name}") for name in ("md", "csv", "json", "png", "yaml")}
    result = TableResult(config, tuple(results), stats, best, outputs, time.perf_counter() - began)
    write_outputs(result, out)
    report("done", result.to_dict())
    return result


# ============================================================================================
# Writing the table


def _pct(stat: Stat) -> str:
    return f"{100 * stat.mean:.1f} ± {100 * stat.std:.1f}"


def cell_texts(result: TableResult, metric: str, bold: Callable[[str], str], missing: str) -> dict[str, list[str]]:
    """Per method (table row), its cells in column order: "mean ± std" in %, the column's best
    passed through ``bold`` (Markdown, rich, ...), ``missing`` where the method has no cell."""
    rows = {}
    for method, per in result.stats.items():
        cells = []
        for col in result.config.columns():
            if col not in per:
                cells.append(missing)
                continue
            text = _pct(per[col][metric])
            cells.append(bold(text) if method in result.best[metric].get(col, []) else text)
        rows[method] = cells
    return rows


def markdown(result: TableResult) -> str:
    """Table 1's layout: rows = methods, columns = A / I / AI, mean ± std in %, best in bold."""
    cfg, cols = result.config, result.config.columns()
    lines = [f"# Method table: {cfg.store}", ""]
    lines.append(f"Student `{cfg.student}`, {cfg.epochs} epochs, seeds {', '.join(map(str, cfg.seeds))} "
                 f"(mean ± std over {len(cfg.seeds)}); A = audio teacher, I = image teacher, AI = both. "
                 "The baseline uses no teacher and is repeated in every column.")
    titles = {"video_top1": "Test video top-1 (%)", "clip_top1": "Test clip top-1 (%)"}
    for metric in METRICS:
        lines += ["", f"## {titles[metric]}", "", "| method | " + " | ".join(cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for method, cells in cell_texts(result, metric, bold=lambda text: f"**{text}**", missing="–").items():
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(result: TableResult) -> str:
    """One row per (method, column): means, stds (fractions in [0, 1]) and the per-seed values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method", "column", "seeds"]
    for metric in METRICS:
        header += [f"{metric}_mean", f"{metric}_std", f"{metric}_values"]
    writer.writerow(header)
    for method, per in result.stats.items():
        for col, stats in per.items():
            row: list[Any] = [method, col, stats[METRICS[0]].n]
            for metric in METRICS:
                s = stats[metric]
                row += [f"{s.mean:.6f}", f"{s.std:.6f}", ";".join(f"{v:.6f}" for v in s.values)]
            writer.writerow(row)
    return buffer.getvalue()


def plot(result: TableResult, path: Path) -> None:
    """One bar chart per column (methods as bars, std error bars); baseline mean dashed."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the table is written by scripts and servers
    import matplotlib.pyplot as plt

    cols, metric = result.config.columns(), METRICS[0]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.6), squeeze=False, sharey=True)
    for ax, col in zip(axes[0], cols):
        names = [m for m, per in result.stats.items() if col in per]
        means = [100 * result.stats[m][col][metric].mean for m in names]
        stds = [100 * result.stats[m][col][metric].std for m in names]
        colours = ["#9e9e9e" if m == REFERENCE else ("#d62728" if m in result.best[metric].get(col, []) else "#1f77b4")
                   for m in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=colours)
        if REFERENCE in names:
            ax.axhline(means[names.index(REFERENCE)], color="#616161", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(col)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test video top-1 (%)")
    fig.suptitle(f"{result.config.student}, {result.config.epochs} epochs, {len(result.config.seeds)} seed(s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_outputs(result: TableResult, out: Path) -> None:
    """table.md, table.csv, table.json and table.png, each atomically."""
    atomic_write_text(out / "table.md", markdown(result))
    atomic_write_text(out / "table.csv", csv_text(result))
    write_json(out / "table.json", result.to_dict())
    plot(result, out / "table.png")
