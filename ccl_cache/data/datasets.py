"""Datasets: training items with the teacher embeddings aligned (:class:`ClipDataset`) and the
evaluation windows of whole videos (:class:`VideoWindows`, :func:`collate_windows`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ccl_cache.data.frames import ClipInfo, FrameCacheIndex, FrameReader, clip_infos
from ccl_cache.data.teacher_table import TeacherTable
from ccl_cache.data.transforms import ClipSpec, augment, center
from ccl_cache.errors import ConfigError

def _sources(store_path: str | Path, source: str) -> tuple[list[ClipInfo], np.ndarray, FrameCacheIndex | None]:
    """Clip infos, labels and (per ``source``: auto | cache | file) the frame cache index."""
    from ccl_cache.store import open_store

    if source not in ("auto", "cache", "file"):
        raise ConfigError(f"frame source {source!r}: choose auto, cache or file")
    with open_store(store_path, "r") as store:
        infos = clip_infos(store)
        labels = np.asarray(store.clips.label, dtype=np.int64)
        cache = None if source == "file" else FrameCacheIndex.load(store)
    if source == "cache" and cache is None:
        raise ConfigError(f"{store_path}: has no frame cache; build one with `ccl-cache cache-clips {store_path}`")
    return infos, labels, cache


class ClipDataset(Dataset):
    """One clip window per item, with the cached teacher embeddings aligned to it.

    Items are dicts: ``video`` (3, T, S, S) float (Kinetics-normalised), ``label`` (), ``index``
    () the position in this dataset (what memory-bank losses index), ``row`` () the store row,
    ``teachers[m]`` (D_m,) float32 and ``masks[m]`` () bool per loaded modality ``m``.

    ``dataset[(epoch, i)]`` draws the augmentation from a generator seeded by ``(seed, epoch,
    i)``, so an epoch's items do not depend on the worker count, and a resumed run sees the
    same items as an uninterrupted one; ``dataset[i]`` uses :attr:`epoch`.
    """

    def __init__(self, store: str | Path, rows: Sequence[int] | np.ndarray, *, teachers: Mapping[str, str] | None = None,
                 spec: ClipSpec = ClipSpec(), train: bool = True, seed: int = 1, source: str = "auto",
                 teachers_in_ram: bool | None = None) -> None:
        from ccl_cache.store import open_store

        infos, labels, cache = _sources(store, source)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = labels[self.rows]
        self.spec, self.train, self.seed, self.epoch = spec, train, int(seed), 0
        self.reader = FrameReader(store, infos, spec, cache)
        with open_store(store, "r") as opened:
            self.tables = {m: TeacherTable.load(opened, key, teachers_in_ram) for m, key in (teachers or {}).items()}
            for table in self.tables.values():  # before training, not as a non-finite loss later
                table.check_finite(opened, self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def teacher_dims(self) -> dict[str, int]:
        return {m: t.dim for m, t in self.tables.items()}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[dict[str, Any]]:
        """Items of a whole batch (the DataLoader calls this with a batch sampler's keys).

        Windows are read item by item; the teacher lookups of the batch are one vectorised
        ``lookup_batch`` per teacher. Each item equals ``dataset[key]`` alone.
        """
        items, spans, draws = [], [], []
        frame_tables = [t.frames is not None for t in self.tables.values()]
        for key in keys:
            epoch, idx = key if isinstance(key, tuple) else (self.epoch, int(key))
            row = int(self.rows[idx])
            rng = np.random.default_rng((self.seed, epoch, idx))
            if self.train:
                window = self.reader.random_window(row, rng)
                video = augment(torch.from_numpy(window.frames), self.spec, rng)
            else:
                window = self.reader.windows(row, 1)[0]
                video = center(torch.from_numpy(window.frames), self.spec)
            spans.append(window.span)
            # one uniform draw per frame-level teacher, after the augmentation's draws
            draws.append([rng.random() if self.train and f else 0.0 for f in frame_tables])
            items.append({"video": video, "label": torch.tensor(self.labels[idx]), "index": torch.tensor(idx),
                          "row": torch.tensor(row), "teachers": {}, "masks": {}})
        rows = np.array([int(item["row"]) for item in items], np.int64)
        windows, u = np.array(spans, np.float64).reshape(-1, 2), np.array(draws, np.float64).reshape(len(items), -1)
        for j, (modality, table) in enumerate(self.tables.items()):
            store = self.reader.store() if table.embedding is None else None
            emb, present = table.lookup_batch(rows, windows, u[:, j] if self.train else None, store)
            for item, e, p in zip(items, emb, present):
                item["teachers"][modality], item["masks"][modality] = e, p
        return items


class VideoWindows(Dataset):
    """Evaluation items: every window of a video, centre-cropped, as (W, 3, T, S, S).

    ``count=None``: the test protocol's non-overlapping windows over the whole clip (capped to
    ``max_windows`` evenly spaced ones when given); ``count=k``: k evenly spaced windows (the
    paper's validation uses 3). Batch with :func:`collate_windows`.
    """

    def __init__(self, store: str | Path, rows: Sequence[int] | np.ndarray, *, spec: ClipSpec = ClipSpec(),
                 count: int | None = None, max_windows: int | None = None, source: str = "auto") -> None:
        infos, labels, cache = _sources(store, source)
        if count is not None and count < 1 or max_windows is not None and max_windows < 1:
            raise ConfigError(f"windows per video count={count}, max_windows={max_windows}: need >= 1 (or None)")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = labels[self.rows]
        self.spec, self.count, self.max_windows = spec, count, max_windows
        self.reader = FrameReader(store, infos, spec, cache)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        row = int(self.rows[idx])
        windows = self.reader.windows(row, self.count, self.max_windows)
        video = torch.stack([center(torch.from_numpy(w.frames), self.spec) for w in windows])
        return {"video": video, "label": torch.tensor(self.labels[idx]), "index": torch.tensor(idx),
                "row": torch.tensor(row)}


def collate_windows(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Concatenate the windows of several videos; ``owner[w]`` = position of window w's video."""
    counts = [item["video"].shape[0] for item in items]
    return {
        "video": torch.cat([item["video"] for item in items]),
        "owner": torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
        "label": torch.stack([item["label"] for item in items]),
        "index": torch.stack([item["index"] for item in items]),
        "row": torch.stack([item["row"] for item in items]),
    }
