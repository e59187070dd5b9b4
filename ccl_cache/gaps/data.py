"""What gap scoring reads from a store: each usable clip's audio and image vectors, split into the
clips to score and the clean ``pretrain`` clips that only help fit the models (:class:`GapData`).

Label-free scoring gets ``labels=None``: the scored clips' labels are never read into it, so no
method can use them by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ccl_cache.errors import ConfigError
from ccl_cache.gaps.config import GapConfig
from ccl_cache.gaps.models import fold_ids
from ccl_cache.manifest import canonical_splits
from ccl_cache.store.failures import usable_rows
from ccl_cache.store.vectors import teacher_vectors

PRETRAIN = "pretrain"


@dataclass
class GapData:
    """Vectors of the scored clips (``audio``, ``image``: (n, D) float64) and of the reference
    clips (``ref_*``: clean pretrain clips, fit-only), labels where the mode allows them, the
    number of classes and each scored clip's fold. ``cache`` keeps what several methods share
    (the probes' cross-fitted posteriors)."""

    audio: np.ndarray
    image: np.ndarray
    labels: np.ndarray | None
    ref_audio: np.ndarray
    ref_image: np.ndarray
    ref_labels: np.ndarray | None
    classes: int
    folds: np.ndarray
    config: GapConfig
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.audio)

    @property
    def labelled_fit(self) -> bool:
        """Whether any labels exist to fit a class probe on (scored or pretrain)."""
        return self.labels is not None or (self.ref_labels is not None and len(self.ref_labels) > 0)


@dataclass(frozen=True)
class Selection:
    """Which store rows are scored and which serve as reference, and what was left out."""

    rows: np.ndarray
    ref_rows: np.ndarray
    excluded: dict[str, int]


def select_rows(store: Any, teachers: dict[str, str], config: GapConfig) -> Selection:
    """Scored rows (usable, in the chosen splits) and reference rows (usable pretrain clips)."""
    ok, excluded = usable_rows(store, teachers)
    split = canonical_splits(store.clips.split)
    if config.splits:
        wanted = canonical_splits(np.asarray(config.splits))
        unknown = sorted(set(wanted.tolist()) - set(split.tolist()))
        if unknown:
            raise ConfigError(f"{store.path}: no clips in split(s) {', '.join(unknown)}; the store's splits: "
                              f"{', '.join(sorted(set(split.tolist())))}")
        scored = np.isin(split, wanted)
    else:
        scored = split != PRETRAIN
    ref = (split == PRETRAIN) if config.use_pretrain else np.zeros(store.n, bool)
    return Selection(np.flatnonzero(ok & scored), np.flatnonzero(ok & ref), excluded)


def _vectors(store: Any, teachers: dict[str, str], rows: np.ndarray, excluded: dict[str, int] | None,
             frame_spread: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows kept, audio vectors, image vectors): rows with a present, finite vector in both; the
    image vectors with the frames' spread beside their mean where ``frame_spread``."""
    keep = np.ones(len(rows), bool)
    out = {}
    for modality in ("audio", "image"):
        vectors, present, _ = teacher_vectors(store, teachers[modality], rows, spread=frame_spread and modality == "image")
        full = np.zeros((len(rows), vectors.shape[1] if vectors.ndim == 2 else 0), np.float64)
        full[present] = vectors
        present = present & np.isfinite(full).all(axis=1)
        if excluded is not None and (~present & keep).any():
            excluded[f"no {modality} vector"] = int((~present & keep).sum())
        keep &= present
        out[modality] = full
    return rows[keep], out["audio"][keep], out["image"][keep]


def load_data(store: Any, teachers: dict[str, str], config: GapConfig) -> tuple[GapData, np.ndarray, dict[str, int]]:
    """The :class:`GapData` of ``store`` for ``config``, the scored store rows and the exclusions."""
    sel = select_rows(store, teachers, config)
    excluded = dict(sel.excluded)
    rows, audio, image = _vectors(store, teachers, sel.rows, excluded, config.frame_spread)
    ref_rows, ref_audio, ref_image = _vectors(store, teachers, sel.ref_rows, None, config.frame_spread)
    if len(rows) < config.folds:
        raise ConfigError(f"{store.path}: {len(rows)} clip(s) to score (excluded: {excluded or 'none'}), fewer than "
                          f"--folds {config.folds}; extract the teachers for more clips or lower --folds")
    labels_all = np.asarray(store.clips.label, dtype=np.int64)
    data = GapData(
        audio=audio, image=image,
        labels=None if config.label_free else labels_all[rows],
        ref_audio=ref_audio, ref_image=ref_image, ref_labels=labels_all[ref_rows],
        classes=len(store.classes), folds=fold_ids(len(rows), config.folds, config.seed), config=config)
    return data, rows, excluded
