"""Index types: how an :class:`IndexConfig` becomes a FAISS recipe (:class:`IndexSpec`).

Index types (:data:`INDEX_TYPES`; defaults chosen from ``benchmarks/bench_retrieval.py``):

- ``"flat"``: exact (``IndexFlatIP``). Its searches take the faster exact path for the device
  (:func:`ccl_cache.search.exact.choose_exact_backend`): FAISS-GPU when present; torch matmul + top-k on
  a CUDA torch device; on CPU whichever of FAISS and the bfloat16-screened exact search
  (:class:`ccl_cache.search.exact.ScreenedGallery`, which keeps a bfloat16 copy of the vectors, +50 %
  memory, and a screen buffer of up to 128 MiB) measured faster on this machine.
- ``"ivf"``: ``IVF{nlist},Flat``, ``nlist ≈ 4·√n`` capped so every list has ≥ 39 training points;
  ``nprobe`` calibrated on the data at build time (:mod:`ccl_cache.search.calibrate`) unless given.
- ``"hnsw"``: ``HNSW32,Flat``; ``efSearch`` 128 by default.
- ``"ivfpq"``: ``IVF{nlist},PQ{m}x{nbits}``, ``m`` dividing ``d`` (``d/8`` one-byte codes by default:
  64 bytes per 512-d vector), for galleries too big for RAM uncompressed: in the benchmark its
  top-10 overlapped the exact top-10 only 0.83 (10k) / 0.43 (100k) on clustered data.
- ``"factory:<string>"``: any FAISS index-factory string, e.g. ``factory:OPQ16,IVF256,PQ16``
  (search parameters as given; no calibration).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Callable

from ccl_cache.errors import ConfigError
from ccl_cache.registry import Registry

MIN_POINTS_PER_LIST = 39  # FAISS k-means warns below 39 training points per centroid
# IVF nprobe default: calibrated per index (see ccl_cache.search.calibrate), not fixed. A fixed value cannot
# serve every size: in benchmarks/bench_retrieval.py (d=512, 1000 queries, 1 thread, clustered
# data) nprobe 16 gave recall@10-vs-exact 0.94 at 10k vectors (IVF256; 32 was needed for 0.96)
# but at 200k (IVF1789) nprobe 4 already gave 0.9993 at 14.3x IndexFlatIP while 16 ran at 5.3x.
# Calibrated (target 0.95), the same benchmark's held-out queries got: 200k clustered nprobe 2,
# recall 0.983 at 19.9-21.6x; 10k clustered nprobe 32, 0.960 at 0.66x (exact search wins there);
# 10k random nprobe 256 = nlist, 1.0 at 0.07x (a note then advises a flat index).
DEFAULT_TARGET_RECALL = 0.95  # recall@10 vs exact the calibrated nprobe must reach
# HNSW efSearch 128 kept 0.997 / 0.994 / 0.971 at 0.2x / 2x / 4.1x IndexFlatIP (10k / 100k /
# 200k vectors; efSearch 64 fell to 0.93 at 200k).
DEFAULT_EF_SEARCH = 128


@dataclass(frozen=True)
class IndexConfig:
    """How to build an index. ``None`` means "choose from the data" (see the module docstring)."""

    index_type: str = "flat"        # a name in INDEX_TYPES or "factory:<FAISS factory string>"
    nlist: int | None = None        # IVF lists
    nprobe: int | None = None       # IVF lists visited per query (None: calibrated, see target_recall)
    ef_search: int | None = None    # HNSW candidate-list size at search time
    hnsw_m: int = 32                # HNSW neighbours per node
    pq_m: int | None = None         # PQ sub-vectors (must divide the dimension)
    pq_nbits: int | None = None     # bits per PQ code (8 unless the gallery is small)
    device: str = "auto"            # "auto" | "cpu" | "cuda" | "cuda:N"
    train_size: int = 200_000       # training sample (uniform, seeded) for IVF / PQ
    batch_size: int = 65_536        # vectors added per step (progress granularity)
    seed: int = 0                   # training sample and calibration queries
    target_recall: float = DEFAULT_TARGET_RECALL  # recall@10 the calibrated IVF nprobe must reach
    exclude_gaps: float | None = None  # leave out gallery clips whose gap score (ccl-cache gaps) is above it


@dataclass(frozen=True)
class IndexSpec:
    """A resolved FAISS recipe: factory string, search-time parameters, GPU support."""

    factory: str
    nprobe: int | None = None
    ef_search: int | None = None
    gpu_ok: bool = True
    notes: tuple[str, ...] = ()
    nlist: int | None = None        # IVF lists (the top rung of the nprobe calibration ladder)
    calibrate: bool = False         # choose nprobe from the data after the index is filled


INDEX_TYPES: Registry[Callable[[int, int, IndexConfig], IndexSpec]] = Registry("index type")


def choose_nlist(n: int) -> int:
    """``round(4·√n)`` IVF lists, capped so each list gets ≥ 39 training points (at least 1)."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // MIN_POINTS_PER_LIST))


def choose_pq_m(d: int) -> int:
    """Sub-vectors for PQ: the divisor of ``d`` closest to ``d/8`` (8 dims per 1-byte code)."""
    divisors = [m for m in range(1, d + 1) if d % m == 0]
    return min(divisors, key=lambda m: (abs(m - d / 8), -m))


def choose_pq_nbits(n: int) -> int:
    """8 bits per code unless ``n`` is too small to train 2^nbits centroids (≥ 39 points each)."""
    return int(min(8, max(1, math.floor(math.log2(max(n, 2) / MIN_POINTS_PER_LIST)))))


@INDEX_TYPES.register("flat")
def _flat(n: int, d: int, config: IndexConfig) -> IndexSpec:
    return IndexSpec("Flat")


def _nprobe(config: IndexConfig, nlist: int) -> tuple[int | None, tuple[str, ...]]:
    """The asked nprobe capped at nlist (asking for more than exists is noted); None: calibrate."""
    if config.nprobe is None:
        return None, ()
    nprobe = min(config.nprobe, nlist)
    if config.nprobe > nlist:
        return nprobe, (f"nprobe {config.nprobe} > nlist {nlist}: searching all {nlist} lists",)
    return nprobe, ()


def _nlist(config: IndexConfig, n: int) -> int:
    """The IVF lists: the asked number, refused beyond the training vectors (k-means needs a point
    per centroid, and FAISS allocates every list when the index is made, before training), or
    :func:`choose_nlist`."""
    if config.nlist is None:
        return choose_nlist(n)
    most = max(1, min(n, config.train_size))
    if not 1 <= config.nlist <= most:
        raise ConfigError(f"nlist={config.nlist}: give 1 to {most} IVF lists (one per training vector at most: "
                          f"{n} vectors, a training sample of up to {config.train_size}); the default for {n} vectors "
                          f"is {choose_nlist(n)} (about 4·√n, >= {MIN_POINTS_PER_LIST} vectors per list)")
    return config.nlist


@INDEX_TYPES.register("ivf")
def _ivf(n: int, d: int, config: IndexConfig) -> IndexSpec:
    nlist = _nlist(config, n)
    nprobe, notes = _nprobe(config, nlist)
    return IndexSpec(f"IVF{nlist},Flat", nprobe=nprobe, notes=notes, nlist=nlist, calibrate=nprobe is None)


@INDEX_TYPES.register("hnsw")
def _hnsw(n: int, d: int, config: IndexConfig) -> IndexSpec:
    # FAISS GPU has no HNSW (CAGRA is a different index), so HNSW stays on the CPU.
    ef_search, notes = config.ef_search or DEFAULT_EF_SEARCH, ()
    # Each search allocates efSearch candidates per query: more than the gallery holds finds nothing
    # more (the answers equal those of ef = n), so a larger value is cut, as k is.
    if ef_search > max(n, DEFAULT_EF_SEARCH):
        ef_search, notes = max(n, DEFAULT_EF_SEARCH), (f"ef_search {config.ef_search} > {n} vectors: using "
                                                       f"{max(n, DEFAULT_EF_SEARCH)}",)
    return IndexSpec(f"HNSW{config.hnsw_m},Flat", ef_search=ef_search, gpu_ok=False, notes=notes)


@INDEX_TYPES.register("ivfpq")
def _ivfpq(n: int, d: int, config: IndexConfig) -> IndexSpec:
    nlist = _nlist(config, n)
    m = config.pq_m or choose_pq_m(d)
    if d % m:
        raise ConfigError(f"pq_m={m} does not divide the dimension {d}; pick a divisor of {d}")
    nbits = config.pq_nbits or choose_pq_nbits(n)
    nprobe, notes = _nprobe(config, nlist)
    return IndexSpec(f"IVF{nlist},PQ{m}x{nbits}", nprobe=nprobe, notes=notes, nlist=nlist, calibrate=nprobe is None)


def resolve_spec(config: IndexConfig, n: int, d: int) -> IndexSpec:
    """The FAISS recipe for ``config`` on ``n`` vectors of dimension ``d``."""
    if not 0.0 < config.target_recall <= 1.0:
        raise ConfigError(f"target_recall must be in (0, 1], got {config.target_recall}")
    if config.index_type.startswith("factory:"):
        factory = config.index_type.split(":", 1)[1].strip()
        if not factory:
            raise ConfigError("factory: needs a FAISS index-factory string, e.g. factory:IVF256,Flat")
        lists = re.search(r"IVF(\d+)", factory)
        if lists is not None:  # FAISS allocates the lists when it parses the string
            _nlist(replace(config, nlist=int(lists.group(1))), n)
        return IndexSpec(factory, nprobe=config.nprobe, ef_search=config.ef_search, gpu_ok="HNSW" not in factory)
    spec = INDEX_TYPES.get(config.index_type)(n, d, config)
    # An option the index type ignores is a mistake worth saying, not silently dropping.
    for option, value, used in (("nprobe", config.nprobe, spec.nprobe), ("ef_search", config.ef_search, spec.ef_search),
                                ("nlist", config.nlist, spec.nlist)):
        if value is not None and used is None:
            raise ConfigError(f"{option}={value} does not apply to a {config.index_type!r} index; drop it "
                              "(nprobe and nlist are for ivf/ivfpq, ef_search for hnsw)")
    return spec
