"""Splits and row selection: which store rows train, validate and test, and with which teachers.

:func:`carve_val` is the project's one stratified hold-out rule: the trainer carves its validation
rows with it when the manifest has no "val" split, and ``ccl-cache teach`` holds out its clips
with it (a class with clips always keeps at least one for training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ccl_cache.errors import ConfigError
from ccl_cache.manifest import STUDENT_SPLITS, canonical_splits
from ccl_cache.store.curation import gap_excluded
from ccl_cache.store.failures import usable_rows

log = logging.getLogger(__name__)

MODALITIES = ("audio", "image")


@dataclass(frozen=True)
class Splits:
    """Store rows per split, after excluding failed and not-yet-extracted rows.

    ``val_source`` is ``"manifest"`` (the store's "val" split) or ``"carved"`` (deterministic,
    stratified fraction of train). The test split is never used for validation.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    excluded: dict[str, int]
    val_source: str


def resolve_teachers(store: Any, specs: Sequence[str]) -> dict[str, str]:
    """``["audio", "image/small_image"]`` → ``{"audio": "audio/<only one>", "image": "image/small_image"}``.

    A bare modality picks the store's only teacher of that modality; ConfigError when there is
    none or several (naming them), or when the modality is unknown.
    """
    keys = store.teacher_keys()
    out: dict[str, str] = {}
    for spec in specs:
        modality = spec.split("/", 1)[0]
        if modality not in MODALITIES:
            raise ConfigError(f"teacher {spec!r}: modality must be one of {MODALITIES} (e.g. 'audio' or 'audio/cnn14')")
        if "/" in spec:
            if spec not in keys:
                raise ConfigError(f"{store.path}: no teacher {spec!r}; the store holds: {', '.join(keys) or '(none)'}")
            out[modality] = spec
            continue
        found = [k for k in keys if k.split("/", 1)[0] == modality]
        if len(found) != 1:
            what = "no" if not found else f"{len(found)} ({', '.join(found)})"
            raise ConfigError(
                f"{store.path}: {what} {modality} teachers; run `ccl-cache extract` for one, or name it "
                f"as {modality}/<name>"
            )
        out[modality] = found[0]
    return out


def carve_val(rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (train, val), ``fraction`` of each class to val (stratified, seeded).

    A class with one row keeps it in train; otherwise at least one row per class goes to val.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"val_fraction={fraction}: expected a fraction in [0, 1)")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        take = 0 if len(members) < 2 or fraction == 0 else max(1, int(round(fraction * len(members))))
        val.append(rng.permutation(members)[: min(take, len(members) - 1)])
    val_rows = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    return np.setdiff1d(rows, val_rows), val_rows


def _warn_unused_splits(path: Any, split: np.ndarray) -> None:
    """Say which clips no split of a student run takes: a misspelt split column ("tarin") used to
    drop its clips from training without a word."""
    names, counts = np.unique(split, return_counts=True)
    unused = {str(n): int(c) for n, c in zip(names, counts) if n not in STUDENT_SPLITS and n.lower() != "pretrain"}
    if unused:
        log.warning("%s: %s not used by the student run, which trains on 'train', validates on 'val' and tests on "
                    "'test'; if that is a misspelling, fix the manifest's split column and extract it again",
                    path, ", ".join(f"{c} clips in split {n!r}" for n, c in unused.items()))


def make_splits(store: Any, teachers: Mapping[str, str], val_fraction: float = 0.1, seed: int = 1,
                exclude_gaps: float | None = None) -> Splits:
    """Train/val/test rows of ``store`` (see :class:`Splits`); logs the exclusions.

    ``exclude_gaps``: leave out the training clips whose stored gap score (``ccl-cache gaps``) is
    above it (validation and test clips stay: the run is measured on the same clips either way).
    """
    ok, excluded = usable_rows(store, teachers)
    split = canonical_splits(store.clips.split)
    _warn_unused_splits(store.path, split)
    labels = np.asarray(store.clips.label, dtype=np.int64)
    rows = np.arange(store.n)
    train, val, test = rows[ok & (split == "train")], rows[ok & (split == "val")], rows[ok & (split == "test")]
    source = "manifest"
    if len(val) == 0:
        train, val = carve_val(train, labels, val_fraction, seed)
        source = "carved"
    if exclude_gaps is not None:
        gaps = gap_excluded(store, train, exclude_gaps)
        if gaps.any():
            excluded[f"train clips with gap score > {exclude_gaps:g}"] = int(gaps.sum())
            train = train[~gaps]
    if len(train) == 0:
        raise ConfigError(
            f"{store.path}: no usable training clips (split 'train'; excluded: {excluded or 'none'}); "
            "check the manifest's split column and run `ccl-cache extract` to completion"
        )
    if excluded:
        log.warning("%s: excluded %d clips: %s", store.path, sum(excluded.values()),
                    ", ".join(f"{n} {why}" for why, n in excluded.items()))
    return Splits(train, val, test, excluded, source)
