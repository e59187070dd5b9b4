"""The registry of gap scoring methods and what they share: cross-fitting over folds (with the
trimmed second pass) and the class probes' posteriors.

A method is a function ``(data) -> (n,) scores`` (higher: the clip's sound disagrees more with its
picture, or with its label where labels are allowed), registered in :data:`METHODS` under the name
``ccl-cache gaps --method`` takes. Most are built from a *fitted* score, ``(data, fit, target) ->
(n,)``: models fitted on the reference clips plus the scored clips in ``fit`` score the clips in
``target``; :func:`cross_fitted` runs it so that no clip's own sound, picture or label is in a
model that scores it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ccl_cache.errors import ConfigError
from ccl_cache.gaps.data import GapData
from ccl_cache.gaps.models import LinearProbe
from ccl_cache.registry import Registry

Method = Callable[[GapData], np.ndarray]
Fitted = Callable[[GapData, np.ndarray, np.ndarray], np.ndarray]

METHODS: Registry[Method] = Registry("gap method")


def summary(name: str) -> str:
    """The first line of a method's docstring (``ccl-cache gaps --help``, docs)."""
    doc = METHODS.get(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else name


def each_fold(data: GapData, fit: np.ndarray, target: np.ndarray,
              fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """For each fold holding ``target`` clips: ``fit_predict(fit rows, predict rows)`` with the fit
    rows the ``fit`` clips of the *other* folds; results (n, ...) in place, NaN elsewhere."""
    out: np.ndarray | None = None
    for k in np.unique(data.folds[target]):
        here = target & (data.folds == k)
        values = fit_predict(np.flatnonzero(fit & (data.folds != k)), np.flatnonzero(here))
        if out is None:
            out = np.full((data.n,) + values.shape[1:], np.nan)
        out[here] = values
    return out if out is not None else np.full(data.n, np.nan)


def cross_fitted(data: GapData, fitted: Fitted, name: str) -> np.ndarray:
    """(n,) scores of every clip by ``fitted``, cross-fitted over the folds.

    Without trimming: one pass, each fold scored by models fitted on the others. With
    ``config.trim``: to score fold k, the other folds are first scored among themselves (inner
    cross-fitting, fold k left out entirely), their top ``trim`` share is dropped, and the models
    are fitted again on the rest - so a likely gap clip does not teach the model its wrong pairing,
    and fold k still takes no part in the fit, nor in the choice of what is dropped. Results are
    cached in ``data.cache`` by ``name``.
    """
    key = ("fitted", name)
    if key in data.cache:
        return data.cache[key]
    everything = np.ones(data.n, dtype=bool)
    trim = data.config.trim
    if trim <= 0:
        scores = fitted(data, everything, everything)
    else:
        scores = np.full(data.n, np.nan)
        for k in np.unique(data.folds):
            others = data.folds != k
            # A clip the first pass could not score (its class absent from the fit: NaN or inf)
            # counts as the likeliest gap, so the cut is always a number and keeps the rest.
            inner = np.nan_to_num(fitted(data, others, others), nan=np.inf)
            cut = np.quantile(inner[others], 1.0 - trim)
            keep = others & (inner <= cut)
            here = data.folds == k
            scores[here] = fitted(data, keep, here)[here]
    data.cache[key] = scores
    return scores


def class_fits(data: GapData, modality: str, fit: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p(class | vector), squared distance to each class mean), each (n, C), of the ``target``
    clips (NaN rows elsewhere), from :class:`~ccl_cache.gaps.models.LinearProbe` class models of
    ``modality``.

    With labels: one model per fold, fitted on the pretrain clips and the ``fit`` clips of the
    other folds. Label-free: one model fitted on the pretrain clips alone (the scored clips' labels
    are not there to read), which scores every clip.
    """
    key = ("class", modality, fit.tobytes(), target.tobytes())
    if key in data.cache:
        return data.cache[key]
    x = data.audio if modality == "audio" else data.image
    ref_x = data.ref_audio if modality == "audio" else data.ref_image
    ref_y = data.ref_labels if data.ref_labels is not None else np.zeros(0, np.int64)
    shrinkage, classes = data.config.shrinkage, data.classes

    def both(model: LinearProbe, rows: np.ndarray) -> np.ndarray:
        d2 = model.sq_distance(x[rows])
        return np.concatenate([model.log_proba(x[rows]), d2], axis=1)

    if data.labels is None:
        if len(ref_y) == 0 or len(np.unique(ref_y)) < 2:
            raise ConfigError("label-free class models are fitted on the store's 'pretrain' clips, and it has "
                              f"{len(ref_y)} usable one(s) of {len(np.unique(ref_y))} class(es); use a method that "
                              "needs no labels (--method crossmodal) or score with labels")
        out = np.full((data.n, 2 * classes), np.nan)
        out[target] = both(LinearProbe.fit(ref_x, ref_y, classes, shrinkage), np.flatnonzero(target))
    else:
        labels = data.labels

        def fit_predict(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
            fx = np.vstack([ref_x, x[fit_rows]])
            fy = np.concatenate([ref_y, labels[fit_rows]])
            return both(LinearProbe.fit(fx, fy, classes, shrinkage), rows)

        out = each_fold(data, fit, target, fit_predict)
    data.cache[key] = (out[:, :classes], out[:, classes:])
    return data.cache[key]


def probe_log_proba(data: GapData, modality: str, fit: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(n, C) log p(class | modality's vector) of the ``target`` clips (see :func:`class_fits`)."""
    return class_fits(data, modality, fit, target)[0]


def guesses(data: GapData) -> dict[str, np.ndarray]:
    """Each modality's best-guess class per clip (-1 where no probe can be fitted), from the
    cross-fitted probes of one pass."""
    everything = np.ones(data.n, dtype=bool)
    if not data.labelled_fit:
        return {m: np.full(data.n, -1, np.int64) for m in ("audio", "image")}
    out = {}
    for modality in ("audio", "image"):
        logp = probe_log_proba(data, modality, everything, everything)
        out[modality] = np.where(np.isfinite(logp).any(axis=1), np.nan_to_num(logp, nan=-np.inf).argmax(axis=1), -1)
    return out


def label_log_proba(logp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n,) log p(label) from (n, C) log posteriors (NaN rows stay NaN)."""
    return logp[np.arange(len(labels)), labels]


def agreement_log_proba(logp_a: np.ndarray, logp_b: np.ndarray) -> np.ndarray:
    """(n,) log Σ_c p_a(c) p_b(c): how likely two modalities name the same class (-inf: never)."""
    with np.errstate(invalid="ignore"):
        return np.logaddexp.reduce(logp_a + logp_b, axis=1)
