"""The ``vggsound`` format: ``youtube_id,start_seconds,label,split`` rows without header."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ccl_cache.manifest.parse import (
    READERS, _check_labels, _Context, _csv_rows, _file_missing, _Item, _Parsed, _parse_time, _read_lines, _record,
    _resolve,
)


def _vggsound_file(ctx: _Context, root: Path, name: str, split: str) -> tuple[str, list[str]]:
    """The first existing candidate (or the first candidate) and all candidates tried."""
    candidates = [_resolve(root, name), _resolve(root / split, name), _resolve(root / "videos", name)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate, candidates
    return candidates[0], candidates


def _vggsound_name(pattern: str, youtube_id: str, start: float, label: str, split: str) -> str:
    # Integral starts are formatted as ints so that "{start:06d}" works as in the released files.
    start_value: float | int = int(start) if float(start).is_integer() else start
    return pattern.format(youtube_id=youtube_id, start=start_value, label=label, split=split)


@READERS.register("vggsound")
def read_vggsound(
    ctx: _Context, pattern: str = "{youtube_id}_{start:06d}.mp4", clip_window: bool = False,
    window: float = 10.0, classes: Sequence[str] | None = None,
) -> _Parsed:
    """VGGSound ``youtube_id,start_seconds,label,split`` (no header); id ``f"{ytid}_{start:06d}"``.

    Files are the 10 s cuts, so ``start``/``end`` stay None unless ``clip_window`` is set (then
    the window ``[start_seconds, start_seconds + window]`` of an uncut video is used).
    """
    root = ctx.root or ctx.path.parent
    items: list[_Item] = []
    for number, row in _csv_rows(_read_lines(ctx.path, ctx.problems)):
        where = f"{ctx.path}:{number}"
        if number == 1 and len(row) > 1 and row[1].lower() in ("start_seconds", "start", "start_time"):
            continue  # a header line added by hand: tolerated
        if len(row) != 4:
            ctx.problems.bad(where, f"expected 4 fields youtube_id,start_seconds,label,split but found {len(row)}",
                             "quote labels that contain commas")
            continue
        youtube_id, start_text, label, split = row
        try:
            start = _parse_time(start_text, "start_seconds")
            if start is None:
                raise ValueError("start_seconds is empty")
            name = _vggsound_name(pattern, youtube_id, start, label, split)
        except (ValueError, KeyError, IndexError) as exc:
            ctx.problems.bad(where, f"cannot build the file name ({exc})",
                             "check start_seconds and the pattern option (fields: youtube_id, start, label, split)")
            continue
        path, tried = _vggsound_file(ctx, root, name, split)
        stem = f"{youtube_id}_{int(start):06d}" if start.is_integer() else f"{youtube_id}_{start}"
        window_fields = {"start": start, "end": start + window} if clip_window else {}
        rec = _record(ctx, where, id=stem, path=path, label=label, split=split, **window_fields)
        if rec is not None and not _file_missing(ctx, where, path, tried):
            items.append((where, rec))
    return _check_labels(items, classes, ctx.problems), classes
