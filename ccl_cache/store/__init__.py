"""The embedding store: one reading/writing API over two backends, Zarr v3 and HDF5.

Schema v1 (README.md, "The store"): root provenance attributes, ``/clips`` (one row per manifest
record), ``/classes``, ``/teachers/<modality>/<name>/{embedding,times,mask,done}``, ``/failures``
(per-row ledger) and ``/students/<run>/embedding``. Pick the backend by the path's suffix:
``*.zarr`` (a directory; shards may write one store concurrently) or ``*.h5`` / ``*.hdf5`` (one
file, one writer; shards write separate files joined by :func:`merge_stores`).

Typical use::

    store = create_store("cache.zarr", manifest, chunk_rows=256)
    with store.acquire_lease():
        store.create_teacher("audio/small_audio", dim=128, frames=None, fingerprint=teacher.fingerprint())
        for rows in store.todo("audio/small_audio"):
            store.write_rows("audio/small_audio", rows, embedding, times, mask)
    emb, times, mask = open_store("cache.zarr").read_rows("audio/small_audio", [5, 1, 5])
"""

from __future__ import annotations

from ccl_cache.store import hdf5_backend as _hdf5_backend  # noqa: F401  (registers "hdf5")
from ccl_cache.store import zarr_backend as _zarr_backend  # noqa: F401  (registers "zarr")
from ccl_cache.store.backend import BACKENDS, Backend, backend_for_path
from ccl_cache.store.base import Store
from ccl_cache.store.views import ClipTable, LazyArray, TeacherArrays
from ccl_cache.store.health import summarize, teacher_health
from ccl_cache.store.lease import Lease, LeaseInfo, StaleLeaseWarning, acquire_lease, lease_dir
from ccl_cache.store.merge import merge_stores
from ccl_cache.store.open import create_store, open_store
from ccl_cache.store.schema import FORMAT, SCHEMA_VERSION, parse_shard, shard_slices
from ccl_cache.store.verify import Damage, VerifyReport, repair_store, verify_store

__all__ = [
    "BACKENDS", "Backend", "ClipTable", "Damage", "FORMAT", "LazyArray", "Lease", "LeaseInfo", "SCHEMA_VERSION",
    "StaleLeaseWarning", "Store", "TeacherArrays", "VerifyReport", "acquire_lease", "backend_for_path",
    "create_store", "lease_dir", "merge_stores", "open_store", "parse_shard", "repair_store", "shard_slices",
    "summarize", "teacher_health", "verify_store",
]
