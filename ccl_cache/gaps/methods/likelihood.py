"""``likelihood``: how unlikely a clip's sound is under the class its label (or its picture) names,
with class-conditional Gaussians of the audio embedding."""

from __future__ import annotations

import numpy as np

from ccl_cache.gaps.data import GapData
from ccl_cache.gaps.methods.base import METHODS, class_fits, cross_fitted, probe_log_proba


def likelihood_fitted(data: GapData, fit: np.ndarray, target: np.ndarray) -> np.ndarray:
    """½ d²_audio(label) with labels; −log Σ_c p_image(c) exp(−½ d²_audio(c)) label-free."""
    _, d2 = class_fits(data, "audio", fit, target)
    if data.labels is not None:
        return 0.5 * d2[np.arange(data.n), data.labels]
    logp_image = probe_log_proba(data, "image", fit, target)
    with np.errstate(invalid="ignore"):
        return -np.logaddexp.reduce(logp_image - 0.5 * d2, axis=1)


@METHODS.register("likelihood")
def likelihood(data: GapData) -> np.ndarray:
    """Class-conditional Gaussians of the sound: −log p(audio | label), label-free −log Σ_c p_image(c)·p(audio | c).

    Unlike a probe's posterior, a likelihood also flags a sound far from every class (music over a
    dog): a probe must still name some class. With labels fitted on the pretrain clips and the
    other folds (trimmed); label-free on the pretrain clips alone.
    """
    return cross_fitted(data, likelihood_fitted, "likelihood")
