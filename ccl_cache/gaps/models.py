"""The small closed-form models gap scores are made of: a shrinkage linear probe of the class
(linear discriminant analysis), a ridge map between modalities, and k-fold assignment.

Closed forms, not gradient descent: the same input gives the same scores, with no learning rate or
epoch count to tune, and a fold costs one D×D solve whatever the number of clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-8


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """(n,) fold of each item: a seeded permutation cut into ``folds`` near-equal parts. Random,
    not stratified by label, so that label-free scoring never reads a label to make its folds."""
    order = np.random.default_rng(seed).permutation(n)
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.arange(n) % max(1, folds)
    return ids


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and scale of the rows a model is fitted on (a constant feature keeps scale 1)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > _EPS, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


@dataclass(frozen=True)
class LinearProbe:
    """Class-conditional Gaussians with one shrunk shared covariance (linear discriminant analysis):
    the squared Mahalanobis distance of a vector to each class mean, and the class posteriors
    p(c | x) ∝ exp(−d²_c / 2), linear in x.

    The covariance is ``(1 - shrinkage) S + shrinkage (tr S / D) I`` (S: within-class sample
    covariance of standardised features); classes get equal priors, so a class's share of the fit
    rows does not move a clip's score. Classes absent from the fit rows are infinitely far.
    """

    norm: Standardizer
    means: np.ndarray  # (C, D) standardised class means
    precision: np.ndarray  # (D, D) inverse of the shrunk covariance
    present: np.ndarray  # (C,) bool

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, classes: int, shrinkage: float) -> "LinearProbe":
        norm = Standardizer.fit(x)
        z = norm(x)
        d = z.shape[1]
        means = np.zeros((classes, d))
        present = np.zeros(classes, dtype=bool)
        centred = np.empty_like(z)
        for c in np.unique(y):
            members = y == c
            means[c] = z[members].mean(axis=0)
            centred[members] = z[members] - means[c]
            present[c] = True
        cov = centred.T @ centred / max(1, len(z) - int(present.sum()))
        cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / d + _EPS) * np.eye(d)
        return cls(norm, means, np.linalg.inv(cov), present)

    def sq_distance(self, x: np.ndarray) -> np.ndarray:
        """(n, C) squared Mahalanobis distance to each class mean (inf for absent classes)."""
        z = self.norm(x)
        zp = z @ self.precision
        mp = self.means @ self.precision
        d2 = (zp * z).sum(axis=1, keepdims=True) - 2.0 * zp @ self.means.T + (mp * self.means).sum(axis=1)
        d2 = np.maximum(d2, 0.0)
        d2[:, ~self.present] = np.inf
        return d2

    def log_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, C) log p(c | x); absent classes -inf."""
        logits = -0.5 * self.sq_distance(x)
        logits -= logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class RidgeMap:
    """Ridge regression from standardised inputs to standardised targets, with the per-target
    variance of its residuals on the fit rows (what a clip's own residual is measured against)."""

    x_norm: Standardizer
    y_norm: Standardizer
    coef: np.ndarray  # (Dx + 1, Dy), last row the intercept
    residual_var: np.ndarray  # (Dy,)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, penalty: float) -> "RidgeMap":
        x_norm, y_norm = Standardizer.fit(x), Standardizer.fit(y)
        zx, zy = x_norm(x), y_norm(y)
        design = np.hstack([zx, np.ones((len(zx), 1))])
        reg = penalty * np.eye(design.shape[1])
        reg[-1, -1] = 0.0  # the intercept is not shrunk
        coef = np.linalg.solve(design.T @ design + reg, design.T @ zy)
        resid = zy - design @ coef
        # Leave-one-out correction would be exact; the fit rows' residuals shrink by about the
        # hat matrix's share, so scale them back by the effective degrees of freedom.
        hat = np.trace(np.linalg.solve(design.T @ design + reg, design.T @ design))
        var = (resid**2).sum(axis=0) / max(1.0, len(zx) - hat)
        return cls(x_norm, y_norm, coef, np.maximum(var, _EPS))

    def residual(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n,) mean squared residual of ``y`` given ``x``, in units of the fit rows' residual variance."""
        zx = self.x_norm(x)
        pred = np.hstack([zx, np.ones((len(zx), 1))]) @ self.coef
        return (((self.y_norm(y) - pred) ** 2) / self.residual_var).mean(axis=1)
