"""An index directory's sidecar ``index.json`` (:class:`IndexMeta`) and the checks that an index
belongs to a store.

An index lives in a directory: ``index.faiss`` (FAISS's own format) and ``index.json``, the
sidecar :class:`IndexMeta` (what was indexed, from which store, how). The sidecar holds the index
file's SHA-256, so a truncated or swapped file is refused on load instead of answering wrongly
(:func:`ccl_cache.search.index.load_index`); :func:`check_store` refuses an index built from
another store, or from a source that changed in the store since.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ccl_cache.errors import IndexMismatchError
from ccl_cache.fileio import to_plain
from ccl_cache.store.schema import teacher_path

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
INDEX_FORMAT = "ccl-cache-index"
INDEX_FORMAT_VERSION = 1


def store_fingerprint(store: Any) -> dict[str, Any]:
    """What identifies a store's rows: root ``manifest_sha256`` + ``created`` + row count."""
    attrs = dict(store.attrs)
    return {"manifest_sha256": attrs.get("manifest_sha256"), "created": attrs.get("created"), "n": int(store.n)}


def source_state(store: Any, source: str) -> dict[str, Any] | None:
    """What the store's vectors of ``source`` are now, so a stale index can be told apart.

    ``teacher:<key>``: its fingerprint, when its arrays were created and how many rows are done
    (extraction went on after the index was built: the index holds fewer rows than the store);
    ``student:<run>``: the run's attributes (creation time, checkpoint, epoch...), which change when
    its embeddings are rewritten. None for other sources (nothing to compare). Cheap: no embedding
    is read.
    """
    kind, _, name = source.partition(":")
    if kind == "teacher" and name in store.teacher_keys():
        teacher = store.teacher(name)
        done = int(np.count_nonzero(np.asarray(teacher.done[:], dtype=bool)))
        created = store.get_attrs(teacher_path(name)).get("created")
        return json.loads(json.dumps({"fingerprint": teacher.fingerprint, "created": created, "done": done},
                                     default=str))  # as the sidecar will hold it
    if kind == "student" and name in store.student_runs():
        return json.loads(json.dumps(store.student_attrs(name), default=str))
    return None


@dataclass(frozen=True)
class IndexMeta:
    """The sidecar ``index.json``: what an index holds and how it was built."""

    index_type: str
    factory: str
    dim: int
    count: int
    rows: tuple[int, ...]                 # store row of each FAISS id
    clip_ids: tuple[str, ...] = ()        # clip id of each FAISS id ("" when unknown)
    source: str = ""                      # "student:<run>" | "teacher:<modality>/<name>" | free text
    split: str = ""
    store_path: str | None = None
    store_fingerprint: dict[str, Any] | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    metric: str = "inner_product"
    normalized: bool = True
    faiss_version: str = faiss.__version__
    index_sha256: str = ""
    created: str = ""
    build_seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    source_state: dict[str, Any] | None = None  # source_state(store, source) when built (None: not checked)
    # How the build-time nprobe was chosen (calibrate_nprobe's record); None when it was given, for
    # non-IVF types, and in sidecars written before calibration existed (they load unchanged).
    # It stays as built if nprobe is later changed with set_search_params; its "nprobe" says the pick.
    calibration: dict[str, Any] | None = None
    format: str = INDEX_FORMAT
    format_version: int = INDEX_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(to_plain(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path) -> "IndexMeta":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IndexMismatchError(f"{path}: not valid JSON ({exc}); rebuild the index") from None
        if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
            raise IndexMismatchError(f"{path}: not a ccl-cache index sidecar (format != {INDEX_FORMAT!r})")
        if int(raw.get("format_version", 0)) > INDEX_FORMAT_VERSION:
            raise IndexMismatchError(f"{path}: sidecar format {raw['format_version']} is newer than this "
                                     f"ccl-cache reads ({INDEX_FORMAT_VERSION}); upgrade ccl-cache")
        known = {f for f in cls.__dataclass_fields__}
        try:
            kwargs = {k: v for k, v in raw.items() if k in known}
            kwargs["rows"] = tuple(int(r) for r in kwargs["rows"])
            kwargs["clip_ids"] = tuple(str(c) for c in kwargs.get("clip_ids", ()))
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexMismatchError(f"{path}: sidecar is missing or has malformed fields ({exc}); rebuild the index") from None


def check_store(meta: IndexMeta, store: Any, where: Path) -> None:
    """Refuse an index whose rows do not belong to ``store`` (fingerprint, row count, clip ids)."""
    fp = store_fingerprint(store)
    if meta.store_fingerprint is None:
        raise IndexMismatchError(f"{where}: index was built without a store, so it cannot be checked "
                                 "against one; rebuild it from the store with `ccl-cache index`")
    diff = sorted(k for k in set(fp) | set(meta.store_fingerprint) if fp.get(k) != meta.store_fingerprint.get(k))
    if diff:
        raise IndexMismatchError(f"{where}: built from store {meta.store_path} but {store.path} differs in "
                                 f"{', '.join(diff)}; rebuild the index from this store (--overwrite)")
    rows = np.asarray(meta.rows, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= fp["n"]):
        raise IndexMismatchError(f"{where}: index rows reach {rows.max()} but the store has {fp['n']} rows")
    if meta.clip_ids and len(rows):
        store_ids = np.asarray(store.clips.id)[rows].astype(str)
        if not np.array_equal(store_ids, np.asarray(meta.clip_ids, dtype=str)):
            raise IndexMismatchError(f"{where}: clip ids differ from store {store.path}; rebuild the index")
    _check_source_state(meta, store, where)


def _check_source_state(meta: IndexMeta, store: Any, where: Path) -> None:
    """Refuse an index whose source changed in the store after it was built (stale: missing rows)."""
    if meta.source_state is None:
        return  # built without a store, or by a version that did not record it
    now = source_state(store, meta.source)
    if now == meta.source_state:
        return
    if now is None:
        raise IndexMismatchError(f"{where}: built from {meta.source}, which store {store.path} no longer holds; "
                                 "rebuild the index from what it holds")
    keys = [k for k in sorted(set(now) | set(meta.source_state)) if now.get(k) != meta.source_state.get(k)]
    diff = "; ".join(f"{k} differs" if isinstance(now.get(k), dict) else
                     f"{k}: {meta.source_state.get(k)!r} (index) vs {now.get(k)!r} (store)" for k in keys)
    raise IndexMismatchError(f"{where}: {meta.source} changed in store {store.path} since the index was built "
                             f"({diff}), so the index misses or misplaces vectors; rebuild it "
                             "(`ccl-cache index ... --overwrite`)")
