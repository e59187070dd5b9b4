"""FAISS indexes over L2-normalised embeddings: build, save, load.

The pieces, one module each:

- :mod:`ccl_cache.search.index_types`: :class:`IndexConfig` and the index types
  (:data:`~ccl_cache.search.index_types.INDEX_TYPES`: flat, ivf, hnsw, ivfpq, factory strings);
- :mod:`ccl_cache.search.vector_index`: :class:`VectorIndex` (search by cosine, answers as store
  rows) and its placement on a FAISS GPU;
- :mod:`ccl_cache.search.calibrate`: the IVF nprobe calibrated at build time;
- :mod:`ccl_cache.search.sidecar`: the sidecar ``index.json`` (:class:`IndexMeta`) and the checks
  that an index belongs to a store;
- :mod:`ccl_cache.search.gallery`: a store's vectors, and indexing them (``ccl-cache index``);
- this module: :func:`build_index`, :func:`save_index`, :func:`load_index`.

An index directory's two files, ``index.faiss`` and ``index.json``, are written to temporary names
and moved into place with ``os.replace``; the sidecar holds the index file's SHA-256, so a
truncated or swapped file is refused on load instead of answering wrongly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss
import numpy as np

from ccl_cache.errors import CclCacheError, ConfigError, IndexMismatchError
from ccl_cache.fileio import atomic_path, sha256_file
from ccl_cache.search.calibrate import calibrate_nprobe
from ccl_cache.search.exact import l2_normalize
from ccl_cache.search.index_types import IndexConfig, IndexSpec, resolve_spec
from ccl_cache.search.sidecar import (
    INDEX_FILE,
    META_FILE,
    IndexMeta,
    check_store,
    source_state,
    store_fingerprint,
)
from ccl_cache.search.vector_index import VectorIndex, _place, _set_search_params

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def _check_vectors(vectors: Any) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"vectors must be a non-empty 2-D (n, dim) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError("vectors contain NaN or infinite values; drop those rows before indexing")
    return arr


def _train_and_add(index: faiss.Index, x: np.ndarray, config: IndexConfig, progress: Progress | None) -> None:
    if not index.is_trained:
        sample = x
        if len(x) > config.train_size:
            rng = np.random.default_rng(config.seed)
            sample = x[np.sort(rng.choice(len(x), config.train_size, replace=False))]
        index.train(sample)
    for lo in range(0, len(x), config.batch_size):
        index.add(x[lo:lo + config.batch_size])
        if progress is not None:
            progress(min(lo + config.batch_size, len(x)), len(x))


def build_index(vectors: Any, config: IndexConfig = IndexConfig(), *, rows: Any | None = None,
                clip_ids: Sequence[str] | None = None, source: str = "", split: str = "",
                store: Any | None = None, progress: Progress | None = None) -> VectorIndex:
    """Build an index over ``vectors`` (n, d); row ``i`` is store row ``rows[i]`` (default ``i``).

    ``store`` (an open :class:`~ccl_cache.store.Store`, optional) is recorded by path and
    fingerprint so :func:`load_index` can refuse an index built from another store. An ``ivf`` /
    ``ivfpq`` index built without ``config.nprobe`` gets its nprobe from :func:`calibrate_nprobe`
    (recorded in ``meta.calibration``; its notes, e.g. a target not reached, in ``notes``).
    """
    t0 = time.perf_counter()
    x = l2_normalize(_check_vectors(vectors))
    n, d = x.shape
    row_ids = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    ids = tuple(str(c) for c in clip_ids) if clip_ids is not None else ()
    if len(row_ids) != n or (ids and len(ids) != n):
        raise ConfigError(f"{n} vectors but {len(row_ids)} rows and {len(ids)} clip ids: give one per vector")
    spec = resolve_spec(config, n, d)
    try:
        cpu_index = faiss.index_factory(d, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        # FAISS prefixes the reason with the C++ function and source line that raised it.
        reason = str(exc).strip().splitlines()[0].rpartition(": ")[2] or str(exc)
        raise ConfigError(f"FAISS cannot build {spec.factory!r} for d={d}: {reason}; see the FAISS index-factory "
                          "syntax (e.g. factory:IVF256,Flat or factory:HNSW32)") from None
    notes = list(spec.notes)
    index, on_gpu = _place(cpu_index, spec, config.device, notes)
    try:
        _train_and_add(index, x, config, progress)
    except RuntimeError as exc:
        raise ConfigError(f"FAISS failed to train/fill {spec.factory!r} on {n} vectors: {exc}; "
                          "use fewer IVF lists (nlist) or a flat index for small galleries") from None
    nprobe, calibration = spec.nprobe, None
    if spec.calibrate and spec.nlist is not None:
        nprobe, calibration = calibrate_nprobe(index, on_gpu, x, spec.nlist, config, notes,
                                               lossy=",PQ" in spec.factory)
    _set_search_params(index, on_gpu, nprobe, spec.ef_search)
    meta = IndexMeta(
        index_type=config.index_type, factory=spec.factory, dim=d, count=n, rows=tuple(row_ids.tolist()),
        clip_ids=ids, source=source, split=split,
        # Absolute: `retrieve` finds the store from any folder (a relative path named the folder
        # the index was built from, or another store of the same name).
        store_path=os.path.abspath(store.path) if store is not None else None,
        store_fingerprint=store_fingerprint(store) if store is not None else None,
        source_state=source_state(store, source) if store is not None else None,
        nprobe=nprobe, ef_search=spec.ef_search, calibration=calibration,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), build_seconds=round(time.perf_counter() - t0, 3),
        config=asdict(config),
    )
    for note in notes:
        log.warning(note)
    return VectorIndex(index, meta, config.device, on_gpu, notes)


def save_index(vindex: VectorIndex, directory: str | Path, overwrite: bool = False) -> Path:
    """Write ``index.faiss`` and its sidecar ``index.json`` atomically into ``directory``."""
    out = Path(directory)
    check_output(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    cpu_index = faiss.index_gpu_to_cpu(vindex.index) if vindex.on_gpu else vindex.index
    with atomic_path(out / INDEX_FILE) as tmp_index:
        faiss.write_index(cpu_index, str(tmp_index))
        meta = replace(vindex.meta, index_sha256=sha256_file(tmp_index), faiss_version=faiss.__version__)
        with open(tmp_index, "rb+") as fh:
            os.fsync(fh.fileno())  # now, so that the two files are moved in back to back
        # The sidecar is moved into place first: a crash before the index follows leaves a
        # sidecar whose SHA-256 does not match, which load_index refuses and check_output
        # lets the same command replace.
        with atomic_path(out / META_FILE) as tmp_meta:
            tmp_meta.write_text(meta.to_json(), encoding="utf-8")
    vindex.meta = meta
    return out


def _read_meta(directory: Path) -> IndexMeta:
    for name in (INDEX_FILE, META_FILE):
        if not (directory / name).is_file():
            raise IndexMismatchError(f"{directory}: missing {name}; this is not a ccl-cache index "
                                     "directory (build one with `ccl-cache index`)")
    return IndexMeta.from_json((directory / META_FILE).read_text(encoding="utf-8"), directory / META_FILE)


def _read_faiss(path: Path, meta: IndexMeta, verify: bool) -> faiss.Index:
    if verify and meta.index_sha256 and sha256_file(path) != meta.index_sha256:
        raise IndexMismatchError(f"{path}: SHA-256 differs from its sidecar (truncated, corrupted or "
                                 "replaced); rebuild the index with `ccl-cache index --overwrite`")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        other = (f"; it was written by FAISS {meta.faiss_version}, this is FAISS {faiss.__version__}"
                 if meta.faiss_version != faiss.__version__ else "")
        raise IndexMismatchError(f"{path}: FAISS cannot read it ({str(exc).splitlines()[0]}){other}; "
                                 "rebuild the index") from None
    if index.ntotal != meta.count or index.d != meta.dim or len(meta.rows) != meta.count:
        raise IndexMismatchError(f"{path}: holds {index.ntotal} vectors of dim {index.d}, its sidecar says "
                                 f"{meta.count} of dim {meta.dim} ({len(meta.rows)} rows); rebuild the index")
    if meta.clip_ids and len(meta.clip_ids) != meta.count:
        raise IndexMismatchError(f"{path}: sidecar lists {len(meta.clip_ids)} clip ids for {meta.count} vectors")
    return index


def load_index(directory: str | Path, store: Any | None = None, device: str = "cpu",
               verify: bool = True) -> VectorIndex:
    """Load an index directory, refusing anything that could answer wrongly.

    Checks: both files present; sidecar format; the index file's SHA-256 (``verify``); FAISS can
    read it; ``ntotal``/``d`` agree with the sidecar; and, when ``store`` (a Store or a path) is
    given, that the index was built from that store (fingerprint, row count, clip ids).
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    cpu_index = _read_faiss(directory / INDEX_FILE, meta, verify)
    if store is not None:
        if isinstance(store, (str, os.PathLike)):
            from ccl_cache.store import open_store

            with open_store(store) as opened:
                check_store(meta, opened, directory)
        else:
            check_store(meta, store, directory)
    notes: list[str] = []
    if meta.faiss_version.split(".")[0] != faiss.__version__.split(".")[0]:
        notes.append(f"index written by FAISS {meta.faiss_version}, reading with {faiss.__version__}")
    spec = IndexSpec(meta.factory, meta.nprobe, meta.ef_search, gpu_ok="HNSW" not in meta.factory)
    index, on_gpu = _place(cpu_index, spec, device, notes)
    _set_search_params(index, on_gpu, meta.nprobe, meta.ef_search)
    for note in notes:
        log.warning(note)
    return VectorIndex(index, meta, device, on_gpu, notes)


def check_output(directory: str | Path, overwrite: bool) -> None:
    """Fail before any work when ``directory`` already holds an index and ``overwrite`` is off."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; give a directory for the index")
    existing = [p for p in (out / INDEX_FILE, out / META_FILE) if p.exists()]
    if existing and not overwrite and not _unfinished_save(out):
        raise ConfigError(f"{existing[0]} already exists; pass overwrite=True (--overwrite) to replace it")


def _unfinished_save(out: Path) -> bool:
    """Whether ``out`` holds a sidecar whose index never followed (a save killed between the
    two moves): unusable, so the command that was interrupted may replace it."""
    try:
        meta = IndexMeta.from_json((out / META_FILE).read_text(encoding="utf-8"), out / META_FILE)
    except (OSError, CclCacheError):
        return False
    index = out / INDEX_FILE
    unfinished = bool(meta.index_sha256) and (not index.is_file() or sha256_file(index) != meta.index_sha256)
    if unfinished:
        log.warning("%s: an interrupted save (the index does not match its sidecar) is replaced", out)
    return unfinished
