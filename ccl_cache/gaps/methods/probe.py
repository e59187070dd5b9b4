"""``probe``: per-modality linear probes of the class, and how far the sound's class is from the
label (with labels) or from the picture's class (label-free)."""

from __future__ import annotations

import numpy as np

from ccl_cache.gaps.data import GapData
from ccl_cache.gaps.methods.base import (
    METHODS, agreement_log_proba, cross_fitted, label_log_proba, probe_log_proba,
)


def probe_fitted(data: GapData, fit: np.ndarray, target: np.ndarray) -> np.ndarray:
    """−log p_audio(label) with labels; −log Σ_c p_audio(c) p_image(c) label-free."""
    audio = probe_log_proba(data, "audio", fit, target)
    if data.labels is not None:
        return -label_log_proba(audio, data.labels)
    return -agreement_log_proba(audio, probe_log_proba(data, "image", fit, target))


@METHODS.register("probe")
def probe(data: GapData) -> np.ndarray:
    """Linear probes of the class per modality: −log p_audio(label), label-free −log Σ_c p_audio(c)·p_image(c).

    With labels the audio probe is fitted on the pretrain clips and the other folds' clips (their
    labels), trimmed; label-free both probes are fitted on the pretrain clips alone.
    """
    return cross_fitted(data, probe_fitted, "probe")
