"""Planning: which rows of which chunks still need which teacher, the decode tasks that follow, and
the decoded clips grouped back into whole chunks."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ccl_cache.extract.decode import ClipTask, DecodedClip, DecodePool

if TYPE_CHECKING:
    from ccl_cache.manifest import Manifest
    from ccl_cache.store import Store


@dataclass(frozen=True)
class ChunkPlan:
    rows: slice  # the whole chunk
    todo: dict[str, np.ndarray]  # teacher key -> absolute rows to compute
    retry: np.ndarray  # rows with a ledger entry that are recomputed (cleared when they succeed)

    @property
    def decode_rows(self) -> np.ndarray:
        return np.unique(np.concatenate(list(self.todo.values())))


def plan_chunks(store: "Store", keys: Sequence[str], chunks: Sequence[slice], retry_failed: bool) -> list[ChunkPlan]:
    """Chunks with work left: rows not done (and, with ``retry_failed``, rows that failed).

    A failed row that no teacher of the run has done was recorded by a run killed before the
    chunk's done flags: it is retried like ``retry_failed`` rows, so that its entry is cleared
    if it succeeds now (the ledger is written first, see StoreWriter._commit).
    """
    failed = np.asarray(store.failure_rows(), dtype=np.int64)
    plans = []
    for rows in chunks:
        todo: dict[str, np.ndarray] = {}
        in_chunk = failed[(failed >= rows.start) & (failed < rows.stop)]
        done = {key: np.asarray(store.teacher(key).done[rows], dtype=bool) for key in keys}
        undone_by_all = np.logical_and.reduce([~d for d in done.values()]) if done else np.zeros(0, bool)
        retry = in_chunk if retry_failed else in_chunk[undone_by_all[in_chunk - rows.start]]
        for key in keys:
            need = np.union1d(np.flatnonzero(~done[key]) + rows.start, retry)
            if need.size:
                todo[key] = need
        if todo:
            plans.append(ChunkPlan(rows, todo, retry))
    return plans


def decode_tasks(plans: Sequence[ChunkPlan], manifest: "Manifest", modality_of: dict[str, str]) -> list[ClipTask]:
    tasks = []
    for plan in plans:
        wants: dict[int, set[str]] = collections.defaultdict(set)
        for key, rows in plan.todo.items():
            for row in rows:
                wants[int(row)].add(modality_of[key])
        for row in sorted(wants):
            rec = manifest.records[row]
            tasks.append(ClipTask(row, rec.path, rec.start, rec.end,
                                  audio="audio" in wants[row], image="image" in wants[row]))  # fmt: skip
    return tasks


def decoded_chunks(pool: DecodePool, plans: Sequence[ChunkPlan]) -> Iterator[tuple[ChunkPlan, list[DecodedClip]]]:
    """Group the pool's out-of-order results into complete chunks (in completion order)."""
    by_start = {p.rows.start: p for p in plans}
    need = {p.rows.start: len(p.decode_rows) for p in plans}
    owner = {int(row): p.rows.start for p in plans for row in p.decode_rows}
    got: dict[int, list[DecodedClip]] = collections.defaultdict(list)
    for _ in range(sum(need.values())):
        clip = pool.get()
        start = owner[clip.row]
        got[start].append(clip)
        if len(got[start]) == need[start]:
            yield by_start[start], sorted(got.pop(start), key=lambda c: c.row)
