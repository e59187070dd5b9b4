"""Exact cosine top-k: float32 torch matmul + top-k, a bfloat16-screened variant, and the choice
between them and FAISS ``IndexFlatIP`` by measurement on the machine at hand.

Every path here returns the exact float32 top-k (ties broken by lower gallery row first); they
differ only in speed, which depends on the hardware:

- :func:`topk_exact`: one float32 GEMM + ``topk`` per query batch. The path for CUDA devices, and
  the reference the retrieval protocol of :mod:`ccl_cache.evaluate` uses.
- :class:`ScreenedGallery`: a bfloat16 GEMM screens the gallery, then the few best candidates per
  query are re-scored in float32. On CPUs with bfloat16 matrix units (AMX, AVX512-BF16) the
  bfloat16 GEMM runs several times faster than float32 (docs/performance.md), which is where its
  speed comes from. It stays exact because the screening
  error has a rigorous bound (:meth:`ScreenedGallery.error_bound`): a query's answer is accepted
  only when no unscreened item can beat its k-th exact score; otherwise every item that might is
  re-scored (the *fallback*; rare on embedding-like data, common on near-duplicate galleries).
- FAISS ``IndexFlatIP``: blocked float32 GEMM + heaps (used through :mod:`ccl_cache.search.vector_index`).

:func:`choose_exact_backend` picks per device: CUDA torch (without FAISS-GPU) uses
:func:`topk_exact`; on CPU the screened path and FAISS are timed once per process on a probe
gallery and the faster wins, because which one wins is a property of the CPU (bfloat16 matrix
units or not), not of the code.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

import faiss
import numpy as np
import torch

from ccl_cache.errors import ConfigError

__all__ = ["l2_normalize", "topk_exact", "ScreenedGallery", "choose_exact_backend", "EXACT_BACKENDS"]

EXACT_BACKENDS = ("faiss", "torch", "screened")
_TOPK_BLOCK = {"cpu": 1 << 24, "cuda": 1 << 28}  # similarity entries per query batch (topk_exact)
# bfloat16 similarities per query batch of the screened path (128 MiB; measured at 200k x 512,
# 2 threads: 3,360 q/s vs 3,052 for 256 MiB and 2,430 for 64 MiB, whose GEMMs are too thin).
_SCREEN_ENTRIES = 1 << 26
_SCREEN_BLOCK = 16          # gallery rows per block; a block's max screens the whole block
# Best blocks per query whose rows become candidates, and how many of those are re-scored. The
# best block left out scores about as high as the (blocks + 1)-th best row, and the screen is exact
# alone only where that row trails the k-th by more than the bfloat16 error bound (~0.004 for unit
# vectors): with 16 blocks of 64 rows a quarter of random 512-d queries (200k gallery) fell back
# (the 17th row is too close to the 10th); with 48 blocks of 16 and 32 candidates none of 1000
# random or clustered queries did, 8 % faster than 64 blocks and 64 candidates (1 thread).
_SCREEN_BLOCKS = 48         # at least 5k
_SCREEN_CANDIDATES = 32     # at least 4k
_SCREEN_GROUP = 8           # blocks per group: block maxima are ranked within the best groups only
# Gallery rows per GEMM call: each slice of the screen is reduced to block maxima while it is still
# in cache, cheaper than one GEMM and a second pass over its whole output.
_SCREEN_SLICE = 2048
_BF16_UNIT_ROUNDOFF = 2.0 ** -8    # bfloat16 keeps 8 significant bits, rounding to nearest
_FP32_UNIT_ROUNDOFF = 2.0 ** -24


def l2_normalize(x: Any, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by ``max(‖row‖₂, eps)`` as a new C-contiguous float32 array (zero rows stay 0)."""
    arr = np.array(x, dtype=np.float32, copy=True, order="C", ndmin=2)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    arr /= np.maximum(norms, eps)
    return arr


def _stable_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sims.topk(k)`` with ties broken by lower column first, like a stable full sort."""
    vals, idx = sims.topk(k, dim=1)
    # topk picks arbitrarily among items tied at the k-th score; rows where such a tie crosses
    # the cut are redone with a stable sort (rare for real embeddings, common for duplicates).
    straddle = (sims >= vals[:, -1:]).sum(dim=1) > k
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    if bool(straddle.any()):
        rows = straddle.nonzero().squeeze(1)
        full_vals, full_idx = torch.sort(sims[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = full_vals[:, :k], full_idx[:, :k]
    return vals, idx


def _as_device_tensor(x: Any, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.to(device=device, dtype=torch.float32)


def _check_shapes(q: torch.Tensor, g: torch.Tensor, k: int) -> None:
    if g.ndim != 2 or q.ndim != 2 or g.shape[1] != q.shape[1]:
        raise ConfigError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be 2-D with the same dim")
    if k < 1 or len(g) == 0:
        raise ConfigError(f"need k >= 1 and a non-empty gallery, got k={k}, gallery size {len(g)}")


def topk_exact(queries: Any, gallery: Any, k: int, device: str | torch.device = "cpu",
               batch: int | None = None, assume_normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of each query over the gallery: ``(scores (Q, k'), rows (Q, k'))``.

    Batched float32 torch matmul + top-k on ``device``; ``k' = min(k, gallery size)``. Ties are
    ordered by gallery row (lower first), as in :mod:`ccl_cache.evaluate`. ``batch`` queries per
    step (default: about 2²⁴ similarities on CPU, 2²⁸ on CUDA, to bound memory).
    """
    dev = torch.device(device)
    g = _as_device_tensor(gallery, dev)
    q = _as_device_tensor(queries, dev)
    _check_shapes(q, g, k)
    if not assume_normalized:
        g = torch.nn.functional.normalize(g, dim=1, eps=1e-12)
    q = torch.nn.functional.normalize(q, dim=1, eps=1e-12)
    k_eff = min(k, len(g))
    step = batch or max(1, min(8192, _TOPK_BLOCK.get(dev.type, 1 << 24) // len(g)))
    scores = np.empty((len(q), k_eff), np.float32)
    rows = np.empty((len(q), k_eff), np.int64)
    with torch.inference_mode():
        for lo in range(0, len(q), step):
            vals, idx = _stable_topk(q[lo:lo + step] @ g.T, k_eff)
            scores[lo:lo + step], rows[lo:lo + step] = vals.cpu().numpy(), idx.cpu().numpy()
    return scores, rows


class ScreenedGallery:
    """An L2-normalised float32 gallery searched exactly through a bfloat16 screen (CPU).

    Per query batch: ``S = bf16(gallery) · bf16(queries)ᵀ``; the rows of the best
    ``_SCREEN_BLOCKS`` blocks (by their max screened score) give candidates; the best
    ``_SCREEN_CANDIDATES`` of those by screened score are re-scored in float32 and the top-k kept.
    Every row not re-scored has a screened score ``≤ O`` (the best block or candidate left out),
    so its true score is at most ``O + u·|O|/(1-u) + ε_q`` (:meth:`error_bound`). When the k-th
    exact score beats that, the answer is exact; otherwise the query falls back to re-scoring
    every row whose screened score could reach the k-th exact score found, which is exact too.

    Where the time goes: the GEMM runs in slices of gallery rows, each reduced to its block maxima
    while still in cache, into one buffer kept between searches (up to 136 MiB; searches from
    several threads take turns with it); blocks are ranked only inside the best groups of
    ``_SCREEN_GROUP`` blocks (which provably hold the best blocks).

    ``fallbacks`` counts the queries that needed the fallback since construction.
    """

    def __init__(self, vectors: torch.Tensor | np.ndarray) -> None:
        exact = _as_device_tensor(vectors, torch.device("cpu"))
        if exact.ndim != 2 or len(exact) == 0:
            raise ConfigError(f"the gallery must be a non-empty 2-D array, got shape {tuple(exact.shape)}")
        self.exact = exact.contiguous()
        n, d = exact.shape
        self.count, self.dim = n, d
        # Zero rows pad the gallery to whole groups of blocks. In the last real block their
        # screened score 0 can only raise the block's max (a looser, still valid screen) and they
        # are never candidates (masked below); blocks of padding alone get a max of -inf (_screen).
        self._blocks = math.ceil(n / _SCREEN_BLOCK)
        groups = math.ceil(self._blocks / _SCREEN_GROUP)
        self._low = torch.zeros(groups * _SCREEN_GROUP * _SCREEN_BLOCK, d, dtype=torch.bfloat16)
        self._low[:n] = exact  # rounds to nearest
        low = self._low[:n]
        # Bound terms (see error_bound), in float64 and in slices (a float64 copy of a large
        # gallery would be 2x its size).
        self._norm_max = self._low_norm_max = self._residual_max = 0.0
        for lo in range(0, n, 65536):
            x, x_low = exact[lo:lo + 65536].double(), low[lo:lo + 65536].double()
            self._norm_max = max(self._norm_max, float(x.norm(dim=1).max()))
            self._low_norm_max = max(self._low_norm_max, float(x_low.norm(dim=1).max()))
            self._residual_max = max(self._residual_max, float((x - x_low).norm(dim=1).max()))
        self.fallbacks = 0
        self._scratch = torch.empty(0, dtype=torch.bfloat16)  # the screen's buffer, see _scratch_for
        self._lock = threading.Lock()  # one search at a time uses the buffer

    @staticmethod
    def usable(count: int, k: int) -> bool:
        """Whether the screen pays for this size and ``k``: it keeps at most a quarter of the
        gallery's blocks (else :func:`topk_exact` / FAISS; a 2,000-row gallery is below this)."""
        blocks, _ = ScreenedGallery._plan(k)
        return math.ceil(count / _SCREEN_BLOCK) >= 4 * blocks

    @staticmethod
    def _plan(k: int) -> tuple[int, int]:
        """(blocks kept per query, candidates re-scored per query) for top-``k``."""
        candidates = max(_SCREEN_CANDIDATES, 4 * k)
        # Blocks grow with k (the best one left out must trail the k-th row; measured: 48 blocks
        # for k=40 made 29 of 40 clustered queries fall back, 200 none). They hold candidates + 1
        # real rows even if one of them is the padded last block, since candidates < 16·blocks.
        blocks = max(_SCREEN_BLOCKS, 5 * k)
        return blocks, candidates

    def error_bound(self, q: torch.Tensor, q_low: torch.Tensor) -> torch.Tensor:
        """ε_q: a bound on ``|q·x − fl32(bf16(q)·bf16(x))|`` over every gallery row ``x``, widened
        by the float32 re-scoring's own rounding.

        ``q·x − q'·x' = (q − q')·x + q'·(x − x')`` (Cauchy–Schwarz on each term), plus the float32
        accumulation of ``d`` exact bfloat16 products: ``≤ (d − 1)·2⁻²⁴·‖q'‖·‖x'‖``, doubled as a
        margin for the GEMM kernel's summation order. The answer is the float32 top-k as the
        re-scoring computes it, which is off the real products by up to ``d·2⁻²⁴·‖q‖·‖x‖`` for
        the k-th row and for any row left out, so twice that is added. The rounding of the GEMM's
        bfloat16 output is accounted for separately (relative, ``u = 2⁻⁸``).
        """
        qd, qld = q.double(), q_low.double()
        residual = (qd - qld).norm(dim=1)
        low_norm = qld.norm(dim=1)
        accumulate = 2.0 * (self.dim - 1) * _FP32_UNIT_ROUNDOFF * low_norm * self._low_norm_max
        rescore = 2.0 * self.dim * _FP32_UNIT_ROUNDOFF * qd.norm(dim=1) * self._norm_max
        return residual * self._norm_max + low_norm * self._residual_max + accumulate + rescore

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` (``k' = min(k, count)``) of L2-normalised ``queries``: (scores, rows)."""
        q = _as_device_tensor(queries, torch.device("cpu"))
        _check_shapes(q, self.exact, k)
        k_eff = min(k, self.count)
        if not self.usable(self.count, k_eff):
            return topk_exact(q, self.exact, k_eff, assume_normalized=True)
        scores = np.empty((len(q), k_eff), np.float32)
        rows = np.empty((len(q), k_eff), np.int64)
        step = max(1, min(4096, _SCREEN_ENTRIES // len(self._low), len(q)))
        with self._lock, torch.inference_mode():
            # The screen's scores and their block maxima (1/_SCREEN_BLOCK of them), one buffer.
            scratch = self._scratch_for(len(self._low) * step + len(self._low) // _SCREEN_BLOCK * step)
            for lo in range(0, len(q), step):
                vals, idx = self._search_batch(q[lo:lo + step], k_eff, scratch)
                scores[lo:lo + step], rows[lo:lo + step] = vals.numpy(), idx.numpy()
        return scores, rows

    def _search_batch(self, q: torch.Tensor, k: int, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_blocks, n_cand = self._plan(k)
        nq = len(q)
        q_low = q.to(torch.bfloat16)
        screened, block_max = self._screen(q_low, scratch)
        # The best n_blocks + 1 blocks lie in the best n_blocks + 1 groups (by group max): each of
        # those groups holds a block scoring its max, so the (n_blocks + 1)-th best block inside them
        # is at least every other group's max. Ranking blocks there only is 8x less top-k work.
        group_max = block_max.view(-1, _SCREEN_GROUP, nq).amax(dim=1)
        top_groups = group_max.T.topk(min(n_blocks + 1, len(group_max)), dim=1).indices
        inside = (top_groups[:, :, None] * _SCREEN_GROUP + torch.arange(_SCREEN_GROUP)).reshape(nq, -1)
        top_blocks = block_max.T.gather(1, inside).topk(n_blocks + 1, dim=1)
        kept = inside.gather(1, top_blocks.indices[:, :n_blocks])
        cols = (kept[:, :, None] * _SCREEN_BLOCK + torch.arange(_SCREEN_BLOCK)).reshape(nq, -1)
        cand_scores = screened.T.gather(1, cols).float()
        cand_scores.masked_fill_(cols >= self.count, -math.inf)  # padded rows
        best_cand = cand_scores.topk(n_cand + 1, dim=1)
        cand = cols.gather(1, best_cand.indices[:, :n_cand])
        # The best screened score left out: of the blocks not kept, and of the kept blocks' rows.
        left_out = torch.maximum(top_blocks.values[:, n_blocks].float(), best_cand.values[:, n_cand]).double()
        vals, idx = self._rescore(q, cand, k)
        eps = self.error_bound(q, q_low)
        u = _BF16_UNIT_ROUNDOFF
        reachable = left_out + u * left_out.abs() / (1 - u) + eps  # highest true score left out
        unsure = (vals[:, k - 1].double() <= reachable).nonzero().squeeze(1)
        if len(unsure):
            vals[unsure], idx[unsure] = self._fallback(q[unsure], screened[:self.count, unsure].T,
                                                       vals[unsure, k - 1].double(), eps[unsure], k)
            self.fallbacks += len(unsure)
        return vals, idx

    def _scratch_for(self, entries: int) -> torch.Tensor:
        """A buffer of at least ``entries`` bfloat16 values, kept between searches (one query
        batch's screen and block maxima: 136 MiB at most, unless one query's row alone is
        larger). A fresh one costs the first touch of every page again (measured, 200k x 512,
        1,000 queries per call, 2 threads: 2,576 q/s with a buffer per call vs 3,360 kept)."""
        if len(self._scratch) < entries:
            self._scratch = torch.empty(entries, dtype=torch.bfloat16)
        return self._scratch

    def _screen(self, q_low: torch.Tensor, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bfloat16 scores of every (padded) gallery row, (rows, Q), and each block's max,
        (blocks, Q), both in ``scratch``, computed slice by slice so that the maxima read the
        scores from cache."""
        nq, rows = len(q_low), len(self._low)
        screened = scratch[:rows * nq].view(rows, nq)
        block_max = scratch[rows * nq:(rows + rows // _SCREEN_BLOCK) * nq].view(rows // _SCREEN_BLOCK, nq)
        for lo in range(0, len(self._low), _SCREEN_SLICE):
            part = screened[lo:lo + _SCREEN_SLICE]  # gallery-major, so block maxima reduce rows
            torch.matmul(self._low[lo:lo + _SCREEN_SLICE], q_low.T, out=part)
            torch.amax(part.view(-1, _SCREEN_BLOCK, nq), dim=1,
                       out=block_max[lo // _SCREEN_BLOCK:(lo + len(part)) // _SCREEN_BLOCK])
        # A block of zero rows would screen at 0 and could be kept; only the last real block may
        # hold padding (its max stays a valid, looser screen; those rows are masked as candidates).
        block_max[self._blocks:] = -math.inf
        return screened, block_max

    def _rescore(self, q: torch.Tensor, cand: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 scores of candidate rows ``cand`` (Q, C); top-k, ties by lower row first."""
        cand, _ = cand.sort(dim=1)
        # embedding(): a faster row gather than exact[cand].
        exact = torch.bmm(torch.nn.functional.embedding(cand, self.exact), q.unsqueeze(2)).squeeze(2)
        order = torch.sort(exact, dim=1, descending=True, stable=True).indices[:, :k]
        return exact.gather(1, order), cand.gather(1, order)

    def _fallback(self, q: torch.Tensor, screened: torch.Tensor, kth: torch.Tensor, eps: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-score, per query, every row whose true score may reach ``kth`` (the k-th true score
        among the candidates, so at least k rows qualify). ``screened``: (queries, rows)."""
        u = _BF16_UNIT_ROUNDOFF
        # Rows screened below `floor` have true score < kth: f(s) = s + u|s|/(1-u) + eps is
        # increasing and f(floor) < kth for this floor (since u·(1+2u)/(1-u) < 2u).
        floor = (kth - eps - 2 * u * (kth.abs() + eps)).float()
        reach = screened.float() >= floor[:, None]
        vals = torch.empty(len(q), k)
        idx = torch.empty(len(q), k, dtype=torch.int64)
        for i in range(len(q)):  # the rows differ in count; rare, so a loop
            v, r = self._rescore(q[i:i + 1], reach[i].nonzero().T, k)
            vals[i], idx[i] = v[0], r[0]
        return vals, idx


# --------------------------------------------------------------------------------------------
# Backend choice


_CPU_CHOICE: dict[tuple[int, int], str] = {}
_PROBE_ROWS = 8192
_PROBE_QUERIES = 128


def _best_of(fn: Callable[[], Any], repeats: int = 2) -> float:
    fn()  # warm-up (allocations, kernel selection)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_cpu_exact(dim: int, seed: int = 0) -> dict[str, float]:
    """Seconds of FAISS ``IndexFlatIP`` and of the screened path on a random probe (top-10)."""
    rng = np.random.default_rng(seed)
    gallery = l2_normalize(rng.standard_normal((_PROBE_ROWS, dim), dtype=np.float32))
    queries = l2_normalize(rng.standard_normal((_PROBE_QUERIES, dim), dtype=np.float32))
    flat = faiss.IndexFlatIP(dim)
    flat.add(gallery)
    screened = ScreenedGallery(gallery)
    return {"faiss": _best_of(lambda: flat.search(queries, 10)),
            "screened": _best_of(lambda: screened.search(queries, 10))}


def choose_exact_backend(faiss_on_gpu: bool, torch_device: torch.device, dim: int = 512,
                         count: int | None = None) -> str:
    """The faster exact path for a flat index on this machine: ``"faiss"``, ``"torch"`` or ``"screened"``.

    FAISS on the GPU: ``"faiss"`` (the index is already there). A CUDA torch device without
    FAISS-GPU: ``"torch"`` (:func:`topk_exact`; a GPU GEMM beats any CPU search). CPU: FAISS and
    the bfloat16-screened path are timed once per process and thread count on a random probe
    (8192 x ``dim``, 128 queries; ~0.2 s) and the faster is kept. On the 2-core AMX machine of
    ``benchmarks/bench_retrieval.py`` the screened path won; on a CPU without bfloat16 units its
    GEMM is slower than float32 and FAISS wins. A gallery of ``count`` rows too small for the
    screen (:meth:`ScreenedGallery.usable`) keeps FAISS without measuring.
    """
    if faiss_on_gpu:
        return "faiss"
    if torch_device.type == "cuda":
        return "torch"
    if count is not None and not ScreenedGallery.usable(count, 10):
        return "faiss"
    key = (dim, torch.get_num_threads())
    if key not in _CPU_CHOICE:
        seconds = measure_cpu_exact(dim)
        _CPU_CHOICE[key] = min(seconds, key=seconds.__getitem__)
    return _CPU_CHOICE[key]
