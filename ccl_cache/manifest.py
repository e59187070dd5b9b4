"""Clip records and the readers that turn dataset listings into them.

A :class:`Manifest` is the ordered list of clips a run works on (its order is the store's row
order) plus the sorted class names whose index is the label id. Readers, one per listing format,
are registered in :data:`READERS` (the CLI's ``--format`` choices come from it):

``csv``
    generic CSV with a header: required ``id,path,label``; optional ``split,start,end``; other
    columns are ignored. Relative paths are resolved against ``root`` (default: the CSV's folder).
``vggsound``
    the VGGSound listing without header: ``youtube_id,start_seconds,label,split``. Files are found
    with ``pattern`` (default ``"{youtube_id}_{start:06d}.mp4"``) in ``root``, ``root/<split>/`` or
    ``root/videos/``. VGGSound files are already the 10 s cuts, so records get ``start=end=None``
    (the whole file); ``clip_window=True`` sets ``start=start_seconds, end=start+window`` for
    files that are the uncut YouTube videos.
``ucf101``
    the official split lists (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``); options
    ``split_id`` (1-3) and ``classes`` (a subset to keep, e.g. the 51 classes with audio, "UCF51").
``activitynet``
    the official ``activity_net.v1-3`` JSON; one record per annotated segment, id ``f"{vid}_{k}"``;
    files ``v_<vid>`` with extension .mp4/.mkv/.webm; unlabelled testing videos are left out with a
    note in ``skipped``.
``folder``
    ``root/<class>/<file>`` or, when every top folder is a split name (train/val/test and their
    long forms), ``root/<split>/<class>/<file>``.

Bad rows (duplicate ids, missing files, unknown labels, malformed fields, bytes that are not
UTF-8) raise :class:`~ccl_cache.errors.ManifestError` naming the file, the line and the fix; with
``skip_bad=True`` they are left out and listed in ``Manifest.skipped`` as ``(where, reason)``.
Paths are data: they are never handed to a shell.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ccl_cache.errors import ConfigError, ManifestError
from ccl_cache.fileio import atomic_path
from ccl_cache.registry import Registry

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv",
)
"""File endings the ``folder`` reader treats as videos (compared case-insensitively)."""

SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
"""Folder / subset names recognised as splits, mapped to the canonical split name."""

STUDENT_SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The splits a student run uses (train, validate, test); ``pretrain`` is the teachers' split."""


def canonical_split(name: str) -> str:
    """``name`` as the trainer and the index read it: a recognised alias in any case ("Train",
    "validation") becomes its canonical split; any other name is kept as it is."""
    return SPLIT_ALIASES.get(name.lower(), name)


def canonical_splits(names: Any) -> np.ndarray:
    """:func:`canonical_split` of each name (e.g. a store's ``clips.split`` column), as str."""
    return np.array([canonical_split(str(s)) for s in np.asarray(names)], dtype=str)

CSV_COLUMNS: tuple[str, ...] = ("id", "path", "label", "split", "start", "end")
_SKIP_HINT = "(or, in Python, load_manifest(..., skip_bad=True) leaves such rows out)"


@dataclass(frozen=True)
class ClipRecord:
    """One clip: a file, its label, its split and an optional time window (seconds).

    ``start``/``end`` of ``None`` mean "from the file's start" / "to the file's end".
    """

    id: str
    path: str
    label: str
    split: str = "train"
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        for name in ("id", "path", "label", "split"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ManifestError(f"clip {self.id!r}: {name} must be a non-empty string, got {value!r}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ManifestError(
                f"clip {self.id!r}: end ({self.end}) must be after start ({self.start}); fix the window"
            )


@dataclass(frozen=True)
class Manifest:
    """The clips of a run, in store-row order, and the class names (index = label id)."""

    records: tuple[ClipRecord, ...]
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the object hashable and immutable.
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "skipped", tuple(tuple(s) for s in self.skipped))
        if len(set(self.classes)) != len(self.classes):
            raise ManifestError(f"class names must be unique; got duplicates in {list(self.classes)}")
        known = set(self.classes)
        seen: set[str] = set()
        for rec in self.records:
            if rec.label not in known:
                raise ManifestError(f"clip {rec.id!r} has label {rec.label!r}, which is not one of the classes")
            if rec.id in seen:
                raise ManifestError(f"clip id {rec.id!r} appears twice; ids must be unique")
            seen.add(rec.id)

    @classmethod
    def from_records(
        cls, records: Iterable[ClipRecord], classes: Iterable[str] | None = None,
        skipped: Iterable[tuple[str, str]] = (),
    ) -> "Manifest":
        """Build a manifest; ``classes`` default to the sorted unique labels of ``records``."""
        records = tuple(records)
        names = sorted(set(classes) if classes is not None else {r.label for r in records})
        return cls(records, tuple(names), tuple(skipped))

    @functools.cached_property
    def _class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def label_id(self, label: str) -> int:
        """The integer id of class ``label`` (its index in ``classes``)."""
        try:
            return self._class_index[label]
        except KeyError:
            raise ManifestError(f"unknown class {label!r}; known classes: {', '.join(self.classes)}") from None

    def labels(self) -> np.ndarray:
        """Label ids of the records, in order, as int64."""
        index = self._class_index
        return np.fromiter((index[r.label] for r in self.records), dtype=np.int64, count=len(self.records))

    def splits(self) -> list[str]:
        """Split names in order of first appearance."""
        return list(dict.fromkeys(r.split for r in self.records))

    def split(self, name: str) -> "Manifest":
        """The records of split ``name``; ``classes`` are kept so label ids stay the same."""
        records = tuple(r for r in self.records if r.split == name)
        if not records:
            raise ManifestError(f"no clips in split {name!r}; this manifest has splits: {', '.join(self.splits())}")
        return Manifest(records, self.classes)

    def sha256(self) -> str:
        """Hash of the canonical class list and record list (store provenance).

        Canonical form: compact JSON of ``{"classes": [...], "records": [[id, path, label, split,
        start, end], ...]}`` in record order, UTF-8. Order matters: it is the store's row order.
        """
        payload = {
            "classes": list(self.classes),
            "records": [[r.id, r.path, r.label, r.split, r.start, r.end] for r in self.records],
        }
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.records)


# --------------------------------------------------------------------------------------------
# Reader plumbing


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
    """True (and reported) when ``check_files`` is on and ``path`` is not a file."""
    if not ctx.check_files or os.path.isfile(path):
        return False
    reason = f"file not found; looked for: {', '.join(looked)}" if looked else f"file not found: {path}"
    ctx.problems.bad(where, reason,
                     "fix the path or the root folder (root=/--root), or pass check_files=False")
    return True


def _record(ctx: _Context, where: str, **fields: Any) -> ClipRecord | None:
    """A ClipRecord, or None (reported) when its fields do not make one."""
    try:
        return ClipRecord(**fields)
    except ManifestError as exc:
        ctx.problems.bad(where, str(exc), "fix the row")
        return None


# --------------------------------------------------------------------------------------------
# Generic CSV


def _csv_header(ctx: _Context, rows: list[tuple[int, list[str]]]) -> list[str]:
    if not rows:
        raise ManifestError(f"{ctx.path}: the manifest is empty; expected a header line id,path,label[,split,start,end] and rows")
    number, header = rows[0]
    names = [h.lower() for h in header]
    missing = [c for c in ("id", "path", "label") if c not in names]
    if missing:
        raise ManifestError(
            f"{ctx.path}:{number}: missing column(s) {', '.join(missing)} in header {header}; the first line "
            "must name the columns, with at least id,path,label (optional split,start,end)"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(f"{ctx.path}:{number}: column(s) {', '.join(dupes)} appear twice in the header; rename one")
    return names


@READERS.register("csv")
def read_generic_csv(ctx: _Context, classes: Sequence[str] | None = None, delimiter: str = ",") -> _Parsed:
    """Generic CSV with header ``id,path,label[,split,start,end]`` (extra columns ignored)."""
    rows = list(_csv_rows(_read_lines(ctx.path, ctx.problems), delimiter))
    names = _csv_header(ctx, rows)
    root = ctx.root or ctx.path.parent
    items: list[_Item] = []
    for number, row in rows[1:]:
        where = f"{ctx.path}:{number}"
        if len(row) != len(names):
            ctx.problems.bad(where, f"expected {len(names)} fields ({','.join(names)}) but found {len(row)}",
                             "quote fields that contain the delimiter and fill every column")
            continue
        cells = dict(zip(names, row))
        try:
            start = _parse_time(cells.get("start", ""), "start")
            end = _parse_time(cells.get("end", ""), "end")
        except ValueError as exc:
            ctx.problems.bad(where, str(exc), "write seconds as a number, or leave the field empty")
            continue
        path = _resolve(root, cells["path"]) if cells["path"] else ""
        rec = _record(ctx, where, id=cells["id"], path=path, label=cells["label"],
                      split=cells.get("split") or "train", start=start, end=end)
        if rec is not None and not _file_missing(ctx, where, rec.path):
            items.append((where, rec))
    return _check_labels(items, classes, ctx.problems), classes


# --------------------------------------------------------------------------------------------
# VGGSound


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


# --------------------------------------------------------------------------------------------
# UCF101


def _ucf_class_index(ctx: _Context, path: Path) -> dict[int, str]:
    """``classInd.txt``: "1 ApplyEyeMakeup" lines -> {1: "ApplyEyeMakeup"}."""
    index: dict[int, str] = {}
    for number, line in enumerate(_read_lines(path, ctx.problems), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{number}"
        if len(parts) != 2 or not parts[0].isdigit():
            ctx.problems.bad(where, f"expected '<number> <ClassName>' but found {line.strip()!r}", "fix the line")
        elif int(parts[0]) in index or parts[1] in index.values():
            ctx.problems.bad(where, f"class {parts[1]!r} / number {parts[0]} is listed twice", "remove the duplicate")
        else:
            index[int(parts[0])] = parts[1]
    if not index:
        raise ManifestError(f"{path}: no classes listed; expected lines like '1 ApplyEyeMakeup'")
    return index


def _ucf_line(line: str) -> tuple[str, int | None]:
    """'Class/v_x.avi 1' -> (path, 1); 'Class/v_x.avi' -> (path, None)."""
    parts = line.strip().rsplit(None, 1)
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return line.strip(), None


def _ucf_list(ctx: _Context, path: Path, split: str, class_index: dict[int, str], root: Path,
              keep: set[str]) -> list[_Item]:
    names = set(class_index.values())
    items: list[_Item] = []
    for number, line in enumerate(_read_lines(path, ctx.problems), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        rel, number_label = _ucf_line(line)
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        if len(parts) < 2:
            ctx.problems.bad(where, f"expected 'ClassName/v_file.avi' but found {line.strip()!r}", "fix the line")
            continue
        label = parts[0]
        if label not in names:
            ctx.problems.bad(where, f"unknown label {label!r} (not in classInd.txt)", "fix the class folder name")
            continue
        if number_label is not None and class_index.get(number_label) != label:
            ctx.problems.bad(where, f"class number {number_label} is {class_index.get(number_label)!r} in classInd.txt, "
                             f"but the file is in folder {label!r}", "fix the number or the folder")
            continue
        if label not in keep:
            continue  # outside the requested class subset (e.g. UCF51): left out on purpose
        rec = _record(ctx, where, id=PurePosixPath(parts[-1]).stem, path=_resolve(root, "/".join(parts)),
                      label=label, split=split)
        if rec is not None and not _file_missing(ctx, where, rec.path):
            items.append((where, rec))
    return items


@READERS.register("ucf101")
def read_ucf101(ctx: _Context, split_id: int = 1, classes: Sequence[str] | None = None) -> _Parsed:
    """UCF101 split lists: trainlist0N.txt -> "train", testlist0N.txt -> "test".

    ``path`` is the ``ucfTrainTestlist`` folder or a file in it. Videos are looked up under
    ``root`` (default: the sibling folder ``UCF-101`` when it exists, else the list folder).
    ``classes`` keeps only those classes (for UCF51, the 51 classes with audio).
    """
    if split_id not in (1, 2, 3):
        raise ConfigError(f"split_id={split_id!r}; UCF101 has the official splits 1, 2 and 3")
    folder = ctx.path if ctx.path.is_dir() else ctx.path.parent
    files = {name: folder / f"{name}0{split_id}.txt" for name in ("trainlist", "testlist")}
    for needed in (folder / "classInd.txt", *files.values()):
        if not needed.is_file():
            raise ManifestError(f"{needed}: not found; the UCF101 reader needs classInd.txt, trainlist0{split_id}.txt "
                                f"and testlist0{split_id}.txt in {folder}")
    class_index = _ucf_class_index(ctx, folder / "classInd.txt")
    all_names = sorted(class_index.values())
    if classes is not None:
        unknown = sorted(set(classes) - set(all_names))
        if unknown:
            raise ManifestError(f"classes={list(classes)!r}: {', '.join(unknown)} not in {folder / 'classInd.txt'}; "
                                "use the class names exactly as listed there")
    keep = set(classes) if classes is not None else set(all_names)
    sibling = folder.parent / "UCF-101"
    root = ctx.root or (sibling if sibling.is_dir() else folder)
    items = _ucf_list(ctx, files["trainlist"], "train", class_index, root, keep)
    items += _ucf_list(ctx, files["testlist"], "test", class_index, root, keep)
    return items, sorted(keep)


# --------------------------------------------------------------------------------------------
# ActivityNet


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


# --------------------------------------------------------------------------------------------
# Folder per class


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


# --------------------------------------------------------------------------------------------
# Entry points


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


def write_csv(manifest: Manifest, path: str | Path, relative: bool = True) -> None:
    """Write ``manifest`` as a generic CSV (id,path,label,split,start,end), atomically.

    With ``relative`` (default), paths inside the CSV's folder are written relative to it, so
    the folder can be moved; :func:`load_manifest` resolves them against the CSV's folder again.
    Times are written with ``repr`` so that reading gives the same floats back.
    """
    path = Path(os.path.abspath(path))
    folder = str(path.parent)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for r in manifest.records:
                file = r.path
                if relative and os.path.isabs(file) and os.path.commonpath([folder, file]) == folder:
                    file = PurePosixPath(*Path(os.path.relpath(file, folder)).parts).as_posix()
                times = ["" if t is None else repr(float(t)) for t in (r.start, r.end)]
                writer.writerow([r.id, file, r.label, r.split, *times])
