"""`ccl-cache info STORE`: clips, teachers, coverage, health and provenance of a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ccl_cache.store import open_store, summarize, verify_store
from ccl_cache.store.health import failure_list
from ccl_cache.store.space import human_bytes
from ccl_cache_cli.common import console, echo_json
from ccl_cache_cli.verify import show_report

_CLASS_ROWS = 20  # beyond this many classes the table shows the most and least frequent


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _show_header(s: dict[str, Any]) -> None:
    prov = s["provenance"]
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
    checksums = f"checksums {s['checksums']}" if s["checksums"] else "[yellow]no checksums[/]"
    console.print(f"[bold]{s['path']}[/] ({s['backend']}, schema v{prov.get('schema_version')}, "
                  f"{human_bytes(s['size_bytes'])}, chunks of {s['chunk_rows']} rows, compression {s['compression']}, "
                  f"{checksums})")
    sha = str(prov.get("manifest_sha256"))[:16]
    console.print(f"created {prov.get('created')} · manifest sha256 {sha}… · {versions}")
    for lease in s["leases"]:
        state = "[green]live" if lease["alive"] else "[yellow]stale"
        console.print(f"writer lease ({state}[/]): pid {lease['pid']} on {lease['host']} since {lease['time']}"
                      f" shard {lease['shard'] or 'all'}: {lease['command']}")


def _show_clips(clips: dict[str, Any]) -> None:
    table = Table(title=f"{clips['n']} clips, {clips['classes']} classes")
    table.add_column("split")
    table.add_column("clips", justify="right")
    for split, count in clips["by_split"].items():
        table.add_row(split, str(count))
    table.add_row("probed", str(clips["probed"]))
    table.add_row("no audio", str(clips["no_audio"]))
    console.print(table)
    by_class = sorted(clips["by_class"].items(), key=lambda kv: -kv[1])
    shown = by_class if len(by_class) <= _CLASS_ROWS else by_class[:_CLASS_ROWS // 2] + by_class[-_CLASS_ROWS // 2:]
    table = Table(title="clips per class" + (" (most and least frequent)" if shown is not by_class else ""))
    table.add_column("class")
    table.add_column("clips", justify="right")
    for name, count in shown:
        table.add_row(name, str(count))
    console.print(table)


def _show_teachers(teachers: dict[str, Any], n: int) -> None:
    if not teachers:
        console.print("[yellow]no teachers yet: run `ccl-cache extract`")
        return
    # Two narrow tables rather than one wide one: they stay readable in an 80-column terminal.
    coverage = Table(title="teachers: coverage")
    health = Table(title="teachers: health")
    for table, cols in ((coverage, ("dim", "frames", "dtype", "done", "present", "masked", "failed")),
                        (health, ("NaN/inf", "duplicates", "norm mean±std", "norm min..max"))):
        table.add_column("teacher", no_wrap=True)
        for col in cols:
            table.add_column(col, justify="right")
    bad = lambda v: f"[red]{v}" if v else "0"  # noqa: E731  (highlight problems only)
    for key, t in teachers.items():
        done = f"{t['done']}/{n}" + ("" if t["done"] == n else f" ({100 * t['done'] / n:.0f}%)")
        coverage.add_row(key, str(t["dim"]), str(t["frames"] or "-"), t["dtype"], done, str(t["present"]),
                         str(t["masked"]), bad(t["failed"]))
        norm = t["norm"]
        health.add_row(key, bad(t["nonfinite_rows"]), bad(t["duplicate_rows"]),
                       f"{_num(norm['mean'])}±{_num(norm['std'])}", f"{_num(norm['min'])}..{_num(norm['max'])}")
    console.print(coverage)
    console.print(health)
    for key, t in teachers.items():
        out = t["norm_outliers"]
        if out["count"]:
            names = ", ".join(f"{o['id']} ({o['norm']:.3g})" for o in out["first"])
            console.print(f"[yellow]{key}: {out['count']} clip(s) with an embedding norm far from the others' "
                          f"(median {out['median']:.3g})[/]: {names}", highlight=False)


def _show_failures(failures: dict[str, Any]) -> None:
    if not failures["total"]:
        console.print("[green]no failures recorded")
        return
    table = Table(title=f"{failures['total']} failures")
    table.add_column("reason")
    table.add_column("clips", justify="right")
    for reason, count in failures["by_reason"].items():
        table.add_row(reason, str(count))
    console.print(table)
    console.print("by stage: " + ", ".join(f"{stage} {count}" for stage, count in failures["by_stage"].items()),
                  highlight=False)
    partial = {k: v for k, v in failures["partial_by_coverage"].items() if v}
    if partial:
        console.print("failed partial clips by decoded coverage: "
                      + ", ".join(f"{k}: {v}" for k, v in partial.items()))
    shown = failures["first"]
    _failure_table(shown, f"the first {len(shown)} failed clips (`--failures` lists all {failures['total']})"
                   if len(shown) < failures["total"] else "failed clips")


def _failure_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for name in ("id", "path", "stage", "reason", "message"):
        table.add_column(name, overflow="fold")
    for f in rows:
        table.add_row(f["id"], f["path"], f["stage"], f["reason"], f["message"].splitlines()[0][:300])
    console.print(table)


def _show_coverage(coverage: dict[str, Any], audio: dict[str, Any], errors: dict[str, int]) -> None:
    """Partially decodable clips (truncated files) measured by extraction, failed or accepted; clips
    whose audio covers only part of their window (zero-padded); clips embedded despite decoder errors."""
    for summary, what, accepted in ((coverage, "clips decode only partly", "embedded from their decodable part"),
                                    (audio, "clips have audio for only part of their window",
                                     "embedded zero-padded")):
        if summary["partial"]:
            bins = ", ".join(f"{k}: {v}" for k, v in summary["partial_by_coverage"].items() if v)
            console.print(f"[yellow]{summary['partial']} of {summary['measured']} {what}[/] "
                          f"({summary['partial_accepted']} {accepted}); by coverage: {bins}")
    if errors["clips"]:
        console.print(f"[yellow]{errors['clips']} clips decoded with decoder errors[/] ({errors['errors']} "
                      "packets rejected; `ccl-cache extract --strict --overwrite` fails such clips instead)")


def _show_rest(s: dict[str, Any]) -> None:
    for run, info in s["students"].items():
        method = info["attrs"].get("method", "?")
        created = info["attrs"].get("created")
        console.print(f"student [bold]{run}[/]: dim {info['dim']}, method {method}, created {created}")
    for path, info in s["arrays"].items():
        console.print(f"array {path}: shape {tuple(info['shape'])} {info['dtype']}")


@click.command("info")
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--failures", "list_failures", is_flag=True,
              help="List every failed clip (id, path, stage, reason, message); with --json, key \"failed_clips\".")
@click.option("--verify", "check", is_flag=True,
              help="Also read every chunk as `ccl-cache verify` does (key \"verify\" in --json); exit status 1 "
                   "when damage is found.")
@click.pass_context
def info(ctx: click.Context, store: Path, as_json: bool, list_failures: bool, check: bool) -> None:
    """Summarise STORE: clips per split/class, teachers (coverage, health), failures, provenance."""
    report = verify_store(store) if check else None
    if report is not None and not report.ok:
        summary: dict[str, Any] = {"path": str(store)}  # a damaged store is not summarised: the report says why
    else:
        with open_store(store, mode="r") as opened:
            summary = summarize(opened)
            if list_failures:
                summary["failed_clips"] = failure_list(opened)
    if report is not None:
        summary["verify"] = report.to_dict()
    if as_json:
        echo_json(summary)
    elif report is None or report.ok:
        _show_all(summary)
        if list_failures:
            _failure_table(summary["failed_clips"], f"{len(summary['failed_clips'])} failed clips")
    if report is not None and not as_json:
        show_report(report)
    ctx.exit(0 if report is None or report.ok else 1)


def _show_all(summary: dict[str, Any]) -> None:
    _show_header(summary)
    _show_clips(summary["clips"])
    _show_teachers(summary["teachers"], summary["n"])
    _show_failures(summary["failures"])
    _show_coverage(summary["coverage"], summary["audio_coverage"], summary["decode_errors"])
    _show_rest(summary)
