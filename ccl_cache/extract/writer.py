"""Writing in a background thread: whole store chunks committed in the order *failures, per-clip
columns, data, done ledger* (``Store.write_rows`` writes the data before the done flags), so a
kill at any moment loses at most the chunks in flight and never leaves a row marked done that is
not; failures also go to ``<store>.failures.jsonl``, one line each.

The first failed write stops the thread: it commits nothing more (an HDF5 store has abandoned its
file by then, see ``store.hdf5_backend``) and hands the error to the calling thread, which raises
it as the StoreError of :func:`write_error` at its next ``put`` or at the end of the block."""

from __future__ import annotations

import collections
import json
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ccl_cache.errors import CclCacheError, StoreError
from ccl_cache.extract.decode import DecodedClip, Failure
from ccl_cache.extract.output import estimate_store_bytes
from ccl_cache.store.failures import graver
from ccl_cache.store.schema import AUDIO_COVERAGE_PATH, COVERAGE_PATH, DECODE_ERRORS_PATH
from ccl_cache.store.space import explain_write_error

if TYPE_CHECKING:
    from ccl_cache.extract.infer import TeacherRows
    from ccl_cache.manifest import Manifest
    from ccl_cache.store import Store


@dataclass
class ChunkJob:
    """Everything to commit for one store chunk."""

    rows: slice
    teachers: dict[str, TeacherRows]
    failures: dict[int, Failure]
    clear: list[int]  # rows whose old ledger entries this run resolved (retry_failed)
    decoded: list[DecodedClip]
    retried: frozenset[int] = frozenset()  # rows whose old ledger entries this run redoes


def keep_graver(failures: dict[int, Failure], row: int, failure: Failure) -> None:
    """Record ``failure`` for ``row`` unless the row already has one that rules out at least as much."""
    if graver(failure.stage, failures[row].stage if row in failures else None):
        failures[row] = failure


@dataclass
class RunCounters:
    """Running totals, updated by the writer after each committed chunk."""

    total: int = 0
    skipped: int = 0
    processed: int = 0
    failed: int = 0
    missing_audio: int = 0
    by_reason: collections.Counter = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to the ``progress`` callback after each committed chunk (and once at the start)."""

    total: int
    done: int  # skipped + processed
    processed: int
    skipped: int
    failed: int
    missing_audio: int
    elapsed: float


class StoreWriter:
    """Commits :class:`ChunkJob` s in a background thread: failures, the per-clip columns
    (duration, coverage), then data + done, then clears."""

    def __init__(self, store: "Store", manifest: "Manifest", log_path: Path, counters: RunCounters,
                 progress: Callable[[ProgressEvent], None] | None, depth: int = 4) -> None:
        self.store, self.manifest, self.log_path = store, manifest, log_path
        self.counters, self.progress = counters, progress
        self._queue: queue.Queue[ChunkJob | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        # Measured now: after a failed write the store may refuse every call (an abandoned HDF5 file).
        self._row_bytes = _row_bytes(store)
        self._thread = threading.Thread(target=self._loop, name="ccl-store-writer", daemon=True)

    def __enter__(self) -> "StoreWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self.raise_error()

    def put(self, job: ChunkJob) -> None:
        while True:
            self.raise_error()
            try:
                self._queue.put(job, timeout=0.5)
                return
            except queue.Full:
                continue

    def wait_committed(self) -> None:
        """Block until every job put so far is committed (or failed: then raise its error)."""
        self._queue.join()
        self.raise_error()

    def raise_error(self) -> None:
        error = self._error
        if error is None:
            return
        # A store's own StoreError for a failed write (HDF5) is explained again from its cause, so
        # that it says, as for Zarr, how much more the rest of the run needs.
        cause = error.__cause__ if isinstance(error, CclCacheError) else error
        if cause is None or isinstance(cause, CclCacheError):
            raise error
        raise write_error(self.store, cause, self.counters, self._row_bytes) from error

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is not None:
                    continue  # drain: the main thread will raise
                self._commit(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _commit(self, job: ChunkJob) -> None:
        for row, failure in sorted(self._ledger_entries(job).items()):
            self.store.record_failure(row, failure.stage, failure.reason, failure.message, failure.coverage)
        self._log_failures(job.failures)
        # The per-clip columns go before the teachers' done flags: a run killed in between must
        # redo the chunk, not skip it with its durations and coverage never written.
        self._record_clips(job.rows, job.decoded)
        for key, rows in job.teachers.items():
            embedding, times, mask = self._full_chunk(key, job.rows, rows)
            self.store.write_rows(key, job.rows, embedding, times, mask)
        if job.clear:
            self.store.clear_failures(job.clear)
        self._count(job)

    def _ledger_entries(self, job: ChunkJob) -> dict[int, Failure]:
        """The chunk's failures to record: a graver entry of an earlier run (an image failure
        when this run adds the audio teacher) stays unless this run redoes that row."""
        rows = np.array(sorted(r for r in job.failures if r not in job.retried), dtype=np.int64)
        if rows.size == 0:
            return job.failures
        stages = self.store.failure_stages(rows)
        out = dict(job.failures)
        for row, stage in zip(rows.tolist(), stages):
            if str(stage) and graver(str(stage), job.failures[row].stage):
                del out[row]  # the ledger's entry rules out more: keep it (this one is in the log)
        return out

    def _full_chunk(self, key: str, rows: slice, part: TeacherRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunk's arrays: computed rows from ``part``, the others as already stored."""
        count = rows.stop - rows.start
        if len(part.rows) == count:
            return part.embedding, part.times, part.mask
        embedding, times, mask = self.store.read_rows(key, rows)
        local = part.rows - rows.start
        embedding, times, mask = np.array(embedding), np.array(times), np.array(mask)
        embedding[local], times[local] = part.embedding, part.times.reshape(times[local].shape)
        mask[local] = part.mask
        return embedding, times, mask

    def _record_clips(self, rows: slice, decoded: list[DecodedClip]) -> None:
        """Fill the clips table's probed columns (duration, has_audio) and the coverage column."""
        ok = [c for c in decoded if math.isfinite(c.duration)]
        if ok:
            self.store.record_clips(
                np.array([c.row for c in ok], dtype=np.int64),
                duration=np.array([c.duration for c in ok], dtype=np.float64),
                has_audio=np.array([c.has_audio for c in ok], dtype=bool),
            )
        for path, value in ((COVERAGE_PATH, "coverage"), (AUDIO_COVERAGE_PATH, "audio_coverage"),
                            (DECODE_ERRORS_PATH, "decode_errors")):
            measured = [c for c in decoded if getattr(c, value) is not None]
            if measured:  # the whole chunk is rewritten: writers own chunks
                self.store.update_rows(path, rows, [c.row for c in measured], [getattr(c, value) for c in measured])

    def _log_failures(self, failures: dict[int, Failure]) -> None:
        if not failures:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        lines = []
        for row, f in sorted(failures.items()):
            rec = self.manifest.records[row]
            lines.append(json.dumps({
                "time": now, "row": row, "id": rec.id, "path": rec.path, "stage": f.stage,
                "reason": f.reason, "message": f.message, "coverage": f.coverage,
            }, ensure_ascii=False))  # fmt: skip
        # One O_APPEND write per chunk: shards appending to the same log do not interleave lines.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def _count(self, job: ChunkJob) -> None:
        c = self.counters
        c.processed += len({clip.row for clip in job.decoded})
        c.failed += len(job.failures)
        c.by_reason.update(f.reason for f in job.failures.values())
        missing = set().union(*(t.missing for t in job.teachers.values())) if job.teachers else set()
        c.missing_audio += len(missing)
        if self.progress is not None:
            self.progress(progress_event(c))


def write_error(store: "Store", exc: BaseException, counters: RunCounters,
                row_bytes: int | None = None) -> StoreError:
    """The StoreError for a failed store write (see :func:`~ccl_cache.store.space.explain_write_error`).

    Chunks are committed whole (data before the done flags), so the rows written before the
    failure are kept and a rerun of the same command resumes after them. ``row_bytes``: what one
    row adds (read from the store when None).
    """
    left = max(0, counters.total - counters.skipped - counters.processed)
    return explain_write_error(store.path, exc, left * (_row_bytes(store) if row_bytes is None else row_bytes))


def _row_bytes(store: "Store") -> int:
    """Bytes one row adds to the store, summed over its teachers (see estimate_store_bytes)."""
    layouts = [(int(t.frames or 1), int(t.dim)) for t in (store.teacher(k) for k in store.teacher_keys())]
    dtypes = [store.teacher(k).dtype for k in store.teacher_keys()]
    return estimate_store_bytes(1, layouts, dtypes[0] if dtypes else "float32")


def progress_event(c: RunCounters) -> ProgressEvent:
    return ProgressEvent(
        total=c.total, done=c.skipped + c.processed, processed=c.processed, skipped=c.skipped,
        failed=c.failed, missing_audio=c.missing_audio, elapsed=time.monotonic() - c.started,
    )  # fmt: skip

