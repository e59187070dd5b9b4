"""Reader plumbing shared by every listing format: the :data:`READERS` registry, the context a
reader receives, bad-row reporting (raise, or collect with ``skip_bad``), UTF-8 line reading, CSV
rows, paths, times, labels and file checks."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ccl_cache.errors import ManifestError
from ccl_cache.manifest.records import ClipRecord
from ccl_cache.registry import Registry

_SKIP_HINT = "(or, in Python, load_manifest(..., skip_bad=True) leaves such rows out)"


@dataclass
class _Problems:
    """Raises on the first bad row, or collects ``(where, reason)`` when ``skip_bad`` is set."""

    skip_bad: bool
    items: list[tuple[str, str]] = field(default_factory=list)

    def bad(self, where: str, reason: str, fix: str) -> None:
        if not self.skip_bad:
            raise ManifestError(f"{where}: {reason}; {fix} {_SKIP_HINT}")
        self.items.append((where, reason))

    def note(self, where: str, reason: str) -> None:
        """Something left out on purpose (not an error), e.g. unlabelled test videos."""
        self.items.append((where, reason))


@dataclass(frozen=True)
class _Context:
    """What every reader receives besides its own options."""

    path: Path
    root: Path | None
    check_files: bool
    problems: _Problems


_Item = tuple[str, ClipRecord]  # (where it came from, the record)
_Parsed = tuple[list[_Item], Sequence[str] | None]  # items, declared class list (or None)

READERS: Registry[Callable[..., _Parsed]] = Registry("manifest format")
"""Manifest readers by format name: ``reader(ctx, **options) -> (items, classes)``."""


def _read_lines(path: Path, problems: _Problems, strict: bool = False) -> list[str]:
    """The file's lines (with their endings), decoded as UTF-8 line by line.

    A line that is not UTF-8 is reported with its line number and the file byte offset; when it
    is skipped it becomes an empty line so later line numbers stay true. ``strict`` raises
    regardless of ``skip_bad`` (formats such as JSON cannot lose a line).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror}); check the path and permissions") from None
    bom = b"\xef\xbb\xbf"  # Excel writes one; it is not part of the first column name
    offset = len(bom) if data.startswith(bom) else 0
    lines: list[str] = []
    for number, raw in enumerate(data[offset:].splitlines(keepends=True), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            where = f"{path}:{number}"
            reason = f"byte offset {offset + exc.start} is not valid UTF-8 ({exc.reason})"
            fix = "re-save the file as UTF-8 (for example `iconv -f latin1 -t utf-8 in > out`)"
            if strict:
                raise ManifestError(f"{where}: {reason}; {fix}") from None
            problems.bad(where, reason, fix)
            lines.append("\n")
        offset += len(raw)
    return lines


def _csv_rows(lines: list[str], delimiter: str = ",") -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank CSV row; the number is the row's first line."""
    reader = csv.reader(lines, delimiter=delimiter, skipinitialspace=True)
    start = 1
    for row in reader:
        if any(cell.strip() for cell in row):
            yield start, [cell.strip() for cell in row]
        start = reader.line_num + 1


def _resolve(root: Path, path: str) -> str:
    """Absolute, normalised path string; relative paths are taken from ``root``."""
    return os.path.normpath(os.path.join(root, path))


def _parse_time(text: str, name: str) -> float | None:
    """A non-negative finite number of seconds, or None for an empty field."""
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} {text!r} must be a finite number of seconds >= 0")
    return value


def _check_labels(items: list[_Item], classes: Sequence[str] | None, problems: _Problems) -> list[_Item]:
    """Items whose label is in ``classes`` (all items when no class list is given)."""
    if classes is None:
        return items
    known = set(classes)
    kept = []
    for where, rec in items:
        if rec.label in known:
            kept.append((where, rec))
        else:
            problems.bad(where, f"unknown label {rec.label!r}",
                         f"use one of the {len(known)} given classes or add it to the class list")
    return kept


def _file_missing(ctx: _Context, where: str, path: str, looked: Sequence[str] = ()) -> bool:
    """True (and reported) when ``check_files`` is on and ``path`` is not a file (nor a member of
    a tar shard, ``<shard>.tar/<member>``, which the media readers open in place)."""
    if not ctx.check_files or os.path.isfile(path) or _is_member(path):
        return False
    reason = f"file not found; looked for: {', '.join(looked)}" if looked else f"file not found: {path}"
    ctx.problems.bad(where, reason,
                     "fix the path or the root folder (root=/--root), or pass check_files=False")
    return True


def _is_member(path: str) -> bool:
    from ccl_cache.media.tarshard import member_exists  # the media room loads PyAV: only for paths that are no file

    return member_exists(path)


def _record(ctx: _Context, where: str, **fields: Any) -> ClipRecord | None:
    """A ClipRecord, or None (reported) when its fields do not make one."""
    try:
        return ClipRecord(**fields)
    except ManifestError as exc:
        ctx.problems.bad(where, str(exc), "fix the row")
        return None
