"""A store's embeddings as a gallery, and indexing them (what ``ccl-cache index`` runs).

:func:`collect_vectors` takes the clip vectors of one student run or one teacher for a split's
rows (teacher frames averaged over their valid frames; rows not extracted, masked or non-finite
left out and counted); :func:`index_store` builds an index over them
(:func:`ccl_cache.search.index.build_index`) and saves it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ccl_cache import hardware
from ccl_cache.errors import ConfigError
from ccl_cache.manifest import canonical_split, canonical_splits
from ccl_cache.search.index import Progress, build_index, check_output, save_index
from ccl_cache.search.index_types import IndexConfig
from ccl_cache.search.vector_index import VectorIndex
from ccl_cache.store.curation import gap_excluded
from ccl_cache.store.vectors import teacher_vectors


@dataclass(frozen=True)
class SourceVectors:
    """The vectors to index, taken from a store, and which store rows they are."""

    vectors: np.ndarray            # (n, D) float32
    rows: np.ndarray               # (n,) int64 store rows
    clip_ids: tuple[str, ...]
    source: str                    # "student:<run>" | "teacher:<modality>/<name>"
    split: str                     # a split name, or "all"
    excluded: dict[str, int]       # reason -> rows of the split left out


def resolve_run(store: Any, run_or_dir: str | Path) -> str:
    """A student run name from a name or a run directory (its summary.json ``run``, else its name).

    A run directory must be the one that wrote the store's ``/students/<run>`` (its recorded
    ``run_dir``): two runs of one name on two stores must never stand in for each other."""
    path = Path(run_or_dir)
    name = str(run_or_dir)
    if path.is_dir():
        name = path.resolve().name
        summary = path / "summary.json"
        if summary.is_file():
            try:
                name = str(json.loads(summary.read_text(encoding="utf-8")).get("run") or name)
            except (json.JSONDecodeError, AttributeError) as exc:
                raise ConfigError(f"{summary}: not a JSON object with a 'run' field ({exc}); fix or remove it") from None
    runs = store.student_runs()
    if name not in runs:
        raise ConfigError(f"{store.path}: no student run {name!r} (runs: {', '.join(runs) or 'none'}); "
                          "write its embeddings with `ccl-cache embed` first")
    recorded = store.student_attrs(name).get("run_dir")
    if path.is_dir() and recorded and Path(str(recorded)).resolve() != path.resolve():
        raise ConfigError(
            f"{store.path}: its student run {name!r} was written by {recorded}, not by {path.resolve()} (a run of "
            f"the same name, probably on another store); pass --run {recorded}, or write this run's embeddings "
            f"into this store under another name (`ccl-cache embed {path} --store {store.path} --run-name NAME`) "
            "and pass --run NAME"
        )
    return name


def split_rows(store: Any, split: str) -> np.ndarray:
    """The store rows of ``split`` (an alias such as "validation" too), or every row for "all"."""
    if split == "all":
        return np.arange(store.n, dtype=np.int64)
    # Aliases in any case name the same split as for the trainer ("validation" = "val").
    rows = np.flatnonzero(canonical_splits(store.clips.split) == canonical_split(split)).astype(np.int64)
    if rows.size == 0:
        raise ConfigError(f"{store.path}: no clips in split {split!r}; splits: "
                          f"{', '.join(sorted(set(np.asarray(store.clips.split).astype(str).tolist())))} (or 'all')")
    return rows


def collect_vectors(store: Any, *, run: str | None = None, teacher: str | None = None,
                    split: str = "train", exclude_gaps: float | None = None) -> SourceVectors:
    """The embeddings of one student run or one teacher for the rows of ``split`` (or "all").

    Teacher rows not extracted yet or masked (e.g. no audio) are left out and counted in
    ``excluded``; so are rows with non-finite values, and with ``exclude_gaps`` the clips whose
    stored gap score (``ccl-cache gaps``) is above it.
    """
    if (run is None) == (teacher is None):
        raise ConfigError("give exactly one source: a student run or a teacher key (modality/name)")
    rows = split_rows(store, split)
    gap_rows = 0
    if exclude_gaps is not None:
        gaps = gap_excluded(store, rows, exclude_gaps)
        rows, gap_rows = rows[~gaps], int(gaps.sum())
    if run is not None:
        vectors, keep, excluded = np.asarray(store.student(run), dtype=np.float32)[rows], np.ones(len(rows), bool), {}
        source = f"student:{run}"
    else:
        vectors, keep, excluded = teacher_vectors(store, str(teacher), rows)
        source = f"teacher:{teacher}"
    if exclude_gaps is not None:
        excluded[f"gap score > {exclude_gaps:g}"] = gap_rows
    rows = rows[keep]
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        excluded["non_finite"] = int((~finite).sum())
        vectors, rows = vectors[finite], rows[finite]
    if len(rows) == 0:
        raise ConfigError(f"{store.path}: {source} has no usable rows in split {split!r} "
                          f"(excluded: {excluded}); extract or embed them first")
    clip_ids = tuple(str(c) for c in np.asarray(store.clips.id)[rows])
    return SourceVectors(np.ascontiguousarray(vectors, dtype=np.float32), rows, clip_ids, source, split, excluded)


def index_store(store: Any, out: str | Path, config: IndexConfig = IndexConfig(), *, run: str | None = None,
                teacher: str | None = None, split: str = "train", overwrite: bool = False,
                progress: Progress | None = None) -> tuple[VectorIndex, SourceVectors]:
    """Collect a store's vectors (:func:`collect_vectors`), build the index and save it to ``out``.

    ``store``: an open :class:`~ccl_cache.store.Store`, or its path (opened read-only here).
    ``run``: a student run's name or its run directory (:func:`resolve_run`).
    """
    check_output(out, overwrite)
    hardware.resolve_device(config.device)  # before reading the store
    if isinstance(store, (str, os.PathLike)):
        from ccl_cache.store import open_store

        with open_store(store) as opened:
            return index_store(opened, out, config, run=run, teacher=teacher, split=split, overwrite=overwrite,
                               progress=progress)
    run = resolve_run(store, run) if run is not None else None
    src = collect_vectors(store, run=run, teacher=teacher, split=split, exclude_gaps=config.exclude_gaps)
    vindex = build_index(src.vectors, config, rows=src.rows, clip_ids=src.clip_ids, source=src.source,
                         split=split, store=store, progress=progress)
    save_index(vindex, out, overwrite)
    return vindex, src
