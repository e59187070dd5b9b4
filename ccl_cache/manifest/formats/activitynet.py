"""The ``activitynet`` format: the official ``activity_net.v1-3`` JSON, one record per annotated
segment."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ccl_cache.errors import ManifestError
from ccl_cache.manifest.parse import (
    READERS, _check_labels, _Context, _file_missing, _Item, _Parsed, _read_lines, _record, _resolve,
)
from ccl_cache.manifest.splits import SPLIT_ALIASES


def _load_json(ctx: _Context) -> Any:
    text = "".join(_read_lines(ctx.path, ctx.problems, strict=True))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{ctx.path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); "
                            "fix the file or download it again") from None


def _activitynet_file(root: Path, vid: str, split: str, pattern: str,
                      extensions: Sequence[str]) -> tuple[str, list[str]]:
    tried = [
        _resolve(folder, pattern.format(id=vid, ext=ext))
        for folder in (root, root / split, root / "videos") for ext in extensions
    ]
    for candidate in tried:
        if os.path.isfile(candidate):
            return candidate, tried
    return tried[0], tried


def _activitynet_segment(ctx: _Context, where: str, ann: Any) -> tuple[float, float, str] | None:
    try:
        seg, label = ann["segment"], ann["label"]
        if not isinstance(seg, list) or len(seg) != 2 or not isinstance(label, str) or not label:
            raise ValueError("segment must be [start, end] and label a non-empty string")
        start, end = float(seg[0]), float(seg[1])
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise ValueError(f"segment {seg} must satisfy 0 <= start < end")
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        ctx.problems.bad(where, f"malformed annotation ({exc})",
                         'expected {"segment": [start, end], "label": "..."}')
        return None
    return start, end, label


def _activitynet_video(ctx: _Context, vid: str, entry: Any, root: Path, pattern: str,
                       extensions: Sequence[str]) -> list[_Item] | None:
    """Items of one video; None when it has no labels (unlabelled testing video)."""
    where = f"{ctx.path}: database[{vid!r}]"
    subset = entry.get("subset") if isinstance(entry, dict) else None
    if subset not in ("training", "validation", "testing"):
        ctx.problems.bad(where, f"subset {subset!r} is not training/validation/testing", "fix the entry")
        return []
    annotations = entry.get("annotations") or []
    if not annotations:
        return None
    split = SPLIT_ALIASES[subset]
    path, tried = _activitynet_file(root, vid, split, pattern, extensions)
    if _file_missing(ctx, where, path, tried):
        return []
    items: list[_Item] = []
    for k, ann in enumerate(annotations):
        segment = _activitynet_segment(ctx, f"{where}.annotations[{k}]", ann)
        if segment is not None:
            rec = _record(ctx, f"{where}.annotations[{k}]", id=f"{vid}_{k}", path=path, label=segment[2],
                          split=split, start=segment[0], end=segment[1])
            if rec is not None:
                items.append((f"{where}.annotations[{k}]", rec))
    return items


@READERS.register("activitynet")
def read_activitynet(
    ctx: _Context, pattern: str = "v_{id}{ext}", extensions: Sequence[str] = (".mp4", ".mkv", ".webm"),
    classes: Sequence[str] | None = None,
) -> _Parsed:
    """ActivityNet v1.3 JSON: one record per annotated segment (id ``f"{vid}_{k}"``).

    Files ``pattern.format(id=vid, ext=ext)`` are looked for in ``root`` (default: the JSON's
    folder), ``root/<split>/`` and ``root/videos/``. Videos without annotations (the testing
    subset) are left out with one note in ``skipped``.
    """
    data = _load_json(ctx)
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise ManifestError(f'{ctx.path}: expected a JSON object with a "database" object of videos '
                            "(the activity_net.v1-3 layout)")
    root = ctx.root or ctx.path.parent
    items: list[_Item] = []
    unlabelled = 0
    for vid, entry in data["database"].items():
        video_items = _activitynet_video(ctx, str(vid), entry, root, pattern, extensions)
        if video_items is None:
            unlabelled += 1
        else:
            items += video_items
    if unlabelled:
        ctx.problems.note(f"{ctx.path}: database", f"{unlabelled} video(s) without annotations "
                          "(the unlabelled testing subset) left out")
    return _check_labels(items, classes, ctx.problems), classes
