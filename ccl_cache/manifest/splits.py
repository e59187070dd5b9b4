"""Split names: the aliases listings use, the canonical names the trainer and the index read, and
the splits a student run uses."""

from __future__ import annotations

from typing import Any

import numpy as np

SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
"""Folder / subset names recognised as splits, mapped to the canonical split name."""

STUDENT_SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The splits a student run uses (train, validate, test); ``pretrain`` is the teachers' split."""


def canonical_split(name: str) -> str:
    """``name`` as the trainer and the index read it: a recognised alias in any case ("Train",
    "validation") becomes its canonical split; any other name is kept as it is."""
    return SPLIT_ALIASES.get(name.lower(), name)


def canonical_splits(names: Any) -> np.ndarray:
    """:func:`canonical_split` of each name (e.g. a store's ``clips.split`` column), as str."""
    return np.array([canonical_split(str(s)) for s in np.asarray(names)], dtype=str)
