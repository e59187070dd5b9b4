"""The clips of a run: :class:`ClipRecord` (one file, label, split, window) and :class:`Manifest`
(records in store-row order, class names whose index is the label id)."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ccl_cache.errors import ManifestError


@dataclass(frozen=True)
class ClipRecord:
    """One clip: a file, its label, its split and an optional time window (seconds).

    ``start``/``end`` of ``None`` mean "from the file's start" / "to the file's end".
    """

    id: str
    path: str
    label: str
    split: str = "train"
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        for name in ("id", "path", "label", "split"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ManifestError(f"clip {self.id!r}: {name} must be a non-empty string, got {value!r}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ManifestError(
                f"clip {self.id!r}: end ({self.end}) must be after start ({self.start}); fix the window"
            )


@dataclass(frozen=True)
class Manifest:
    """The clips of a run, in store-row order, and the class names (index = label id)."""

    records: tuple[ClipRecord, ...]
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the object hashable and immutable.
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "skipped", tuple(tuple(s) for s in self.skipped))
        if len(set(self.classes)) != len(self.classes):
            raise ManifestError(f"class names must be unique; got duplicates in {list(self.classes)}")
        known = set(self.classes)
        seen: set[str] = set()
        for rec in self.records:
            if rec.label not in known:
                raise ManifestError(f"clip {rec.id!r} has label {rec.label!r}, which is not one of the classes")
            if rec.id in seen:
                raise ManifestError(f"clip id {rec.id!r} appears twice; ids must be unique")
            seen.add(rec.id)

    @classmethod
    def from_records(
        cls, records: Iterable[ClipRecord], classes: Iterable[str] | None = None,
        skipped: Iterable[tuple[str, str]] = (),
    ) -> "Manifest":
        """Build a manifest; ``classes`` default to the sorted unique labels of ``records``."""
        records = tuple(records)
        names = sorted(set(classes) if classes is not None else {r.label for r in records})
        return cls(records, tuple(names), tuple(skipped))

    @functools.cached_property
    def _class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def label_id(self, label: str) -> int:
        """The integer id of class ``label`` (its index in ``classes``)."""
        try:
            return self._class_index[label]
        except KeyError:
            raise ManifestError(f"unknown class {label!r}; known classes: {', '.join(self.classes)}") from None

    def labels(self) -> np.ndarray:
        """Label ids of the records, in order, as int64."""
        index = self._class_index
        return np.fromiter((index[r.label] for r in self.records), dtype=np.int64, count=len(self.records))

    def splits(self) -> list[str]:
        """Split names in order of first appearance."""
        return list(dict.fromkeys(r.split for r in self.records))

    def split(self, name: str) -> "Manifest":
        """The records of split ``name``; ``classes`` are kept so label ids stay the same."""
        records = tuple(r for r in self.records if r.split == name)
        if not records:
            raise ManifestError(f"no clips in split {name!r}; this manifest has splits: {', '.join(self.splits())}")
        return Manifest(records, self.classes)

    def sha256(self) -> str:
        """Hash of the canonical class list and record list (store provenance).

        Canonical form: compact JSON of ``{"classes": [...], "records": [[id, path, label, split,
        start, end], ...]}`` in record order, UTF-8. Order matters: it is the store's row order.
        """
        payload = {
            "classes": list(self.classes),
            "records": [[r.id, r.path, r.label, r.split, r.start, r.end] for r in self.records],
        }
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.records)
