"""``audio`` and ``image``: one modality's probe alone, the baselines the two-modality methods are
measured against (docs/results.md, "Finding the semantic gap")."""

from __future__ import annotations

import numpy as np

from ccl_cache.gaps.data import GapData
from ccl_cache.gaps.methods.base import METHODS, cross_fitted, label_log_proba, probe_log_proba


def _one_modality(modality: str) -> object:
    def fitted(data: GapData, fit: np.ndarray, target: np.ndarray) -> np.ndarray:
        logp = probe_log_proba(data, modality, fit, target)
        if data.labels is not None:
            return -label_log_proba(logp, data.labels)
        with np.errstate(invalid="ignore"):
            return -np.max(logp, axis=1)  # label-free: the probe is unsure of any class

    return fitted


@METHODS.register("audio")
def audio(data: GapData) -> np.ndarray:
    """Baseline, the sound alone: −log p_audio(label); label-free −log max_c p_audio(c)."""
    return cross_fitted(data, _one_modality("audio"), "audio")


@METHODS.register("image")
def image(data: GapData) -> np.ndarray:
    """Baseline, the picture alone: −log p_image(label); label-free −log max_c p_image(c)."""
    return cross_fitted(data, _one_modality("image"), "image")
