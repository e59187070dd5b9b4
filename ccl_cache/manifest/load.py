"""Reading a listing: guess its format (:func:`detect_format`), check the reader's options, run the
reader and build the :class:`Manifest` (:func:`load_manifest`)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

from ccl_cache.errors import ConfigError, ManifestError
from ccl_cache.manifest.formats import READERS
from ccl_cache.manifest.parse import _Context, _csv_rows, _Item, _Parsed, _Problems, _read_lines
from ccl_cache.manifest.records import ClipRecord, Manifest


def detect_format(path: str | Path) -> str:
    """Guess the listing format of ``path`` (see the module docstring for the formats)."""
    path = Path(path)
    if path.is_dir():
        if (path / "classInd.txt").is_file():
            return "ucf101"
        listings = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".csv", ".json") and p.is_file())
        if listings:
            # A dataset folder with its own listing (ccl-cache synth writes manifest.csv): read as
            # class subfolders, it became one class named after its videos/ folder.
            raise ManifestError(f"{path} is a folder that holds a listing ({', '.join(listings)}); pass the "
                                f"listing itself (e.g. {path / listings[0]}), or --format folder to read "
                                "its subfolders as classes")
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "activitynet"
    if suffix == ".txt":
        return "ucf101"
    first = _first_csv_row(path)
    if {"id", "path", "label"} <= {cell.lower() for cell in first}:
        return "csv"
    if len(first) == 4 and _is_number(first[1]):
        return "vggsound"
    raise ManifestError(f"{path}: cannot tell the manifest format from its first row {first}; pass "
                        f"--format (format=; one of: {', '.join(READERS.names())}) or add a header line "
                        "id,path,label")


def _first_csv_row(path: Path) -> list[str]:
    problems = _Problems(skip_bad=True)  # detection only looks; reading reports bad bytes properly
    for _, row in _csv_rows(_read_lines(path, problems)):
        return row
    raise ManifestError(f"{path}: the manifest is empty; expected rows of clips")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _reader_options(name: str, reader: Callable[..., _Parsed], options: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(reader).parameters if p != "ctx"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for manifest format {name!r}; "
                          f"it accepts: {', '.join(accepted) or '(none)'}")


def _unique_ids(items: list[_Item], problems: _Problems) -> list[ClipRecord]:
    first: dict[str, str] = {}
    records: list[ClipRecord] = []
    for where, rec in items:
        if rec.id in first:
            problems.bad(where, f"duplicate id {rec.id!r} (first at {first[rec.id]})", "give every clip a unique id")
            continue
        first[rec.id] = where
        records.append(rec)
    return records


def load_manifest(
    path: str | Path, format: str = "auto", root: str | Path | None = None, skip_bad: bool = False,
    check_files: bool = True, **fmt_opts: Any,
) -> Manifest:
    """Read a clip listing into a :class:`Manifest`.

    ``format`` is ``"auto"`` (guessed by :func:`detect_format`) or a name in :data:`READERS`;
    ``root`` is where relative video paths start (each format documents its default);
    ``skip_bad`` leaves bad rows out (listed in ``Manifest.skipped``) instead of raising;
    ``check_files`` requires every video file to exist; ``fmt_opts`` are the reader's options
    (for example ``split_id=1, classes=[...]`` for UCF101 or ``pattern=...`` for VGGSound).
    Class ids are the index in the sorted class list: the given ``classes`` when the format takes
    them, else the labels found.
    """
    path = Path(os.path.abspath(path))
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found; check the path")
    name = detect_format(path) if format == "auto" else format
    reader = READERS.get(name)
    _reader_options(name, reader, fmt_opts)
    problems = _Problems(skip_bad)
    ctx = _Context(path, Path(os.path.abspath(root)) if root is not None else None, check_files, problems)
    items, classes = reader(ctx, **fmt_opts)
    records = _unique_ids(items, problems)
    if not records:
        left = f" ({len(problems.items)} row(s) skipped as bad: first {problems.items[0]})" if problems.items else ""
        raise ManifestError(f"{path}: no clips in the manifest{left}; check the file, the format and root")
    return Manifest.from_records(records, classes, problems.items)
