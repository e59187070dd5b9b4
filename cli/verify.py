"""`ccl-cache verify STORE`: read every chunk of a store and name each damaged array, rows and file."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ccl_cache.store import VerifyReport, repair_store, verify_store
from ccl_cache_cli.common import console, echo_json


def show_report(report: VerifyReport) -> None:
    """The report on stderr: damage table, fixes, arrays without checksums."""
    checksums = report.checksums or "[yellow]no checksums[/] (written before checksums existed: flipped bits go unnoticed)"
    console.print(f"[bold]{report.store}[/] ({report.backend}): {report.arrays} arrays, {report.chunks} chunks read; "
                  f"checksums: {checksums}", highlight=False)
    for d in report.repaired:
        console.print(f"[green]reset[/] {d.array} rows {d.rows[0]}:{d.rows[1]} ({d.kind}): not done any more; rerun "
                      "the same `ccl-cache extract` command to recompute them", highlight=False)
    if report.ok:
        console.print("[green]no damage found" if not report.repaired else "[green]no damage left")
        return
    table = Table(title=f"{len(report.damage)} damaged chunks or nodes")
    for column in ("array", "rows", "damage", "file", "detail"):
        table.add_column(column, overflow="fold")
    for d in report.damage:
        rows = f"{d.rows[0]}:{d.rows[1]}" if d.rows else "-"
        table.add_row(d.array or "(store root)", rows, d.kind, d.file, d.detail)
    console.print(table)
    for fix in report.fixes():
        console.print(f"fix: {fix}", highlight=False, soft_wrap=True)


@click.command("verify")
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.option("--repair", is_flag=True,
              help="Mark the rows of damaged teacher and ledger chunks not done (their chunks read as fill), so "
                   "that rerunning the same `ccl-cache extract` command recomputes them. Other damage is listed "
                   "with its fix. Takes the store's writer lease.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.pass_context
def verify(ctx: click.Context, store: Path, repair: bool, as_json: bool) -> None:
    """Read every chunk of every array of STORE and name each damaged one: checksum mismatches,
    cut or undecodable chunks, chunks missing under rows marked done, unreadable metadata.

    Exit status: 0 no damage (left, with --repair), 1 damage found, 2 the store cannot be
    checked (not a store, locked by a writer).
    """
    report = repair_store(store) if repair else verify_store(store)
    if as_json:
        echo_json(report.to_dict())
    else:
        show_report(report)
    ctx.exit(0 if report.ok else 1)
