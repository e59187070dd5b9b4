"""`ccl-cache probe FILE...`: what the decoder sees in media files, one table per file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ccl_cache import media
from ccl_cache.errors import MediaError
from ccl_cache.fileio import to_plain
from ccl_cache_cli.common import console, echo_json


def probe_one(path: Path, coverage: bool) -> dict[str, Any]:
    """One file as a JSON-ready dict: ``ok`` plus the probe fields, or ``reason`` and ``error``."""
    try:
        info = media.probe(path)
        cov = media.measure_coverage(path) if coverage else None
    except MediaError as exc:
        return {"path": str(path), "ok": False, "reason": exc.reason, "error": str(exc)}
    return {"path": info.path, "ok": True, **to_plain(info), "has_video": info.has_video,
            "has_audio": info.has_audio, "coverage": cov}


def _size(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _table(row: dict[str, Any]) -> Table:
    # Paths and messages are escaped: a file named "clip [1].mp4" is not rich markup.
    table = Table(title=escape(row["path"]), title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    if not row["ok"]:
        table.add_row("[red]error", f"[red]{escape(row['reason'])}[/]: {escape(row['error'])}")
        return table
    table.add_row("format", row["format"])
    table.add_row("duration", f"{row['duration']:.3f} s")
    table.add_row("start", f"{row['start_time']:.3f} s")
    table.add_row("size", _size(row["size_bytes"]))
    video = row["video"]
    if video is None:
        table.add_row("video", "[yellow]none")
    else:
        frames = "?" if video["frames"] is None else str(video["frames"])
        table.add_row("video", f"#{video['index']} {video['codec']} {video['width']}x"
                               f"{video['height']} {video['fps']:.3f} fps, rotation "
                               f"{video['rotation']}, {video['pix_fmt']}, {frames} frames, "
                               f"start {video['start_time']:.3f} s, {video['duration']:.3f} s")
    for audio in row["audio"]:
        table.add_row("audio", f"#{audio['index']} {audio['codec']} {audio['sample_rate']} Hz, "
                               f"{audio['channels']} ch, start {audio['start_time']:.3f} s, "
                               f"{audio['duration']:.3f} s")
    if not row["audio"]:
        table.add_row("audio", "[yellow]none")
    if row["coverage"] is not None:
        style = "green" if row["coverage"] >= 0.99 else "red"
        table.add_row("coverage", f"[{style}]{100 * row['coverage']:.1f}%[/] of the duration "
                                  "has data")
    return table


@click.command("probe")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (one dict per file) on stdout.")
@click.option("--coverage", is_flag=True,
              help="Also scan the packets: the fraction of the duration that has data "
                   "(below 100% for truncated files).")
def probe(files: tuple[Path, ...], as_json: bool, coverage: bool) -> None:
    """Show what the decoder sees in FILES: container, duration, start, video and audio streams.

    Files that cannot be read are shown with the reason (not-found, empty, unreadable,
    unsupported, decode, ...). Exit status: 0 when every file was probed, 1 when any failed.
    """
    rows = [probe_one(path, coverage) for path in files]
    if as_json:
        echo_json(rows)
    else:
        for row in rows:
            console.print(_table(row))
    failed = sum(not row["ok"] for row in rows)
    if failed:
        if not as_json:
            console.print(f"[red]{failed} of {len(rows)} file(s) failed")
        # SystemExit, not ctx.exit(1): the console script runs click with standalone_mode=False,
        # where ctx.exit's code is returned to the caller instead of becoming the exit status.
        raise SystemExit(1)
