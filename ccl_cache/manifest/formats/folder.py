"""The ``folder`` format: ``root/<class>/<file>`` or ``root/<split>/<class>/<file>``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ccl_cache.errors import ManifestError
from ccl_cache.manifest.parse import READERS, _check_labels, _Context, _Item, _Parsed, _record
from ccl_cache.manifest.splits import SPLIT_ALIASES

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv",
)
"""File endings the ``folder`` reader treats as videos (compared case-insensitively)."""


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_video(path: Path, extensions: Sequence[str]) -> bool:
    return path.suffix.lower() in extensions and not path.name.startswith(".")


def _folder_class(ctx: _Context, root: Path, class_dir: Path, split: str,
                  extensions: Sequence[str]) -> list[_Item]:
    items: list[_Item] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # sorted: stable order
        for name in sorted(filenames):
            file = Path(dirpath) / name
            if _is_video(file, extensions):
                rel = file.relative_to(root).with_suffix("").as_posix()
                rec = _record(ctx, str(file), id=rel, path=str(file), label=class_dir.name, split=split)
                if rec is not None:
                    items.append((str(file), rec))
    return items


def _stray_videos(ctx: _Context, folder: Path, extensions: Sequence[str], expected: str) -> None:
    for file in sorted(folder.iterdir()):
        if file.is_file() and _is_video(file, extensions):
            ctx.problems.bad(str(file), "video file outside a class folder", f"move it into {expected}")


@READERS.register("folder")
def read_folder(
    ctx: _Context, extensions: Sequence[str] = VIDEO_EXTENSIONS, classes: Sequence[str] | None = None,
) -> _Parsed:
    """``root/<class>/<file>`` or ``root/<split>/<class>/<file>`` (ids: relative path, no suffix).

    The split layout is used when every top folder is a split name. Class folders count as
    classes even when empty, so label ids agree across splits.
    """
    root = Path(os.path.abspath(ctx.root or ctx.path))
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder; the folder format expects root/<class>/<video files>")
    extensions = tuple(e.lower() for e in extensions)
    top = _subdirs(root)
    _stray_videos(ctx, root, extensions, "root/<class>/")
    split_layout = bool(top) and all(d.name.lower() in SPLIT_ALIASES for d in top)
    groups = [(SPLIT_ALIASES[d.name.lower()], d) for d in top] if split_layout else [("train", root)]
    items: list[_Item] = []
    names: set[str] = set()
    for split, folder in groups:
        if split_layout:
            _stray_videos(ctx, folder, extensions, f"{folder}/<class>/")
        for class_dir in _subdirs(folder):
            names.add(class_dir.name)
            items += _folder_class(ctx, root, class_dir, split, extensions)
    items = _check_labels(items, classes, ctx.problems)
    return items, (classes if classes is not None else sorted(names))
