"""How well a ranking finds the gap clips: average precision and precision at the number of gap
clips, against a ground-truth mask (``synth.json``'s ``gap`` per clip, :func:`truth_mask`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ccl_cache.errors import ConfigError


def _checked(scores: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    if s.shape != t.shape or s.ndim != 1:
        raise ConfigError(f"scores {s.shape} and truth {t.shape}: expected two (n,) arrays of one length")
    if not np.isfinite(s).all():
        raise ConfigError("scores hold NaN or inf; rank only scored clips")
    return s, t


def _descending(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def average_precision(scores: Any, truth: Any) -> float:
    """Mean, over the gap clips, of the precision of the ranking down to each (higher score = more
    likely a gap). Ties are broken in the given order. NaN when there is no gap clip."""
    s, t = _checked(scores, truth)
    if not t.any():
        return float("nan")
    hits = t[_descending(s)]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def precision_at_n(scores: Any, truth: Any, n: int | None = None) -> float:
    """Share of gap clips among the ``n`` highest scores (default: the number of gap clips, where
    precision equals recall)."""
    s, t = _checked(scores, truth)
    n = int(t.sum()) if n is None else int(n)
    if n <= 0:
        return float("nan")
    return float(t[_descending(s)[:n]].mean())


def random_average_precision(truth: Any, draws: int = 200, seed: int = 0) -> float:
    """Mean average precision of ``draws`` random rankings (about the gap rate)."""
    t = np.asarray(truth, dtype=bool)
    rng = np.random.default_rng(seed)
    return float(np.mean([average_precision(rng.random(len(t)), t) for _ in range(draws)]))


def truth_mask(truth: Mapping[str, Any], ids: Sequence[str]) -> np.ndarray:
    """(len(ids),) bool: the ``gap`` flag of each clip id in a parsed ``synth.json``
    (:func:`ccl_cache.experiments.synth.load_truth`)."""
    flags = {str(c["id"]): bool(c["gap"]) for c in truth.get("clips", [])}
    missing = [i for i in ids if str(i) not in flags]
    if missing:
        raise ConfigError(f"{len(missing)} clip id(s) not in the ground truth (first: {missing[0]!r}); score the "
                          "store made from this synthetic dataset")
    return np.array([flags[str(i)] for i in ids], dtype=bool)


def evaluate_ranking(scores: Any, truth: Any) -> dict[str, float]:
    """``{"ap", "p_at_n", "gap_clips", "clips", "random_ap"}`` of one ranking."""
    s, t = _checked(scores, truth)
    return {"ap": average_precision(s, t), "p_at_n": precision_at_n(s, t), "gap_clips": int(t.sum()),
            "clips": int(len(t)), "random_ap": random_average_precision(t)}
