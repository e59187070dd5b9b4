"""Search: FAISS indexes over student or teacher embeddings, exact search, retrieval by example
(``ccl-cache retrieve``) and the offline retrieval benchmark.

Modules: ``index_types`` (:class:`IndexConfig`, the index types), ``vector_index``
(:class:`VectorIndex`), ``calibrate`` (IVF nprobe), ``sidecar`` (:class:`IndexMeta`, store checks),
``index`` (build, save, load), ``gallery`` (a store's vectors; :func:`index_store`), ``exact``
(exact top-k), ``retrieve`` (``ccl-cache retrieve``) and ``benchmark`` (``ccl-cache benchmark
retrieval``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ccl_cache.search.exact import EXACT_BACKENDS, ScreenedGallery, choose_exact_backend, l2_normalize, topk_exact
from ccl_cache.search.gallery import SourceVectors, collect_vectors, index_store, resolve_run
from ccl_cache.search.index import build_index, load_index, save_index
from ccl_cache.search.index_types import INDEX_TYPES, IndexConfig
# The function ``retrieve`` stays in its module: exported here it would hide the submodule
# ``ccl_cache.search.retrieve`` (and break `import ccl_cache.search.retrieve as m`).
from ccl_cache.search.retrieve import RetrieveConfig, RetrieveResult
from ccl_cache.search.sidecar import IndexMeta, check_store
from ccl_cache.search.vector_index import VectorIndex

if TYPE_CHECKING:
    from ccl_cache.search.benchmark import RetrievalBenchConfig, RetrievalBenchResult, run_benchmark

# The benchmark loads on first access: it imports ccl_cache.evaluate, which imports
# ccl_cache.search.exact (and so this package) when evaluate is imported first.
_LAZY = {"RetrievalBenchConfig", "RetrievalBenchResult", "run_benchmark"}

__all__ = [
    "EXACT_BACKENDS", "INDEX_TYPES", "IndexConfig", "IndexMeta", "RetrievalBenchConfig", "RetrievalBenchResult",
    "RetrieveConfig", "RetrieveResult", "ScreenedGallery", "SourceVectors", "VectorIndex", "build_index",
    "check_store", "choose_exact_backend", "collect_vectors", "index_store", "l2_normalize", "load_index",
    "resolve_run", "run_benchmark", "save_index", "topk_exact",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ccl_cache.search' has no attribute {name!r}")
    value = getattr(importlib.import_module("ccl_cache.search.benchmark"), name)
    globals()[name] = value  # later lookups skip this hook
    return value
