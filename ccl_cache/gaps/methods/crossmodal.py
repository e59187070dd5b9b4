"""``crossmodal``: how badly a clip's sound is predicted from its picture (and label), and its
picture from its sound, by ridge maps fitted on other clips."""

from __future__ import annotations

import numpy as np

from ccl_cache.gaps.data import GapData
from ccl_cache.gaps.methods.base import METHODS, cross_fitted, each_fold
from ccl_cache.gaps.models import RidgeMap


def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(labels), classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


def crossmodal_fitted(data: GapData, fit: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Residual of audio given image (+ label) plus residual of image given audio (+ label), each in
    units of its fit clips' residual variance. The reference (pretrain) clips join every fit, with
    their labels where scored labels are used too."""
    penalty = data.config.ridge
    with_labels = data.labels is not None and data.ref_labels is not None
    ref_a, ref_i = data.ref_audio, data.ref_image
    a, i = data.audio, data.image
    if with_labels:
        # The label enters as a one-hot block beside each input: the map learns each class's sound.
        ref_lab = _one_hot(data.ref_labels, data.classes)
        lab = _one_hot(data.labels, data.classes)
        ref_a, ref_i = np.hstack([ref_a, ref_lab]), np.hstack([ref_i, ref_lab])
        a_in, i_in = np.hstack([a, lab]), np.hstack([i, lab])
    else:
        a_in, i_in = a, i

    def fit_predict(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        audio_given_image = RidgeMap.fit(np.vstack([ref_i, i_in[fit_rows]]),
                                         np.vstack([data.ref_audio, a[fit_rows]]), penalty)
        image_given_audio = RidgeMap.fit(np.vstack([ref_a, a_in[fit_rows]]),
                                         np.vstack([data.ref_image, i[fit_rows]]), penalty)
        return audio_given_image.residual(i_in[rows], a[rows]) + image_given_audio.residual(a_in[rows], i[rows])

    return each_fold(data, fit, target, fit_predict)


@METHODS.register("crossmodal")
def crossmodal(data: GapData) -> np.ndarray:
    """Cross-modal ridge maps: residual of the sound predicted from the picture (+ label), and back.

    Needs no labels at all: label-free it is fitted on the pretrain clips and the other folds'
    clips without reading a label; with labels their one-hot codes join the inputs.
    """
    return cross_fitted(data, crossmodal_fitted, "crossmodal")
