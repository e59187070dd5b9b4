"""Retrieval speed and accuracy of each index type against exact search, in one run.

For each gallery size and data kind (uniform random unit vectors, and "clustered" vectors drawn
around 1000 Gaussian centres, which behave like class-structured embeddings), it measures:

- exact search, in queries/s: FAISS ``IndexFlatIP`` (the baseline), float32 torch matmul + top-k
  (``ccl_cache.search.exact.topk_exact``) and the bfloat16-screened exact search
  (``ccl_cache.search.exact.ScreenedGallery``: fraction of its rows identical to float32 torch's, and of
  queries that needed its fallback), and which path the library chooses on this machine;
- every approximate index type (``ivf``, ``hnsw``, ``ivfpq``) at a sweep of its search parameter
  (nprobe / efSearch): build seconds, queries/s, the speed-up over ``IndexFlatIP`` measured in
  the same run, and recall@k against the exact top-k (|ANN ∩ exact| / k);
- for ``ivf`` / ``ivfpq``, what a user gets by default (``"<type>_default"`` next to the sweep):
  the nprobe the library calibrates at build time (``ccl_cache.search.calibrate.calibrate_nprobe``, on
  gallery vectors), the calibration's seconds, and queries/s, speed-up and recall@k measured on
  this benchmark's own held-out queries, not the calibration sample.

Prints one JSON document (and writes it to ``--out`` if given). Example::

    python benchmarks/bench_retrieval.py --sizes 10000,100000 --out bench_retrieval.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any, Callable

import faiss
import numpy as np
import torch

from ccl_cache.search.exact import ScreenedGallery, choose_exact_backend, l2_normalize, topk_exact
from ccl_cache.search.index import build_index
from ccl_cache.search.index_types import IndexConfig

SWEEPS = {"ivf": ("nprobe", (1, 4, 8, 16, 32, 64)), "ivfpq": ("nprobe", (4, 16, 64)),
          "hnsw": ("ef_search", (16, 32, 64, 128, 256))}


def make_data(kind: str, n: int, n_queries: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(gallery (n, dim), queries (n_queries, dim)), both L2-normalised float32."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        gallery = rng.standard_normal((n, dim), dtype=np.float32)
        queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        # Noise 0.75 per coordinate: same-cluster cosine ~0.64, other clusters ~0, like class
        # structure in trained embeddings; queries are fresh draws from the same clusters.
        gallery = centres[rng.integers(0, clusters, n)] + 0.75 * rng.standard_normal((n, dim), dtype=np.float32)
        queries = centres[rng.integers(0, clusters, n_queries)] + 0.75 * rng.standard_normal((n_queries, dim), dtype=np.float32)
    return l2_normalize(gallery), l2_normalize(queries)


def timed(fn: Callable[[], Any], repeats: int = 2) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls (after the first, which also warms caches) and its result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def recall_vs_exact(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, exact)]))


def bench_exact(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[dict[str, Any], np.ndarray]:
    nq = len(queries)
    t_torch, (_, exact) = timed(lambda: topk_exact(queries, gallery, k, assume_normalized=True))
    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    t_faiss, (_, ids) = timed(lambda: flat.search(queries, k))
    screened = ScreenedGallery(gallery)
    t_screened, (_, screened_rows) = timed(lambda: screened.search(queries, k))
    calls = 3  # timed() calls it once to warm up and twice timed
    return ({"torch_matmul_topk_qps": nq / t_torch, "faiss_flatip_qps": nq / t_faiss,
             "screened_bf16_qps": nq / t_screened,
             "torch_over_faiss": t_faiss / t_torch, "screened_over_faiss": t_faiss / t_screened,
             "agreement": recall_vs_exact(ids, exact),
             # identical rows in identical order to float32 torch (the screen is exact)
             "screened_identical": float((screened_rows == exact).mean()),
             "screened_fallback_fraction": screened.fallbacks / (calls * nq),
             "library_choice": choose_exact_backend(False, torch.device("cpu"), gallery.shape[1])}, exact)


def bench_ann(index_type: str, gallery: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int,
              flat_qps: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the sweep of ``index_type``'s search parameter, its calibrated default or None).

    ``build_s`` includes the nprobe calibration (``calibration_s`` in the default's entry).
    """
    t0 = time.perf_counter()
    vindex = build_index(gallery, IndexConfig(index_type=index_type, device="cpu"))
    build_s = time.perf_counter() - t0
    default = None
    calibration = vindex.meta.calibration
    if calibration is not None:
        # Measured before the sweep changes nprobe: the index as build_index left it.
        t, (_, rows) = timed(lambda: vindex.search(queries, k))
        qps = len(queries) / t
        default = {"factory": vindex.meta.factory, "nprobe": vindex.meta.nprobe,
                   "calibration_s": calibration["seconds"], "calibration_recall": calibration["recall"],
                   "calibration_ladder": calibration["ladder"], "target_recall": calibration["target_recall"],
                   "qps": qps, "speedup_vs_flatip": qps / flat_qps, f"recall@{k}": recall_vs_exact(rows, exact)}
    param, values = SWEEPS[index_type]
    points = []
    for value in values:
        vindex.set_search_params(**{param: value})
        t, (_, rows) = timed(lambda: vindex.search(queries, k))
        qps = len(queries) / t
        points.append({param: value, "qps": qps, "speedup_vs_flatip": qps / flat_qps,
                       f"recall@{k}": recall_vs_exact(rows, exact)})
    return {"factory": vindex.meta.factory, "build_s": build_s, "sweep": points}, default


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for kind in args.data.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            gallery, queries = make_data(kind, n, args.queries, args.dim, args.clusters, args.seed)
            exact_stats, exact = bench_exact(gallery, queries, args.k)
            entry: dict[str, Any] = {"data": kind, "n": n, "exact": exact_stats, "ann": {}}
            for index_type in filter(None, args.types.split(",")):
                sweep, default = bench_ann(index_type, gallery, queries, exact, args.k,
                                           exact_stats["faiss_flatip_qps"])
                entry["ann"][index_type] = sweep
                if default is not None:
                    entry["ann"][f"{index_type}_default"] = default
                print(f"[bench] {kind} n={n} {index_type} done", file=sys.stderr, flush=True)
            results.append(entry)
    return {
        "benchmark": "retrieval", "dim": args.dim, "queries": args.queries, "k": args.k,
        "faiss": faiss.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(), "machine": platform.processor() or platform.machine(),
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,200000", help="gallery sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", default="random,clustered", help="random and/or clustered")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--types", default="ivf,hnsw,ivfpq", help="approximate index types to sweep (\"\": exact only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for torch and FAISS (0: library default). On a shared, busy "
                             "machine use 1: OpenMP spin-waiting makes oversubscribed FAISS 10x slower")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    report = run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        from ccl_cache.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
