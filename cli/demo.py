"""`ccl-cache demo [--out DIR] [--quick]`: the whole pipeline on a small synthetic dataset."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from ccl_cache.experiments.demo import DemoConfig, DemoResult, run_demo
from ccl_cache_cli.common import config_fields, config_option, console, echo_json


def show(result: DemoResult) -> None:
    table = Table(title="baseline vs CCL (test queries → train gallery, %)")
    for col in ("source", "video top-1", "R@1", "R@5", "R@10", "mAP"):
        table.add_column(col, justify="left" if col == "source" else "right")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for row in result.rows:
        table.add_row(row["source"], pct(row["video_top1"]), pct(row["recall@1"]), pct(row["recall@5"]),
                      pct(row["recall@10"]), pct(row["mAP"]))
    console.print(table)
    console.print(f"total {sum(result.seconds.values()):.0f} s; outputs:")
    for name, path in result.outputs.items():
        console.print(f"  {name}: {path}")


@click.command()
@config_option(DemoConfig, "out", show_default=True, type=click.Path(file_okay=False),
               help="Directory for every output (dataset, store, runs, index, reports).")
@click.option("--quick", is_flag=True, help="The smallest setting: fewer classes, clips and epochs (a smoke test, not a comparison).")
@config_option(DemoConfig, "device", show_default=True, help="cpu, cuda or auto.")
@config_option(DemoConfig, "seed", type=int, show_default=True, help="Seed of the dataset and the runs.")
@config_option(DemoConfig, "overwrite", is_flag=True, help="Replace an earlier demo in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def demo(quick: bool, as_json: bool, **options: Any) -> None:
    """synth → teach → extract → distill (baseline, CCL) → index → benchmark → retrieve, printing
    video top-1 and Recall@1/5/10 per run (and per teacher) and where the outputs are."""
    fields = config_fields(options, DemoConfig)
    config = DemoConfig.quick(**fields) if quick else DemoConfig(**fields)

    def progress(stage: str, message: str) -> None:
        console.print(f"[bold]{stage}[/]: {message}")

    result = run_demo(config, progress)
    if as_json:
        echo_json(result.as_dict())
    else:
        show(result)
