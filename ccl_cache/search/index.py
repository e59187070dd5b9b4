"""FAISS indexes over L2-normalised embeddings: build, save, load, search.

Vectors are L2-normalised before they enter an index and queries before they search it, so the
inner product (``METRIC_INNER_PRODUCT``) is the cosine similarity the retrieval protocol of Chen
et al. (CVPR 2021) ranks by. Scores returned are cosines; FAISS ids are positions ``0..count-1``
and :meth:`VectorIndex.search` maps them to store rows.

An index lives in a directory: ``index.faiss`` (FAISS's own format) and ``index.json``, the
sidecar :class:`IndexMeta` (what was indexed, from which store, how). Both are written to temporary
names and moved into place with ``os.replace``; the sidecar holds the index file's SHA-256, so a
truncated or swapped file is refused on load instead of answering wrongly.

Index types (:data:`INDEX_TYPES`; defaults chosen from ``benchmarks/bench_retrieval.py``):

- ``"flat"``: exact (``IndexFlatIP``). Its searches take the faster exact path for the device
  (:func:`ccl_cache.search.exact.choose_exact_backend`): FAISS-GPU when present; torch matmul + top-k on
  a CUDA torch device; on CPU whichever of FAISS and the bfloat16-screened exact search
  (:class:`ccl_cache.search.exact.ScreenedGallery`, which keeps a bfloat16 copy of the vectors, +50 %
  memory, and a screen buffer of up to 128 MiB) measured faster on this machine.
- ``"ivf"``: ``IVF{nlist},Flat``, ``nlist ≈ 4·√n`` capped so every list has ≥ 39 training points;
  ``nprobe`` calibrated on the data at build time (below) unless given.
- ``"hnsw"``: ``HNSW32,Flat``; ``efSearch`` 128 by default.
- ``"ivfpq"``: ``IVF{nlist},PQ{m}x{nbits}``, ``m`` dividing ``d`` (``d/8`` one-byte codes by default:
  64 bytes per 512-d vector), for galleries too big for RAM uncompressed: in the benchmark its
  top-10 overlapped the exact top-10 only 0.83 (10k) / 0.43 (100k) on clustered data.
- ``"factory:<string>"``: any FAISS index-factory string, e.g. ``factory:OPQ16,IVF256,PQ16``
  (search parameters as given; no calibration).

nprobe calibration (``ivf`` / ``ivfpq`` without an explicit ``nprobe``), after the index is
trained and filled: ``min(256, n)`` gallery vectors drawn with ``IndexConfig.seed`` query the
index at nprobe 1, 2, 4, ... (then ``nlist``); the first rung whose recall@10 against the exact
inner-product top-10 reaches ``IndexConfig.target_recall`` (0.95) becomes the default. Each query's
own vector is removed from both lists (it always finds itself, which would inflate recall). The
ladder is recorded in :attr:`IndexMeta.calibration`. How well IVF recalls depends on the data's
structure (clustered embeddings need few lists, structureless vectors many), so it is measured,
as FAISS's own AutoTune does, rather than fixed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss
import numpy as np
import torch

from ccl_cache import hardware
from ccl_cache.errors import CclCacheError, ConfigError, IndexMismatchError
from ccl_cache.search.exact import EXACT_BACKENDS, ScreenedGallery, choose_exact_backend, l2_normalize, topk_exact
from ccl_cache.fileio import atomic_path, sha256_file, to_plain
from ccl_cache.manifest import canonical_split, canonical_splits
from ccl_cache.registry import Registry
from ccl_cache.store.schema import teacher_path

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
INDEX_FORMAT = "ccl-cache-index"
INDEX_FORMAT_VERSION = 1
MIN_POINTS_PER_LIST = 39  # FAISS k-means warns below 39 training points per centroid
GPU_MAX_K = 2048  # FAISS GPU k-selection handles at most this many results per query
# IVF nprobe default: calibrated per index (see calibrate_nprobe), not fixed. A fixed value cannot
# serve every size: in benchmarks/bench_retrieval.py (d=512, 1000 queries, 1 thread, clustered
# data) nprobe 16 gave recall@10-vs-exact 0.94 at 10k vectors (IVF256; 32 was needed for 0.96)
# but at 200k (IVF1789) nprobe 4 already gave 0.9993 at 14.3x IndexFlatIP while 16 ran at 5.3x.
# Calibrated (target 0.95), the same benchmark's held-out queries got: 200k clustered nprobe 2,
# recall 0.983 at 19.9-21.6x; 10k clustered nprobe 32, 0.960 at 0.66x (exact search wins there);
# 10k random nprobe 256 = nlist, 1.0 at 0.07x (a note then advises a flat index).
DEFAULT_TARGET_RECALL = 0.95  # recall@10 vs exact the calibrated nprobe must reach
CALIBRATION_QUERIES = 256     # gallery vectors used as calibration queries (fewer if n is smaller)
CALIBRATION_K = 10            # recall@k measured by the calibration
# HNSW efSearch 128 kept 0.997 / 0.994 / 0.971 at 0.2x / 2x / 4.1x IndexFlatIP (10k / 100k /
# 200k vectors; efSearch 64 fell to 0.93 at 200k).
DEFAULT_EF_SEARCH = 128
Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Index types


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


@INDEX_TYPES.register("ivf")
def _ivf(n: int, d: int, config: IndexConfig) -> IndexSpec:
    nlist = config.nlist or choose_nlist(n)
    nprobe, notes = _nprobe(config, nlist)
    return IndexSpec(f"IVF{nlist},Flat", nprobe=nprobe, notes=notes, nlist=nlist, calibrate=nprobe is None)


@INDEX_TYPES.register("hnsw")
def _hnsw(n: int, d: int, config: IndexConfig) -> IndexSpec:
    # FAISS GPU has no HNSW (CAGRA is a different index), so HNSW stays on the CPU.
    return IndexSpec(f"HNSW{config.hnsw_m},Flat", ef_search=config.ef_search or DEFAULT_EF_SEARCH, gpu_ok=False)


@INDEX_TYPES.register("ivfpq")
def _ivfpq(n: int, d: int, config: IndexConfig) -> IndexSpec:
    nlist = config.nlist or choose_nlist(n)
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
        return IndexSpec(factory, nprobe=config.nprobe, ef_search=config.ef_search, gpu_ok="HNSW" not in factory)
    spec = INDEX_TYPES.get(config.index_type)(n, d, config)
    # An option the index type ignores is a mistake worth saying, not silently dropping.
    for option, value, used in (("nprobe", config.nprobe, spec.nprobe), ("ef_search", config.ef_search, spec.ef_search),
                                ("nlist", config.nlist, spec.nlist)):
        if value is not None and used is None:
            raise ConfigError(f"{option}={value} does not apply to a {config.index_type!r} index; drop it "
                              "(nprobe and nlist are for ivf/ivfpq, ef_search for hnsw)")
    return spec


# --------------------------------------------------------------------------------------------
# Sidecar metadata


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


# --------------------------------------------------------------------------------------------
# Device placement


_GPU_RESOURCES: dict[int, Any] = {}


def _faiss_gpu_available() -> bool:
    return faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_gpu")


def _place(index: faiss.Index, spec: IndexSpec, device: str, notes: list[str]) -> tuple[faiss.Index, bool]:
    """Move ``index`` to a FAISS GPU when asked/allowed and possible; say why not otherwise."""
    hardware.resolve_device(device)  # "cuda" without a GPU: refused, not noted
    wants_gpu = device == "auto" or device.startswith("cuda")
    if not wants_gpu:
        return index, False
    if not _faiss_gpu_available():
        # Quiet for "auto" on a CPU-only machine; say it when a GPU was asked for or is there.
        if device != "auto" or torch.cuda.is_available():
            notes.append("FAISS has no GPU support here (faiss-cpu, or no GPU visible): using the CPU; "
                         "install faiss-gpu-cu12 for GPU indexes")
        return index, False
    if not spec.gpu_ok:
        notes.append(f"{spec.factory} has no FAISS GPU implementation: using the CPU")
        return index, False
    gpu_no = int(device.split(":", 1)[1]) if ":" in device else 0
    # One resource object (memory pool, streams) per GPU for the process, as FAISS advises; the
    # module-level dict also keeps it alive as long as any index placed with it.
    if gpu_no not in _GPU_RESOURCES:
        _GPU_RESOURCES[gpu_no] = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    # IVF-PQ's lookup tables live in one block's shared memory (48 KiB): PQ64x8 in float32 needs
    # 64 KiB and the clone is refused (faiss issue #1178); float16 tables need half.
    options.useFloat16LookupTables = "PQ" in spec.factory
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[gpu_no], gpu_no, index, options), True


def _set_search_params(index: faiss.Index, on_gpu: bool, nprobe: int | None, ef_search: int | None) -> None:
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, int(value))
        except RuntimeError as exc:
            raise ConfigError(f"{name}={value} does not apply to this index ({exc}); drop the option") from None


# --------------------------------------------------------------------------------------------
# The index object


class VectorIndex:
    """A FAISS index plus its sidecar; :meth:`search` answers with cosines and store rows."""

    def __init__(self, index: faiss.Index, meta: IndexMeta, device: str = "cpu", on_gpu: bool = False,
                 notes: Sequence[str] = ()) -> None:
        self.index = index
        self.meta = meta
        self.on_gpu = on_gpu
        self.notes = list(notes)
        self._rows = np.asarray(meta.rows, dtype=np.int64)
        self._torch_device = hardware.resolve_device(device)
        # Measured lazily (choose_exact_backend times the CPU paths once per process).
        self._exact_backend: str | None = None if meta.index_type == "flat" else "faiss"
        self._gallery: torch.Tensor | None = None
        self._screened: ScreenedGallery | None = None

    @property
    def exact_backend(self) -> str:
        """How searches run: ``"faiss"``, or for a flat index the faster exact path on this
        machine (``"torch"`` on CUDA, ``"screened"`` where bfloat16 GEMMs are fast); settable."""
        if self._exact_backend is None:
            self._exact_backend = choose_exact_backend(self.on_gpu, self._torch_device, self.dim, self.count)
        return self._exact_backend

    @exact_backend.setter
    def exact_backend(self, value: str) -> None:
        if value not in EXACT_BACKENDS:
            raise ConfigError(f"exact backend {value!r} is not one of {', '.join(EXACT_BACKENDS)}")
        if value != "faiss" and (self.meta.index_type != "flat" or self.on_gpu):
            raise ConfigError(f"the {value!r} exact path needs a flat index held on the CPU; this one is "
                              f"{self.meta.index_type}{' on the GPU' if self.on_gpu else ''}")
        if value == "screened" and self._torch_device.type != "cpu":
            raise ConfigError("the 'screened' exact path runs on the CPU; use 'torch' on a CUDA device")
        self._exact_backend = value

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def count(self) -> int:
        return self.meta.count

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change IVF ``nprobe`` / HNSW ``efSearch`` (also recorded when the index is saved)."""
        _set_search_params(self.index, self.on_gpu, nprobe, ef_search)
        self.meta = replace(self.meta, nprobe=nprobe if nprobe is not None else self.meta.nprobe,
                            ef_search=ef_search if ef_search is not None else self.meta.ef_search)

    def _flat_vectors(self) -> torch.Tensor:
        if self._gallery is None:
            # Zero-copy view of IndexFlatIP's (already normalised) vectors, then onto the device.
            flat = faiss.rev_swig_ptr(self.index.get_xb(), self.count * self.dim).reshape(self.count, self.dim)
            self._gallery = torch.from_numpy(flat).to(self._torch_device)
        return self._gallery

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine matches per query: ``(scores (Q, k) float32, rows (Q, k) int64)``.

        Scores are cosines (approximations of them for PQ-compressed indexes), best first.
        ``rows`` are store rows; when fewer than ``k`` results exist (k > count, or an IVF probe
        that found too few) the tail is padded with row ``-1`` and score ``-inf``.
        """
        q = l2_normalize(queries)
        if q.shape[1] != self.dim:
            raise IndexMismatchError(f"queries have dimension {q.shape[1]} but the index holds {self.dim}-d "
                                     f"vectors ({self.meta.source or 'unknown source'}); embed the queries "
                                     "with the same model")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if not np.isfinite(q).all():
            raise ConfigError("queries contain NaN or infinite values; check the embeddings of those queries")
        if self.exact_backend == "torch":
            scores, ids = topk_exact(q, self._flat_vectors(), k, self._torch_device, assume_normalized=True)
        elif self.exact_backend == "screened":
            if self._screened is None:
                self._screened = ScreenedGallery(self._flat_vectors())
            scores, ids = self._screened.search(q, k)
        else:
            if self.on_gpu and min(k, self.count) > GPU_MAX_K:
                raise ConfigError(f"k={k} exceeds the {GPU_MAX_K} results per query that FAISS searches on a GPU; "
                                  f"ask for k <= {GPU_MAX_K}, or load the index with device='cpu'")
            scores, ids = self.index.search(q, min(k, self.count))
        pad = k - ids.shape[1]
        if pad:
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        missing = ids < 0
        rows = np.where(missing, -1, self._rows[np.maximum(ids, 0)])
        scores = np.where(missing, np.float32(-np.inf), scores).astype(np.float32)
        return scores, rows

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write ``index.faiss`` + ``index.json`` into ``directory`` atomically; return the directory."""
        return save_index(self, directory, overwrite)


# --------------------------------------------------------------------------------------------
# nprobe calibration


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


# --------------------------------------------------------------------------------------------
# Build, save, load


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


# --------------------------------------------------------------------------------------------
# Indexing a store's embeddings (what `ccl-cache index` runs)


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
    """A student run name from a name or a run directory (its summary.json ``run``, else its name)."""
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
    return name


def _split_rows(store: Any, split: str) -> np.ndarray:
    if split == "all":
        return np.arange(store.n, dtype=np.int64)
    # Aliases in any case name the same split as for the trainer ("validation" = "val").
    rows = np.flatnonzero(canonical_splits(store.clips.split) == canonical_split(split)).astype(np.int64)
    if rows.size == 0:
        raise ConfigError(f"{store.path}: no clips in split {split!r}; splits: "
                          f"{', '.join(sorted(set(np.asarray(store.clips.split).astype(str).tolist())))} (or 'all')")
    return rows


def _teacher_vectors(store: Any, key: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Clip vectors of a teacher: frame-level (K, D) rows averaged over their valid frames."""
    if key not in store.teacher_keys():
        raise ConfigError(f"{store.path}: no teacher {key!r} (teachers: {', '.join(store.teacher_keys()) or 'none'})")
    done = np.asarray(store.teacher(key).done[:], dtype=bool)[rows]
    emb, _, mask = store.read_rows(key, rows)
    mask = np.asarray(mask, dtype=bool)
    if emb.ndim == 3:
        weights = mask.astype(np.float32)
        counts = weights.sum(axis=1)
        # einsum sums the valid frames without materialising a masked (n, K, D) copy.
        emb = np.einsum("nkd,nk->nd", emb, weights) / np.maximum(counts, 1.0)[:, None]
        present = counts > 0
    else:
        present = mask
    keep = done & present
    excluded = {"not_extracted": int((~done).sum()), "missing": int((done & ~present).sum())}
    return emb[keep], keep, excluded


def collect_vectors(store: Any, *, run: str | None = None, teacher: str | None = None,
                    split: str = "train") -> SourceVectors:
    """The embeddings of one student run or one teacher for the rows of ``split`` (or "all").

    Teacher rows not extracted yet or masked (e.g. no audio) are left out and counted in
    ``excluded``; so are rows with non-finite values.
    """
    if (run is None) == (teacher is None):
        raise ConfigError("give exactly one source: a student run or a teacher key (modality/name)")
    rows = _split_rows(store, split)
    if run is not None:
        vectors, keep, excluded = np.asarray(store.student(run), dtype=np.float32)[rows], np.ones(len(rows), bool), {}
        source = f"student:{run}"
    else:
        vectors, keep, excluded = _teacher_vectors(store, str(teacher), rows)
        source = f"teacher:{teacher}"
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
    src = collect_vectors(store, run=run, teacher=teacher, split=split)
    vindex = build_index(src.vectors, config, rows=src.rows, clip_ids=src.clip_ids, source=src.source,
                         split=split, store=store, progress=progress)
    save_index(vindex, out, overwrite)
    return vindex, src
