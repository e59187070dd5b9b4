"""`ccl-cache benchmark table`: parse options, call ccl_cache.experiments.table.run_table, show the table."""

from __future__ import annotations

from typing import Any, Mapping

import click
from rich.table import Table

from ccl_cache.experiments.table import (
    COLUMNS, METRICS, TableConfig, TableResult, cell_texts, parse_grouped_loss_options, parse_seeds,
    parse_train_options, run_table,
)
from ccl_cache_cli.common import console, echo_json

_DEFAULT = TableConfig(store="")
# CLI option -> TrainConfig field, passed only when given (the trainer's defaults otherwise).
_TRAIN_FLAGS = ("batch_size", "lr", "frames", "stride", "size", "workers", "device", "amp", "source",
                "val_fraction", "test_max_windows", "schedule", "optimizer")


_COLUMN_HELP = ", ".join(f"{code} = {' + '.join(mods)}" for code, mods in COLUMNS.items())


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("table")
@click.argument("store", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder of the grid: one run directory per cell, plus table.md/.csv/.json/.png.")
@click.option("--methods", default="all", show_default=True,
              help="Comma-separated loss names, or 'all'; the baseline is always the reference row.")
@click.option("--modalities", default="A,I,AI", show_default=True,
              help=f"Columns: the teachers each method distils from ({_COLUMN_HELP}).")
@click.option("--seeds", default="3", show_default=True, help="A count (3 = seeds 1,2,3) or a list (1,5,9).")
@click.option("--epochs", type=click.IntRange(min=1), default=_DEFAULT.epochs, show_default=True)
@click.option("--student", default=_DEFAULT.student, show_default=True, help="Student network (same for every cell).")
@click.option("--teachers", default="audio,image", show_default=True,
              help="The store's teachers: modalities or keys like audio/cnn14 (each column uses its own).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Clips per step [trainer default 16].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate [1e-3].")
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Frames per clip [16].")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Frame stride [1].")
@click.option("--size", type=click.IntRange(min=8), default=None, help="Crop side in pixels [112].")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Data loader processes [4, at most one per CPU core].")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [auto].")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=None, help="Mixed precision [auto].")
@click.option("--source", type=click.Choice(["auto", "cache", "file"]), default=None,
              help="Frames from the store's frame cache or the media files [auto].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of train carved out for validation when the store has no val split [0.1].")
@click.option("--test-max-windows", type=click.IntRange(min=1), default=None,
              help="Cap on test windows per video [all non-overlapping windows].")
@click.option("--schedule", type=click.Choice(["multistep", "cosine", "constant"]), default=None,
              help="Student learning-rate schedule [multistep].")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None, help="Optimiser [sgd].")
@click.option("--train-opt", "train_opts", multiple=True, metavar="KEY=VALUE",
              help="Any other training option shared by every cell, e.g. grad_clip=1.0 (repeatable).")
@click.option("--loss-opt", "loss_opts", multiple=True, metavar="METHOD.KEY=VALUE",
              help="A method's option, e.g. ccl.tau_audio=0.3 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress lines and no table on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the table (table.json's content) to stdout.")
def table(store: str, out: str, methods: str, modalities: str, seeds: str, epochs: int, student: str,
          teachers: str, train_opts: tuple[str, ...], loss_opts: tuple[str, ...], quiet: bool, as_json: bool,
          **flags: Any) -> None:
    """Train every method × teacher column × seed on STORE and write Table 1 (Chen et al., CVPR 2021).

    Each cell is a run in OUT/<method>-<A|I|AI>-seed<k>/ (OUT/baseline-seed<k>/ for the baseline,
    which uses no teacher); rerunning the same command skips finished cells and resumes an
    interrupted one. Test video top-1 and clip top-1 are reported as
    mean ± std over seeds in OUT/table.md, table.csv, table.json and table.png.
    """
    train_options = parse_train_options(train_opts)
    train_options.update({k: v for k, v in flags.items() if k in _TRAIN_FLAGS and v is not None})
    config = TableConfig(
        store=store, out=out, methods=_split(methods), modalities=_split(modalities.upper()),
        seeds=parse_seeds(seeds), epochs=epochs, student=student, teachers=_split(teachers),
        loss_options=parse_grouped_loss_options(loss_opts), train_options=train_options,
    )
    result = run_table(config, progress=None if quiet else _progress)
    if as_json:
        echo_json(result.to_dict())
    if not quiet:
        console.print(summary_table(result))
        console.print(f"written: {', '.join(result.outputs.values())}", highlight=False)


def _progress(event: str, data: Mapping[str, Any]) -> None:
    """Plain lines on stderr: one per cell, one per epoch (a grid runs for hours, unattended)."""
    if event == "plan":
        console.print(f"table: {len(data['cells'])} cells, {data['done']} already finished, {data['todo']} to run "
                      f"in {data['out']}", highlight=False)
    elif event == "cell":
        console.print(f"[bold]{data['cell']}[/]: {data['status']} ({data['run_dir']})", highlight=False)
    elif event == "train" and data["event"] == "epoch":
        info = data["data"]
        val = info.get("val") or {}
        text = f" val clip top-1 {100 * val['clip_top1']:.1f}%" if "clip_top1" in val else ""
        console.print(f"  {data['cell']} epoch {info['epoch'] + 1}/{info['epochs']}{text}", highlight=False)
    elif event == "cell_done":
        test = data["test"]
        console.print(f"  {data['cell']} test video top-1 {100 * test['video_top1']:.1f}%, clip top-1 "
                      f"{100 * test['clip_top1']:.1f}% ({data['time_s']:.0f} s)", highlight=False)


def summary_table(result: TableResult) -> Table:
    """The table as rich shows it: mean ± std video top-1 (%), best per column in bold."""
    metric = METRICS[0]
    cols = result.config.columns()
    shown = Table(title=f"test video top-1 (%), mean ± std over {len(result.config.seeds)} seed(s)")
    shown.add_column("method", style="bold")
    for col in cols:
        shown.add_column(col, justify="right")
    for method, cells in cell_texts(result, metric, bold=lambda text: f"[bold green]{text}[/]", missing="-").items():
        shown.add_row(method, *cells)
    return shown
