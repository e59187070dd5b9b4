"""`ccl-cache verify`: read every chunk of every array of a store and name each damaged one.

Damage is found five ways: a chunk whose checksum does not match its bytes (``crc32c`` in Zarr,
``fletcher32`` in HDF5: flipped bits); a chunk of the wrong size (an uncompressed Zarr chunk file
cut short); a chunk the I/O library cannot decode; a chunk missing where the store's own records
say one was written (rows marked done, a failure-ledger column beside the others); node metadata
that cannot be read. Besides, a teacher or student embedding chunk that holds exactly the bytes of
another chunk of the same array (a file copied over another: its checksum is valid) is named.

Stores written before checksums existed have none: flipped bits in their chunks go unnoticed
(``VerifyReport.unchecked`` lists such arrays; HDF5 text columns never have one), but cut, lost
and undecodable chunks are still found. :func:`repair_store` makes the damaged rows of teachers
and ledgers "not done", so that rerunning the same ``ccl-cache extract`` command recomputes them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ccl_cache.errors import StoreError, StoreLockedError
from ccl_cache.store.backend import Backend, backend_for_path
from ccl_cache.store.damage import FORMAT_ERRORS, fix_for, missing_data
from ccl_cache.store.open import open_store
from ccl_cache.store.schema import (
    CHECKSUMS_ATTR, CLIP_COLUMNS, COVERAGE_PATH, DECODE_ERRORS_PATH, FAILURE_COLUMNS, TEACHER_DATA, TEACHER_DONE,
    check_root_attrs, teacher_array,
)

_BLOCK_BYTES = 64 * 1024 * 1024  # decoded per read: bounded memory on large arrays

KINDS = {
    "checksum": "checksum mismatch",
    "truncated": "wrong chunk size",
    "unreadable": "chunk cannot be decoded",
    "missing": "chunk missing",
    "duplicate": "chunk holds another chunk's bytes",
    "metadata": "metadata cannot be read",
}


@dataclass(frozen=True)
class Damage:
    """One damaged chunk (or node): ``rows`` is [start, stop) of the array, None for metadata."""

    kind: str  # a key of KINDS
    array: str  # "" = the store itself (its root)
    rows: tuple[int, int] | None
    file: str
    detail: str

    def describe(self) -> str:
        rows = f" rows {self.rows[0]}:{self.rows[1]}" if self.rows else ""
        return f"{self.array or '(store root)'}{rows}: {KINDS[self.kind]} ({self.detail}) in {self.file}"


@dataclass
class VerifyReport:
    """What :func:`verify_store` read and found (``repaired``: what :func:`repair_store` reset)."""

    store: str
    backend: str
    checksums: str | None = None  # the root attribute; None: written before checksums existed
    arrays: int = 0
    chunks: int = 0
    damage: list[Damage] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # arrays without a checksum
    repaired: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage

    def fixes(self) -> list[str]:
        """What to do about the damage found, one line per distinct fix."""
        return sorted({fix_for(self.store, d.array) for d in self.damage})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ok=self.ok, fixes=self.fixes())
        for name in ("damage", "repaired"):
            out[name] = [{**asdict(d), "description": d.describe()} for d in getattr(self, name)]
        return out


def verify_store(path: str | Path) -> VerifyReport:
    """Read every chunk of every array of the store at ``path``; never raises for damage."""
    path = Path(path)
    cls = backend_for_path(path)
    if not path.exists():
        raise StoreError(f"{path}: no store here; check the path")
    report = VerifyReport(str(path), cls.name)
    try:
        backend = cls.open(path, "r")
    except StoreLockedError:
        raise
    except StoreError as exc:
        report.damage.append(Damage("metadata", "", None, str(path), _detail(exc, path)))
        return report
    try:
        _verify(backend, report)
    finally:
        backend.close()
    return report


def _detail(exc: BaseException, store: Path) -> str:
    """The library's words without the store path the message starts with nor its advice."""
    text = str(exc).removeprefix(f"{store}: ")
    return text.split("; the store is damaged")[0].split("; re-create it")[0]


def _verify(b: Backend, report: VerifyReport) -> None:
    try:
        attrs = b.get_attrs("")
        check_root_attrs(str(b.path), attrs)
    except StoreError as exc:
        report.damage.append(Damage("metadata", "", None, b.node_file(""), _detail(exc, b.path)))
        return
    report.checksums = attrs.get(CHECKSUMS_ATTR)
    b.checksums = report.checksums is not None
    strict = b.checksums or b.name == "hdf5"  # every chunk written: see damage.missing_data
    arrays = _walk(b, report, "")
    present = {a: p for a in arrays if (p := _check_array(b, a, report)) is not None}
    for array in _expected(b, arrays):
        if array not in arrays and not any(d.array == array or array.startswith(d.array + "/") for d in report.damage):
            report.damage.append(Damage("metadata", array, None, b.node_file(array), "the array is gone"))
    _check_teachers(b, report, present, strict)
    _check_ledgers(b, report, present, strict)


def _walk(b: Backend, report: VerifyReport, path: str) -> list[str]:
    """Every array under group ``path``; nodes whose metadata cannot be read become damage."""
    try:
        names = b.children(path)
    except StoreError as exc:
        report.damage.append(Damage("metadata", path, None, b.node_file(path), _detail(exc, b.path)))
        return []
    found: list[str] = []
    for name in names:
        child = f"{path}/{name}" if path else name
        try:
            is_array = b.is_array(child)
        except StoreError as exc:
            report.damage.append(Damage("metadata", child, None, b.node_file(child), _detail(exc, b.path)))
            continue
        found.extend([child] if is_array else _walk(b, report, child))
    return found


def _expected(b: Backend, arrays: list[str]) -> list[str]:
    """Arrays the schema requires: clip and failure columns, classes, each teacher's four."""
    groups = {a.rsplit("/", 1)[0] for a in arrays if teacher_array(a)}
    return ([f"clips/{c}" for c in CLIP_COLUMNS] + [f"failures/{c}" for c in FAILURE_COLUMNS] + ["classes"]
            + [f"{g}/{name}" for g in sorted(groups) for name in (*TEACHER_DATA, TEACHER_DONE)])


def _check_array(b: Backend, path: str, report: VerifyReport) -> list[bool] | None:
    """Read every chunk of ``path``; returns which chunks exist (None: metadata unreadable)."""
    try:
        shape, kind, chunks = b.array_info(path)
        if not b.checksummed(path):
            report.unchecked.append(path)
    except StoreError as exc:
        report.damage.append(Damage("metadata", path, None, b.node_file(path), _detail(exc, b.path)))
        return None
    report.arrays += 1
    n, per = (int(shape[0]), max(1, int(chunks[0]))) if shape else (1, 1)
    present = [b.chunk_exists(path, c) for c in range(-(-n // per))]
    readable = []
    for c in (c for c, here in enumerate(present) if here):
        report.chunks += 1
        problem = b.chunk_size_problem(path, c)
        if problem:
            report.damage.append(Damage("truncated", path, _rows(c, per, n), b.chunk_file(path, c), problem))
        else:
            readable.append(c)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * (64 if kind == "str" else np.dtype(kind).itemsize)
    step = max(1, _BLOCK_BYTES // max(1, row_bytes * per))
    digests: dict[bytes, list[int]] = {}
    embedding = path.endswith("/embedding") and path.split("/")[0] in ("teachers", "students")
    for c, data in _decoded(b, path, readable, per, n, step):
        if isinstance(data, Exception):
            report.damage.append(Damage(_kind(data, b.checksummed(path)), path, _rows(c, per, n),
                                        b.chunk_file(path, c), f"{type(data).__name__}: {data}"))
        elif embedding and data.size and not np.array_equal(data, np.broadcast_to(data.flat[0], data.shape),
                                                              equal_nan=True):
            digests.setdefault(hashlib.blake2b(b.chunk_bytes(path, c), digest_size=16).digest(), []).append(c)
    for same in (group for group in digests.values() if len(group) > 1):
        for c in same:
            others = ", ".join(f"{o * per}:{min(n, (o + 1) * per)}" for o in same if o != c)
            report.damage.append(Damage("duplicate", path, _rows(c, per, n), b.chunk_file(path, c),
                                        f"the same bytes as the chunk of rows {others}: one was copied over the "
                                        "other, which one cannot be told"))
    return present


def _decoded(b: Backend, path: str, chunks: list[int], per: int, n: int,
             step: int) -> Iterator[tuple[int, np.ndarray | Exception]]:
    """(chunk, its decoded rows or the decoding error) for each of ``chunks``: runs of adjacent
    chunks are read together, chunk by chunk only where a run fails."""
    runs: list[list[int]] = []
    for c in chunks:
        if runs and c == runs[-1][-1] + 1 and len(runs[-1]) < step:
            runs[-1].append(c)
        else:
            runs.append([c])
    for run in runs:
        try:
            data = b.decode(path, slice(run[0] * per, min(n, (run[-1] + 1) * per)))
        except FORMAT_ERRORS:
            data = None
        for c in run:
            if data is not None:
                yield c, data[(c - run[0]) * per: (c - run[0]) * per + per]
                continue
            try:
                yield c, b.decode(path, slice(c * per, min(n, (c + 1) * per)))
            except FORMAT_ERRORS as exc:
                yield c, exc


def _kind(exc: Exception, checksummed: bool) -> str:
    text = str(exc).lower()
    if "checksum" in text or (checksummed and "filter" in text):  # zarr crc32c; HDF5 fletcher32
        return "checksum"
    return "truncated" if "reshape" in text else "unreadable"


def _rows(chunk: int, per: int, n: int) -> tuple[int, int]:
    return chunk * per, min(n, (chunk + 1) * per)


def _read_flags(b: Backend, path: str, n: int) -> np.ndarray:
    """A per-row array (done ledger, frame counts) read chunk by chunk; damaged chunks read as
    fill (their damage is reported already)."""
    per = max(1, int(b.array_info(path)[2][0]))
    parts = []
    for c in range(-(-n // per)):
        try:
            parts.append(np.asarray(b.decode(path, slice(c * per, min(n, (c + 1) * per)))))
        except FORMAT_ERRORS:
            parts.append(np.zeros(min(n, (c + 1) * per) - c * per, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _check_teachers(b: Backend, report: VerifyReport, present: dict[str, list[bool]], strict: bool) -> None:
    """Rows marked done must have their chunks (damage.missing_data says which may be absent)."""
    for done_path in [a for a in present if (t := teacher_array(a)) and t[1] == TEACHER_DONE]:
        group = done_path.rsplit("/", 1)[0]
        if not all(f"{group}/{name}" in present for name in TEACHER_DATA):
            continue  # an array of the teacher is unreadable: reported already
        shape, _, chunks = b.array_info(done_path)
        n, per = int(shape[0]), max(1, int(chunks[0]))
        done = _read_flags(b, done_path, n).astype(bool)
        for c in range(-(-n // per)):
            if done[c * per: (c + 1) * per].any():
                for name in missing_data(b, group, c, strict):
                    report.damage.append(Damage(
                        "missing", f"{group}/{name}", _rows(c, per, n), b.chunk_file(f"{group}/{name}", c),
                        "the rows are marked done, but their chunk is gone: it would read as zeros"))


def _check_ledgers(b: Backend, report: VerifyReport, present: dict[str, list[bool]], strict: bool) -> None:
    """Chunks the store always writes: clip columns and class names (written at creation; before
    checksums zarr skipped fill-valued ones, so only ids are sure then), student embeddings, and
    the failure ledger's columns (written together: a chunk in one column and not another is lost)."""
    always = ["clips/id", "classes"]
    if strict:
        always += [f"clips/{c}" for c in CLIP_COLUMNS] + [a for a in present if a.startswith("students/")]
    for array in dict.fromkeys(a for a in always if a in present):
        for c, here in enumerate(present[array]):
            if not here:
                _missing(b, report, array, c, "written when the store was created")
    columns = [f"failures/{c}" for c in (FAILURE_COLUMNS if strict else ("stage", "time"))]
    if all(c in present for c in columns):
        for chunk, states in enumerate(zip(*(present[c] for c in columns))):
            if any(states) and not all(states):
                for column, here in zip(columns, states):
                    if not here:
                        _missing(b, report, column, chunk, "the other columns of the failure ledger have this chunk")


def _missing(b: Backend, report: VerifyReport, array: str, chunk: int, why: str) -> None:
    shape, _, chunks = b.array_info(array)
    per = max(1, int(chunks[0]))
    report.damage.append(Damage("missing", array, _rows(chunk, per, int(shape[0])), b.chunk_file(array, chunk),
                                f"{why}, but it is gone: it would read as its fill value"))


def repair_store(path: str | Path, command: str = "ccl-cache verify --repair") -> VerifyReport:
    """Verify the store, then make the rows of damaged teacher and ledger chunks "not done" (their
    chunks read as fill again), so that rerunning the same ``ccl-cache extract`` command recomputes
    them; returns the verification after the repair with ``repaired`` listing what was reset.

    A damaged chunk of a teacher resets that chunk of all four of its arrays; one of the failure
    ledger or of extraction's per-clip columns resets it and the done flags of every teacher there
    (extraction rewrites them with the rows). Other damage (clips, students, frame cache, metadata)
    is left and stays in the report, with its fix.
    """
    before = verify_store(path)
    fixable = [d for d in before.damage if d.rows is not None and _repairable(d.array)]
    if not fixable:
        return before
    with open_store(path, "r+") as store:
        store.acquire_lease(command=command)
        teachers = [f"teachers/{key}" for key in store.teacher_keys()]
        resets: dict[str, set[int]] = {}
        for d in fixable:
            groups = [d.array.rsplit("/", 1)[0]] if teacher_array(d.array) else teachers
            names = (TEACHER_DONE, *TEACHER_DATA) if teacher_array(d.array) else (TEACHER_DONE,)
            if d.array.startswith("failures/"):
                targets = [f"failures/{c}" for c in FAILURE_COLUMNS]
            else:
                targets = [] if teacher_array(d.array) else [d.array]
            targets = [f"{g}/{name}" for g in groups for name in names] + targets
            for array in targets:
                per = max(1, int(store._b.array_info(array)[2][0]))
                resets.setdefault(array, set()).update(range(d.rows[0] // per, -(-d.rows[1] // per)))
        # Done flags first: a repair killed part-way leaves rows not done, never done over fill.
        for array in sorted(resets, key=lambda a: not a.endswith(f"/{TEACHER_DONE}")):
            for chunk in sorted(resets[array]):
                store._b.reset_chunk(array, chunk)
            store.flush()
    after = verify_store(path)
    after.repaired = fixable
    return after


def _repairable(array: str) -> bool:
    return bool(teacher_array(array)) or array.startswith("failures/") or array in (COVERAGE_PATH, DECODE_ERRORS_PATH)
