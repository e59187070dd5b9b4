"""Scoring a store: :func:`score_gaps` (what ``ccl-cache gaps`` runs) and its :class:`GapResult`."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ccl_cache.errors import ConfigError
from ccl_cache.fileio import atomic_write_text, save_config, to_plain
from ccl_cache.gaps.config import GapConfig
from ccl_cache.gaps.data import load_data
from ccl_cache.gaps.methods import METHODS, guesses

TABLE_COLUMNS = ("rank", "id", "path", "start", "end", "split", "label", "score", "audio_guess", "image_guess")
TABLE_FORMATS = (".csv", ".json")


@dataclass(frozen=True)
class GapResult:
    """Every scored clip of a store, in store order: what the table, the store array and a report
    page show. ``score``: higher = the sound disagrees more with the picture (or label);
    ``audio_guess`` / ``image_guess``: each modality's best-guess class name ("" where no probe
    could be fitted). ``excluded``: rows left out per reason (the failure ledger and teacher coverage
    counted over the whole store, as ``distill`` reports them; missing vectors among the scored splits)."""

    config: GapConfig
    store: str
    n: int
    teachers: dict[str, str]
    rows: np.ndarray
    ids: tuple[str, ...]
    paths: tuple[str, ...]
    starts: np.ndarray
    ends: np.ndarray
    splits: tuple[str, ...]
    labels: tuple[str, ...]
    scores: np.ndarray
    audio_guess: tuple[str, ...]
    image_guess: tuple[str, ...]
    excluded: dict[str, int] = field(default_factory=dict)

    def full_scores(self) -> np.ndarray:
        """(n,) float32 over every store row; NaN = not scored."""
        out = np.full(self.n, np.nan, dtype=np.float32)
        out[self.rows] = self.scores
        return out

    def order(self) -> np.ndarray:
        """Indices of the clips from the highest score down (ties in store order)."""
        return np.argsort(-self.scores, kind="stable")

    def ranked(self, top: int | None = None) -> list[dict[str, Any]]:
        """The clips as dicts (:data:`TABLE_COLUMNS`), highest score first; ``top`` of them."""
        order = self.order()[: top if top is not None else None]
        return [{
            "rank": rank + 1, "id": self.ids[i], "path": self.paths[i], "start": _num(self.starts[i]),
            "end": _num(self.ends[i]), "split": self.splits[i], "label": self.labels[i],
            "score": float(self.scores[i]), "audio_guess": self.audio_guess[i], "image_guess": self.image_guess[i],
        } for rank, i in enumerate(order)]

    def attrs(self) -> dict[str, Any]:
        """What the store array's attributes record."""
        return {"method": self.config.method, "label_free": self.config.label_free,
                "config": self.config.to_dict(), "teachers": dict(self.teachers), "scored": int(len(self.rows))}


def _num(value: float) -> float | None:
    return None if not math.isfinite(float(value)) else float(value)


def score_gaps(store: Any, config: GapConfig = GapConfig()) -> GapResult:
    """Score every usable clip of ``config.splits`` of ``store`` (an open store or its path) by how
    much its sound disagrees with its picture - and, unless ``config.label_free``, its label.

    Usable: not ruled out by the failure ledger for these teachers, extracted by both, with a
    present finite vector in each. See docs/method.md ("Finding the semantic gap") for the scores.
    """
    config.validate()
    if isinstance(store, (str, os.PathLike)):
        from ccl_cache.store import open_store

        with open_store(store) as opened:
            return score_gaps(opened, config)
    from ccl_cache.data.splits import resolve_teachers

    if not store.teacher_keys():
        raise ConfigError(f"{store.path}: no teachers yet; run `ccl-cache extract` with an audio and an image "
                          "teacher first")
    teachers = resolve_teachers(store, config.teachers)
    data, rows, excluded = load_data(store, teachers, config)
    scores = np.asarray(METHODS.get(config.method)(data), dtype=np.float64)
    guess = guesses(data)
    names = list(store.classes)
    clips = store.clips

    def name(c: int) -> str:
        return names[c] if 0 <= c < len(names) else ""

    labels = np.asarray(clips.label, dtype=np.int64)[rows]
    return GapResult(
        config=config, store=str(store.path), n=store.n, teachers=teachers, rows=rows,
        ids=tuple(str(v) for v in np.asarray(clips.id)[rows]), paths=tuple(str(v) for v in np.asarray(clips.path)[rows]),
        starts=np.asarray(clips.start, np.float64)[rows], ends=np.asarray(clips.end, np.float64)[rows],
        splits=tuple(str(v) for v in np.asarray(clips.split)[rows]), labels=tuple(name(int(c)) for c in labels),
        scores=scores, audio_guess=tuple(name(int(c)) for c in guess["audio"]),
        image_guess=tuple(name(int(c)) for c in guess["image"]), excluded=excluded)


def write_table(result: GapResult, path: str | Path, top: int | None = None) -> Path:
    """Write the ranked table to ``path`` (``.csv`` or ``.json``, atomically) and the config beside
    it (``<name>.gaps.yaml``); returns the config's path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise ConfigError(f"--out {path}: expected a .csv or .json file name (e.g. gaps.csv)")
    rows = result.ranked(top)
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        text = buffer.getvalue()
    else:
        text = json.dumps(to_plain({"store": result.store, "teachers": result.teachers,
                                    "config": result.config.to_dict(), "excluded": result.excluded,
                                    "clips": rows}), indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    config_path = path.with_name(path.stem + ".gaps.yaml")
    save_config(result.config, config_path)
    return config_path


def save_to_store(result: GapResult) -> Path:
    """Write the result's (N,) gap scores into its store (under the store's writer lease) and the
    config beside the store (``<store>.gaps.yaml``, as extraction's ``<store>.extract.yaml``);
    returns the config's path."""
    from ccl_cache.store import open_store
    from ccl_cache.store.curation import write_gap_score

    with open_store(result.store, "r+") as opened, opened.acquire_lease(command="ccl-cache gaps"):
        write_gap_score(opened, result.full_scores(), result.attrs())
    store_path = Path(result.store)
    config_path = store_path.with_name(store_path.name + ".gaps.yaml")
    save_config(result.config, config_path)
    return config_path
