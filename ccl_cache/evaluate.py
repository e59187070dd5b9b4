"""Retrieval and recognition metrics (NumPy).

Retrieval follows the usual protocol of Chen et al. (CVPR 2021, supplementary Table C): each query
ranks the gallery by cosine similarity; a query scores a hit at K when any of its top K shares
its class. Recognition follows the paper's test protocol: clip top-1, and video top-1 from the
softmax averaged over a video's windows.

Conventions, shared by every function here:

- **Ties** (equal cosine similarity) are ranked by gallery row, lower row first, so results are
  deterministic. :func:`topk_exact` follows the same rule.
- **K larger than the gallery** is capped at the gallery size (per query: at the length of its
  ranking, which ``exclude_self`` shortens by one); results are still reported under the K asked
  for. Precision@K divides by that capped K.
- **mAP** averages, over queries with at least one relevant gallery item, the average precision
  ``AP = (1/n_relevant) Σ_{r: hit} hits@r / r`` over the ranking given. For a full ranking this is
  the standard AP; for a truncated ranking (top-k from an ANN index) ``n_relevant`` still counts
  every relevant gallery item, so the value is a lower bound of the full AP. Queries with no
  relevant item count as misses in Recall/precision and are left out of mAP (reported as
  ``n_queries_no_relevant``).
- A ranking's padding (ids ``-1`` from FAISS, the excluded self) is the label ``-1``: never a hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ccl_cache.errors import ConfigError
from ccl_cache.search.exact import l2_normalize, topk_exact

__all__ = [
    "DEFAULT_KS", "RetrievalMetrics", "retrieval_metrics", "metrics_from_ranking", "count_relevant",
    "rank_gallery", "topk_exact", "l2_normalize", "clip_top1", "top_k_accuracy", "video_scores",
    "video_top1",
]

DEFAULT_KS: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
_RANK_BLOCK = 1 << 24  # similarity entries per query batch (~64 MB float32): bounds peak memory


@dataclass(frozen=True)
class RetrievalMetrics:
    """Recall@K, precision@K, mAP and per-class Recall@K of one query set against one gallery."""

    ks: tuple[int, ...]
    recall: dict[int, float]
    precision: dict[int, float]
    mean_ap: float
    per_class_recall: dict[int, dict[int, float]]
    n_queries: int
    n_queries_no_relevant: int
    ranking_length: int

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly form: ``recall@K``, ``precision@K``, ``mAP`` and the counts."""
        out: dict[str, Any] = {f"recall@{k}": v for k, v in self.recall.items()}
        out.update({f"precision@{k}": v for k, v in self.precision.items()})
        out.update(mAP=self.mean_ap, n_queries=self.n_queries,
                   n_queries_no_relevant=self.n_queries_no_relevant, ranking_length=self.ranking_length,
                   per_class_recall={str(c): {f"recall@{k}": v for k, v in r.items()}
                                     for c, r in self.per_class_recall.items()})
        return out


@dataclass(frozen=True)
class _PerQuery:
    """Per-query intermediate results, concatenated over query batches before aggregation."""

    hit: np.ndarray        # (Q, len(ks)) bool
    precision: np.ndarray  # (Q, len(ks)) float64
    ap: np.ndarray         # (Q,) float64, NaN where the query has no relevant item


def _labels(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"{name} must be a 1-D integer array of class ids, got shape {arr.shape} {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 for k in out):
        raise ConfigError(f"ks must be positive integers, got {tuple(ks)!r}")
    return out


def _embeddings(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D (rows, dim) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name} contains NaN or infinite values; fix or drop those rows first")
    return arr


def _per_query(ranked: np.ndarray, query_labels: np.ndarray, n_relevant: np.ndarray,
               ks: tuple[int, ...]) -> _PerQuery:
    hits = ranked == query_labels[:, None]
    length = ranked.shape[1]
    valid = (ranked >= 0).sum(axis=1)
    cum = np.cumsum(hits, axis=1, dtype=np.int64)
    total = cum[:, -1] if length else np.zeros(len(ranked), np.int64)
    if np.any(total > n_relevant):
        bad = int(np.argmax(total > n_relevant))
        raise ConfigError(f"query {bad}: its ranking holds {int(total[bad])} items of its class but "
                          f"n_relevant says {int(n_relevant[bad])}; pass the gallery's true counts")
    hit = np.zeros((len(ranked), len(ks)), bool)
    precision = np.zeros((len(ranked), len(ks)))
    for j, k in enumerate(ks):
        k_eff = min(k, length)
        if k_eff == 0:
            continue
        found = cum[:, k_eff - 1]
        hit[:, j] = found > 0
        denom = np.minimum(k, valid)
        precision[:, j] = np.divide(found, denom, out=np.zeros(len(ranked)), where=denom > 0)
    ranks = np.arange(1, length + 1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (hits * cum / ranks).sum(axis=1) / n_relevant
    ap = np.where(n_relevant > 0, ap, np.nan)
    return _PerQuery(hit, precision, ap)


def _aggregate(parts: list[_PerQuery], query_labels: np.ndarray, ks: tuple[int, ...],
               length: int) -> RetrievalMetrics:
    hit = np.concatenate([p.hit for p in parts]) if parts else np.zeros((0, len(ks)), bool)
    precision = np.concatenate([p.precision for p in parts]) if parts else np.zeros((0, len(ks)))
    ap = np.concatenate([p.ap for p in parts]) if parts else np.zeros(0)
    if len(query_labels) == 0:
        raise ConfigError("no queries: retrieval metrics need at least one query row")
    has_rel = ~np.isnan(ap)
    per_class = {
        int(c): {k: float(hit[query_labels == c, j].mean()) for j, k in enumerate(ks)}
        for c in np.unique(query_labels)
    }
    return RetrievalMetrics(
        ks=ks,
        recall={k: float(hit[:, j].mean()) for j, k in enumerate(ks)},
        precision={k: float(precision[:, j].mean()) for j, k in enumerate(ks)},
        mean_ap=float(ap[has_rel].mean()) if has_rel.any() else float("nan"),
        per_class_recall=per_class,
        n_queries=int(len(query_labels)),
        n_queries_no_relevant=int((~has_rel).sum()),
        ranking_length=int(length),
    )


def metrics_from_ranking(ranked_labels: Any, query_labels: Any, n_relevant: Any,
                         ks: Sequence[int] = DEFAULT_KS) -> RetrievalMetrics:
    """Metrics from a precomputed ranking, e.g. the top-k rows an (approximate) index returned.

    ``ranked_labels`` (Q, L): the class of each ranked gallery item, best first, ``-1`` for
    padding; ``n_relevant`` (Q,): how many gallery items share each query's class (see
    :func:`count_relevant`). See the module docstring for K capping and truncated mAP.
    """
    ranked = np.asarray(ranked_labels)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ConfigError(f"ranked_labels must be a 2-D integer array, got shape {ranked.shape} {ranked.dtype}")
    qlab = _labels(query_labels, "query_labels")
    nrel = _labels(n_relevant, "n_relevant")
    if len(qlab) != len(ranked) or len(nrel) != len(ranked):
        raise ConfigError(f"ranked_labels has {len(ranked)} rows but query_labels has {len(qlab)} and "
                          f"n_relevant {len(nrel)}; they must match (one row per query)")
    if (qlab < 0).any():
        raise ConfigError("query_labels must be non-negative class ids (-1 marks padding)")
    k = _ks(ks)
    return _aggregate([_per_query(ranked.astype(np.int64, copy=False), qlab, nrel, k)], qlab, k, ranked.shape[1])


def count_relevant(query_labels: Any, gallery_labels: Any, exclude_self: Any | None = None) -> np.ndarray:
    """Per query, how many gallery rows share its class (the excluded self row not counted)."""
    qlab, glab = _labels(query_labels, "query_labels"), _labels(gallery_labels, "gallery_labels")
    if (qlab < 0).any() or (glab < 0).any():
        raise ConfigError("class ids must be non-negative (-1 is reserved for ranking padding)")
    size = max(int(qlab.max(initial=-1)), int(glab.max(initial=-1))) + 1
    n = np.bincount(glab, minlength=size).astype(np.int64)[qlab]
    if exclude_self is not None:
        ex = _exclusions(exclude_self, len(qlab), len(glab))
        has = ex >= 0
        n[has] -= (glab[ex[has]] == qlab[has]).astype(np.int64)
    return n


def _exclusions(exclude_self: Any, n_queries: int, n_gallery: int) -> np.ndarray:
    ex = _labels(exclude_self, "exclude_self")
    if len(ex) != n_queries:
        raise ConfigError(f"exclude_self has {len(ex)} entries for {n_queries} queries; give one "
                          "gallery row (or -1) per query")
    if (ex >= n_gallery).any() or (ex < -1).any():
        raise ConfigError(f"exclude_self entries must be -1 or a gallery row in [0, {n_gallery}), "
                          f"got values in [{ex.min()}, {ex.max()}]")
    return ex


def rank_gallery(query_emb: np.ndarray, gallery_emb: np.ndarray,
                 exclude: np.ndarray | None = None) -> np.ndarray:
    """Full ranking (Q, G) of gallery rows by cosine similarity, ties by lower row first.

    An excluded gallery row is ranked last (similarity set to -inf); callers mark it as padding.
    """
    sims = l2_normalize(query_emb) @ l2_normalize(gallery_emb).T
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        sims[rows, exclude[rows]] = -np.inf
    # A stable sort of the negated similarities keeps equal scores in gallery-row order.
    return np.argsort(-sims, axis=1, kind="stable")


def retrieval_metrics(query_emb: Any, query_labels: Any, gallery_emb: Any, gallery_labels: Any,
                      ks: Sequence[int] = DEFAULT_KS, exclude_self: Any | None = None) -> RetrievalMetrics:
    """Recall@K, precision@K, mAP and per-class Recall@K of queries against a gallery (cosine).

    ``exclude_self`` (Q,) names, per query, a gallery row to leave out of its ranking and its
    relevant count (the query itself when query and gallery are the same set), or -1.
    """
    q, g = _embeddings(query_emb, "query_emb"), _embeddings(gallery_emb, "gallery_emb")
    qlab, glab = _labels(query_labels, "query_labels"), _labels(gallery_labels, "gallery_labels")
    if len(q) != len(qlab) or len(g) != len(glab):
        raise ConfigError(f"{len(q)} query rows with {len(qlab)} labels, {len(g)} gallery rows with "
                          f"{len(glab)} labels: each embedding row needs one label")
    if q.shape[1] != g.shape[1]:
        raise ConfigError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}: embed both with the same model")
    if len(g) == 0:
        raise ConfigError("the gallery is empty: nothing to retrieve")
    if (qlab < 0).any():
        raise ConfigError("query_labels must be non-negative class ids")
    k = _ks(ks)
    ex = _exclusions(exclude_self, len(q), len(g)) if exclude_self is not None else None
    nrel = count_relevant(qlab, glab, ex)
    step = max(1, _RANK_BLOCK // len(g))
    parts: list[_PerQuery] = []
    for lo in range(0, len(q), step):
        hi = min(lo + step, len(q))
        bex = ex[lo:hi] if ex is not None else None
        ranked = glab[rank_gallery(q[lo:hi], g, bex)]
        if bex is not None:
            ranked[bex >= 0, -1] = -1  # the excluded row sits last: make it padding
        parts.append(_per_query(ranked, qlab[lo:hi], nrel[lo:hi], k))
    return _aggregate(parts, qlab, k, len(g))


# --------------------------------------------------------------------------------------------
# Recognition


def _logits(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ConfigError(f"{name} must be a 2-D (rows, classes) array, got shape {arr.shape}")
    return arr


def top_k_accuracy(logits: Any, labels: Any, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest scores (ties: lower class first)."""
    scores, lab = _logits(logits, "logits"), _labels(labels, "labels")
    if len(scores) != len(lab) or len(lab) == 0:
        raise ConfigError(f"logits has {len(scores)} rows and labels {len(lab)}: need the same, non-zero count")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == lab[:, None]).any(axis=1).mean())


def clip_top1(logits: Any, labels: Any) -> float:
    """Clip-level top-1 accuracy (the paper's validation metric)."""
    return top_k_accuracy(logits, labels, 1)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def video_scores(window_logits: Any, video_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per video, the softmax averaged over its windows: ``(unique video ids, (V, C) probs)``."""
    scores = _logits(window_logits, "window_logits")
    vids = np.asarray(video_ids)
    if vids.ndim != 1 or len(vids) != len(scores):
        raise ConfigError(f"video_ids must be 1-D with one id per window ({len(scores)}), got shape {vids.shape}")
    uniq, inverse = np.unique(vids, return_inverse=True)
    sums = np.zeros((len(uniq), scores.shape[1]))
    np.add.at(sums, inverse, _softmax(scores))
    return uniq, sums / np.bincount(inverse, minlength=len(uniq))[:, None]


def video_top1(window_logits: Any, video_ids: Any, labels: Any) -> float:
    """Video top-1: softmax averaged over each video's windows (the paper's test protocol).

    ``labels`` is per window and must agree within each video.
    """
    lab = _labels(labels, "labels")
    uniq, probs = video_scores(window_logits, video_ids)
    _, inverse = np.unique(np.asarray(video_ids), return_inverse=True)
    if len(lab) != len(inverse):
        raise ConfigError(f"{len(lab)} labels for {len(inverse)} windows: give one label per window "
                          "(the label of the window's video), not one per video")
    video_label = np.full(len(uniq), -1, np.int64)
    video_label[inverse] = lab
    if (video_label[inverse] != lab).any():
        bad = uniq[inverse[np.argmax(video_label[inverse] != lab)]]
        raise ConfigError(f"video {bad!r} has windows with different labels; a video has one label")
    return top_k_accuracy(probs, video_label, 1)
