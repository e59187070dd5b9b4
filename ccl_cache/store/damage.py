"""Damaged stores: which library errors mean damaged bytes, what each damage message says, and the
rule that a teacher row marked done must have its chunks.

Bytes rot, files get truncated by a full disk or a bad copy, chunk files get deleted. The I/O
libraries then raise whatever their decoders hit (``ValueError: cannot reshape``, zarr's checksum
``ValueError``, h5py's ``OSError``/``RuntimeError``), or, for a deleted Zarr chunk, nothing at all:
the chunk reads as its fill value (zeros). Reads of the store turn the former into a
:class:`~ccl_cache.errors.StoreError` naming the store, the array, the rows and the fix, and refuse
the latter where it matters: under rows that the done ledger says were written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ccl_cache.errors import StoreError
from ccl_cache.store.schema import (
    COVERAGE_PATH, DECODE_ERRORS_PATH, FRAMES_GROUP, TEACHER_DATA, TEACHER_DONE, teacher_array,
)

if TYPE_CHECKING:
    from ccl_cache.store.backend import Backend

# What zarr's codecs (checksum mismatch, a chunk of the wrong size), numcodecs' decompressors and
# h5py (filter failures, bad signatures) raise for damaged bytes. Wrapped only around the library
# calls of a read, so that errors of ccl-cache's own code are not renamed.
FORMAT_ERRORS: tuple[type[Exception], ...] = (ValueError, RuntimeError, OSError)


def rows_text(rows: Any) -> str:
    """``slice(4, 8)`` → ``" rows 4:8"``; an int → ``" row 4"``; a few ints listed; None → ``""``."""
    if rows is None:
        return ""
    if isinstance(rows, tuple) and rows:
        rows = rows[0]
    if isinstance(rows, slice):
        start = 0 if rows.start is None else rows.start
        return f" rows {start}:{'' if rows.stop is None else rows.stop}"
    if isinstance(rows, (int, np.integer)):
        return f" row {int(rows)}"
    values = np.asarray(rows).reshape(-1)
    if values.dtype.kind in "iu" and values.size:
        shown = ", ".join(str(int(v)) for v in values[:5])
        return f" rows {shown}{', …' if values.size > 5 else ''}"
    return ""


def fix_for(store: str | Path, array: str) -> str:
    """What to do about damage in ``array``: recompute it where ccl-cache can, else restore."""
    root = array.split("/")[0]
    if root in ("teachers", "failures") or array in (COVERAGE_PATH, DECODE_ERRORS_PATH):
        return (f"`ccl-cache verify --repair {store}` marks the damaged rows not done, and rerunning the same "
                "`ccl-cache extract` command recomputes them (or restore the store from a copy)")
    if root == "students":
        return "rewrite the student run with `ccl-cache embed` (or restore the store from a copy)"
    if root == FRAMES_GROUP:
        return "rebuild the frame cache with `ccl-cache cache-clips --overwrite` (or restore the store from a copy)"
    return "re-create the store with `ccl-cache extract --overwrite`, or restore it from a copy"


def damage_message(store: str | Path, array: str, rows: Any, problem: str) -> str:
    where = f"array {array!r}" if array else "the store's root"
    return (f"{store}: {where}{rows_text(rows)}: {problem}; the store is damaged. Run `ccl-cache verify {store}` "
            f"to see all damage, then {fix_for(store, array)}")


def unreadable_message(store: str | Path, array: str, rows: Any, exc: BaseException) -> str:
    return damage_message(store, array, rows, f"cannot be read ({type(exc).__name__}: {exc})")


def chunk_rows_of(backend: "Backend", path: str) -> tuple[int, int]:
    """(rows, rows per chunk) of array ``path``."""
    shape, _, chunks = backend.array_info(path)
    return (int(shape[0]), max(1, int(chunks[0]))) if shape else (1, 1)


def missing_data(backend: "Backend", group: str, chunk: int, strict: bool) -> list[str]:
    """The data arrays of teacher ``group`` whose chunk ``chunk`` is missing although rows of that
    chunk are done (the caller checked that).

    ``strict``: every chunk was written (HDF5 always; Zarr stores marked by the ``checksums``
    root attribute, whose arrays write fill-valued chunks too), so any missing chunk is lost.
    Otherwise (Zarr stores written before checksums) zarr skipped chunks equal to the fill value:
    a chunk of masked rows has a zero embedding and an all-False mask, both skipped together, and
    all-NaN times (``write_rows(times=None)``) are skipped; so only an embedding chunk without its
    mask chunk, or the reverse, is a lost chunk there.
    """
    missing = [name for name in TEACHER_DATA if not backend.chunk_exists(f"{group}/{name}", chunk)]
    if strict:
        return missing
    pair = {"embedding", "mask"} & set(missing)
    return sorted(pair) if len(pair) == 1 else []


class WrittenChunks:
    """Refuses reads of teacher data whose chunk is missing under done rows (it would read as
    zeros, NaN times and False masks: silently wrong training targets or search vectors).

    Each chunk is checked once per open store (a few ``stat`` calls); chunks found whole are
    remembered, so repeated reads (training epochs) cost a set lookup.
    """

    def __init__(self, backend: "Backend", strict: bool) -> None:
        self._b = backend
        self.strict = strict
        self._whole: dict[str, set[int]] = {}  # array -> chunks found whole

    def check(self, path: str, chunks: Iterable[int]) -> None:
        """StoreError when any of ``chunks`` of ``path`` (a teacher data array) is lost."""
        parsed = teacher_array(path)
        if parsed is None or parsed[1] == TEACHER_DONE:
            return
        whole = self._whole.setdefault(path, set())
        todo = sorted({int(c) for c in chunks} - whole)
        if not todo:
            return
        group = path.rsplit("/", 1)[0]
        n, per = chunk_rows_of(self._b, path)
        first, last = todo[0] * per, min(n, (todo[-1] + 1) * per)
        with self._b.reading(f"{group}/{TEACHER_DONE}", slice(first, last)):
            done = np.asarray(self._b.read(f"{group}/{TEACHER_DONE}", slice(first, last)), dtype=bool)
        for c in todo:
            rows = done[c * per - first: min(n, (c + 1) * per) - first]
            if not rows.any():
                continue  # nothing written here yet: fill values are the truth
            if parsed[1] in missing_data(self._b, group, c, self.strict):
                raise StoreError(lost_chunk_message(self._b, path, c, per, n, parsed[0]))
            whole.add(c)

    def check_rows(self, path: str, rows: Any) -> None:
        """:meth:`check` for a row selection (slice, int, int array, or a tuple starting with one)."""
        if teacher_array(path) is None:
            return
        if isinstance(rows, tuple):
            rows = rows[0] if rows else slice(None)
        n, per = chunk_rows_of(self._b, path)
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(n)
            chunks: Iterable[int] = range(start // per, -(-stop // per)) if stop > start else ()
        elif isinstance(rows, (int, np.integer)):
            chunks = [int(rows) % n // per] if n else []
        else:
            idx = np.asarray(rows)
            chunks = np.unique(idx.astype(np.int64) % max(1, n) // per).tolist() if idx.dtype.kind in "iu" else range(
                -(-n // per))
        self.check(path, chunks)


def lost_chunk_message(backend: "Backend", path: str, chunk: int, per: int, n: int, key: str) -> str:
    rows = slice(chunk * per, min(n, (chunk + 1) * per))
    return damage_message(
        backend.path, path, rows,
        f"teacher {key} marks these rows done but their chunk {backend.chunk_file(path, chunk)} is missing "
        "(it would read as zeros)")
