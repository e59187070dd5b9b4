"""IVF nprobe calibration: the smallest nprobe reaching a target recall against exact search.

Calibration (``ivf`` / ``ivfpq`` without an explicit ``nprobe``), after the index is trained and
filled: ``min(256, n)`` gallery vectors drawn with ``IndexConfig.seed`` query the index at nprobe
1, 2, 4, ... (then ``nlist``); the first rung whose recall@10 against the exact inner-product
top-10 reaches ``IndexConfig.target_recall`` (0.95) becomes the default. Each query's own vector
is removed from both lists (it always finds itself, which would inflate recall). The ladder is
recorded in :attr:`ccl_cache.search.sidecar.IndexMeta.calibration`. How well IVF recalls depends
on the data's structure (clustered embeddings need few lists, structureless vectors many), so it
is measured, as FAISS's own AutoTune does, rather than fixed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faiss
import numpy as np

from ccl_cache.errors import ConfigError
from ccl_cache.search.index_types import IndexConfig
from ccl_cache.search.vector_index import _set_search_params

log = logging.getLogger(__name__)

CALIBRATION_QUERIES = 256     # gallery vectors used as calibration queries (fewer if n is smaller)
CALIBRATION_K = 10            # recall@k measured by the calibration


def nprobe_ladder(nlist: int) -> list[int]:
    """The nprobe values calibration tries, in order: 1, 2, 4, ... below ``nlist``, then ``nlist``.

    Doubling keeps the ladder short (log₂ nlist rungs) while landing within 2x of the smallest
    sufficient nprobe; ending at ``nlist`` (every list probed) makes the top rung exhaustive for a
    Flat IVF, so the target is reachable there (short only by ties at the k-th score).
    """
    ladder, value = [], 1
    while value < nlist:
        ladder.append(value)
        value *= 2
    ladder.append(max(1, nlist))
    return ladder


def _neighbours_without_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> list[list[int]]:
    """Each row's first ``k`` valid ids once the query's own id is removed.

    A calibration query is a gallery vector, which always finds itself: counting that hit would
    inflate recall. Removing the id wherever it appears (not just at rank 0) also handles a
    duplicate vector ranked ahead of it. Ids ``-1`` (an IVF probe that found too few) are misses.
    """
    return [[int(i) for i in row if i != me and i >= 0][:k] for row, me in zip(ids, self_ids)]


def _recall(found: list[list[int]], exact: list[list[int]], k: int) -> float:
    """Mean over queries of ``|found ∩ exact| / k`` (recall@k of the approximate lists)."""
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


def calibrate_nprobe(index: faiss.Index, on_gpu: bool, x: np.ndarray, nlist: int, config: IndexConfig,
                     notes: list[str], lossy: bool = False) -> tuple[int, dict[str, Any] | None]:
    """The smallest nprobe on :func:`nprobe_ladder` whose recall@10 reaches ``config.target_recall``.

    ``index`` is the trained, filled IVF index over the normalised gallery ``x``. Queries: ``min(256,
    n)`` gallery vectors drawn with ``config.seed``; ground truth: their exact inner-product top-k
    over ``x`` (``k = min(10, n - 1)``), the query's own id removed from both lists. Rungs are tried
    in increasing order and the first that reaches the target is kept: each rung is one search of
    256 queries, cheap next to training the IVF. When no rung reaches it (PQ codes are lossy; for
    a Flat IVF only ties can keep the top rung below 1), the rung with the best recall is kept and a
    note says so. ``lossy`` (PQ) picks the note's advice. Returns ``(nprobe, record)``; the record
    (for :attr:`IndexMeta.calibration`) is None when the gallery is too small to measure anything.
    """
    n = len(x)
    k = min(CALIBRATION_K, n - 1)
    if k < 1:  # a single vector: nothing to recall, and nlist is 1 anyway
        return 1, None
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(n, min(CALIBRATION_QUERIES, n), replace=False))
    queries = np.ascontiguousarray(x[sample])
    # Exact top-(k+1) by BLAS without copying the gallery into an IndexFlatIP; +1 leaves room for
    # the query itself, removed next.
    _, exact_ids = faiss.knn(queries, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    exact = _neighbours_without_self(exact_ids, sample, k)
    ladder: list[list[float]] = []
    for nprobe in nprobe_ladder(nlist):
        try:
            _set_search_params(index, on_gpu, nprobe, None)
            _, ids = index.search(queries, k + 1)
        except (RuntimeError, ConfigError) as exc:
            # FAISS GPU caps nprobe (2048 in recent versions); stop climbing rather than fail.
            notes.append(f"nprobe calibration stopped at nprobe {nprobe}: {str(exc).splitlines()[0]}")
            break
        recall = _recall(_neighbours_without_self(ids, sample, k), exact, k)
        ladder.append([nprobe, recall])
        if recall >= config.target_recall:
            break
    if not ladder:
        raise ConfigError(f"FAISS could not search the index at nprobe 1 during calibration ({notes[-1]}); "
                          "pass nprobe explicitly (--nprobe) or use --type flat")
    # Best recall, smallest nprobe among equals: the first rung reaching the target when one does.
    best_nprobe, best_recall = max(ladder, key=lambda rung: (rung[1], -rung[0]))
    reached = best_recall >= config.target_recall
    if not reached:
        advice = ("PQ codes lose it: use --type flat, or a larger pq_m (more bytes per vector)" if lossy
                  else "use --type flat for exact search")
        notes.append(f"nprobe calibration: recall@{k} reached only {best_recall:.3f} (at nprobe {int(best_nprobe)} of "
                     f"{nlist} lists) < target {config.target_recall}; {advice}")
    elif best_nprobe == nlist > 1 and not lossy:
        # Every list probed: the search is exhaustive, and slower than IndexFlatIP's GEMM (0.07x
        # on 10k random 512-d vectors in bench_retrieval.py), so the IVF buys nothing here.
        notes.append(f"nprobe calibration: recall@{k} {config.target_recall} needs all {nlist} IVF lists "
                     "(no cluster structure to exploit); --type flat is exact and faster")
    record = {"target_recall": config.target_recall, "recall": best_recall, "nprobe": int(best_nprobe), "k": k,
              "queries": int(len(sample)), "reached": reached, "ladder": [[int(p), r] for p, r in ladder],
              "seconds": round(time.perf_counter() - t0, 3)}
    log.info("nprobe calibration: recall@%d %.4f at nprobe %d (target %s, ladder %s)", k, best_recall,
             int(best_nprobe), config.target_recall, record["ladder"])
    return int(best_nprobe), record
