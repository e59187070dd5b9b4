"""`ccl-cache benchmark table`: parse options, call ccl_cache.experiments.table.run_table, show the table."""

from __future__ import annotations

from typing import Any, Mapping

import click
from rich.table import Table

from ccl_cache.data import DEFAULT_WORKERS
from ccl_cache.experiments.table import (
    COLUMNS, METRICS, TableConfig, TableResult, cell_texts, parse_grouped_loss_options, parse_seeds,
    parse_train_options, run_table,
)
from ccl_cache.train import AMP_MODES, OPTIMIZERS, SCHEDULES, SOURCES, TrainConfig
from ccl_cache_cli.common import config_fields, config_option, console, echo_json

_COLUMN_HELP = ", ".join(f"{code} = {' + '.join(mods)}" for code, mods in COLUMNS.items())


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _columns(value: str) -> tuple[str, ...]:
    return _split(value.upper())


def _methods(value: str) -> tuple[str, ...]:
    return _split(value.lower())  # registry names are lower case; `CCL` means `ccl`


@click.command("table")
@click.argument("store", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder of the grid: one run directory per cell, plus table.md/.csv/.json/.png.")
@config_option(TableConfig, "methods", parse=_methods, show_default=True,
               help="Comma-separated loss names, or 'all'; the baseline is always the reference row.")
@config_option(TableConfig, "modalities", parse=_columns, show_default=True,
               help=f"Columns: the teachers each method distils from ({_COLUMN_HELP}).")
@config_option(TableConfig, "seeds", parse=parse_seeds, show_default=True,
               help="A count (3 = seeds 1,2,3) or a list (1,5,9).")
@config_option(TableConfig, "epochs", type=click.IntRange(min=1), show_default=True)
@config_option(TableConfig, "student", show_default=True, help="Student network (same for every cell).")
@config_option(TableConfig, "teachers", parse=_split, show_default=True,
               help="The store's teachers: modalities or keys like audio/cnn14 (each column uses its own).")
# Training options shared by every cell, passed on only when given (the trainer's defaults otherwise).
@config_option(TrainConfig, "batch_size", given_only=True, type=click.IntRange(min=2),
               help="Clips per step [trainer default {default}].")
@config_option(TrainConfig, "lr", given_only=True, type=click.FloatRange(min=0, min_open=True),
               help="Learning rate [{default}].")
@config_option(TrainConfig, "frames", given_only=True, type=click.IntRange(min=1), help="Frames per clip [{default}].")
@config_option(TrainConfig, "stride", given_only=True, type=click.IntRange(min=1), help="Frame stride [{default}].")
@config_option(TrainConfig, "size", given_only=True, type=click.IntRange(min=8), help="Crop side in pixels [{default}].")
@config_option(TrainConfig, "workers", given_only=True, type=click.IntRange(min=0),
               help=f"Data loader processes [{DEFAULT_WORKERS}, at most one per CPU core].")
@config_option(TrainConfig, "device", given_only=True, help="auto, cpu, cuda or cuda:N [{default}].")
@config_option(TrainConfig, "amp", given_only=True, type=click.Choice(AMP_MODES), help="Mixed precision [{default}].")
@config_option(TrainConfig, "source", given_only=True, type=click.Choice(SOURCES),
               help="Frames from the store's frame cache or the media files [{default}].")
@config_option(TrainConfig, "val_fraction", given_only=True, type=click.FloatRange(0, 1, max_open=True),
               help="Share of train carved out for validation when the store has no val split [{default}].")
@config_option(TrainConfig, "test_max_windows", given_only=True, type=click.IntRange(min=1),
               help="Cap on test windows per video [all non-overlapping windows].")
@config_option(TrainConfig, "schedule", given_only=True, type=click.Choice(SCHEDULES),
               help="Student learning-rate schedule [{default}].")
@config_option(TrainConfig, "optimizer", given_only=True, type=click.Choice(OPTIMIZERS), help="Optimiser [{default}].")
@click.option("--train-opt", "train_opts", multiple=True, metavar="KEY=VALUE",
              help="Any other training option shared by every cell, e.g. grad_clip=1.0 (repeatable).")
@click.option("--loss-opt", "loss_opts", multiple=True, metavar="METHOD.KEY=VALUE",
              help="A method's option, e.g. ccl.tau_audio=0.3 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress lines and no table on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the table (table.json's content) to stdout.")
def table(store: str, out: str, train_opts: tuple[str, ...], loss_opts: tuple[str, ...], quiet: bool, as_json: bool,
          **options: Any) -> None:
    """Train every method × teacher column × seed on STORE and write Table 1 (Chen et al., CVPR 2021).

    Each cell is a run in OUT/<method>-<A|I|AI>-seed<k>/ (OUT/baseline-seed<k>/ for the baseline,
    which uses no teacher); rerunning the same command skips finished cells and resumes an
    interrupted one. Test video top-1 and clip top-1 are reported as
    mean ± std over seeds in OUT/table.md, table.csv, table.json and table.png.
    """
    train_options = {**parse_train_options(train_opts), **config_fields(options, TrainConfig)}
    fields = config_fields(options, TableConfig)
    config = TableConfig(store=store, out=out, loss_options=parse_grouped_loss_options(loss_opts),
                         train_options=train_options, **fields)
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
