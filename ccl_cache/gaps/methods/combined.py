"""``combined``: the likelihood and cross-modal scores together."""

from __future__ import annotations

import numpy as np

from ccl_cache.gaps.data import GapData
from ccl_cache.gaps.methods.base import METHODS


def rank_score(scores: np.ndarray) -> np.ndarray:
    """(n,) fraction of the clips scoring lower (ties share their mean rank): each score on one scale."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(len(scores))
    sorted_scores = scores[order]
    # Mean rank of ties, so that equal scores get equal shares.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        if count > 1:
            ranks[order[start:start + count]] = start + (count - 1) / 2
    return ranks / max(1, len(scores) - 1)


@METHODS.register("combined")
def combined(data: GapData) -> np.ndarray:
    """Mean rank of the likelihood and cross-modal scores (each cross-fitted as alone).

    Rank-averaged because the two are on unrelated scales (a log likelihood, a residual ratio).
    Label-free without pretrain labels, the cross-modal score alone.
    """
    cross = METHODS.get("crossmodal")(data)
    if not data.labelled_fit:
        return rank_score(cross)
    return (rank_score(METHODS.get("likelihood")(data)) + rank_score(cross)) / 2
