"""Datasets: training items with the teacher embeddings aligned (:class:`ClipDataset`) and the
evaluation windows of whole videos (:class:`VideoWindows`, :func:`collate_windows`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from ccl_cache.data.frames import ClipInfo, FrameCacheIndex, FrameReader, clip_infos
from ccl_cache.data.teacher_table import TeacherTable
from ccl_cache.data.transforms import ClipSpec, Crop, apply_crop, augment, center, draw_crop
from ccl_cache.errors import ConfigError

DECODES = ("auto", "cpu", "device")
"""Where training windows of the frame cache are decoded: ``cpu`` in the loader's workers (libjpeg-turbo
for JPEG), ``device`` on the training device after the loader (batched nvJPEG on CUDA; the CPU
decoder in the main process on a CPU run), ``auto`` = ``device`` on CUDA with a JPEG cache, else ``cpu``."""


def resolve_decode(decode: str, device: torch.device | str, cache: FrameCacheIndex | None) -> str:
    """``decode`` (one of :data:`DECODES`) → ``"cpu"`` or ``"device"`` for a run on ``device`` over
    ``cache`` (None: no frame cache, every window comes from its file and is decoded in the workers)."""
    if decode not in DECODES:
        raise ConfigError(f"decode {decode!r}: choose one of {', '.join(DECODES)}")
    if decode != "auto":
        return decode
    # nvJPEG decodes a batch's JPEG frames faster than the loader's CPU workers; raw pixels need
    # no decoding, and on a CPU run the workers decode in parallel, the main process would not.
    lossy = cache is not None and cache.frame_codec().layout == "bytes"
    return "device" if torch.device(device).type == "cuda" and lossy else "cpu"


@dataclass
class EncodedClips:
    """A batch's cached windows still encoded (``ClipDataset(decode="device")``): the bytes of
    their frames back to back (``data``, 1-D uint8; ``lengths`` per frame, T per clip, clip by
    clip), each clip's drawn augmentation, its place in the batch, and the windows the workers
    decoded from files (``ready``: place → float (3, T, S, S)). The loader pins it like a tensor
    (:meth:`pin_memory`); :meth:`ClipDataset.finish` decodes it on the device."""

    data: torch.Tensor
    lengths: list[int]
    crops: list[Crop]
    places: list[int]
    ready: dict[int, torch.Tensor]
    size: int  # clips in the batch

    def pin_memory(self, device: Any = None) -> "EncodedClips":
        return EncodedClips(self.data.pin_memory(), self.lengths, self.crops, self.places,
                            {k: v.pin_memory() for k, v in self.ready.items()}, self.size)

    def payloads(self) -> list[torch.Tensor]:
        """One 1-D uint8 view of ``data`` per frame."""
        return list(torch.split(self.data, self.lengths)) if self.lengths else []


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`ClipDataset` items: ``default_collate``, except that a batch holding encoded
    windows (``decode="device"``) gets an :class:`EncodedClips` as its ``video``."""
    rest = default_collate([{k: v for k, v in item.items() if k not in ("video", "encoded")} for item in items])
    encoded = [(i, item["encoded"]) for i, item in enumerate(items) if "encoded" in item]
    if not encoded:
        rest["video"] = torch.stack([item["video"] for item in items])
        return rest
    payloads = [np.ascontiguousarray(p, np.uint8).reshape(-1) for _, (frames, _) in encoded for p in frames]
    data = torch.from_numpy(np.concatenate(payloads)) if payloads else torch.zeros(0, dtype=torch.uint8)
    rest["video"] = EncodedClips(data, [len(p) for p in payloads], [crop for _, (_, crop) in encoded],
                                 [i for i, _ in encoded],
                                 {i: item["video"] for i, item in enumerate(items) if "video" in item}, len(items))
    return rest


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

    ``decode="device"`` (training items): a window of the frame cache leaves the worker encoded,
    as ``encoded`` = (its frames' payloads, its drawn :class:`Crop`) instead of ``video``; batch with
    :func:`collate_clips` and call :meth:`finish` on the device, which decodes the whole batch in one
    codec call (nvJPEG on CUDA) and crops there. The draws are the same, so the video equals the
    ``decode="cpu"`` item's (bit for bit on the CPU). Windows read from files are decoded in the
    workers either way.
    """

    def __init__(self, store: str | Path, rows: Sequence[int] | np.ndarray, *, teachers: Mapping[str, str] | None = None,
                 spec: ClipSpec = ClipSpec(), train: bool = True, seed: int = 1, source: str = "auto",
                 teachers_in_ram: bool | None = None, decode: str = "cpu") -> None:
        from ccl_cache.store import open_store

        if decode not in ("cpu", "device"):
            raise ConfigError(f"decode {decode!r}: give cpu or device (resolve auto with resolve_decode)")
        self.decode = decode
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
            item: dict[str, Any] = {"label": torch.tensor(self.labels[idx]), "index": torch.tensor(idx),
                                    "row": torch.tensor(row), "teachers": {}, "masks": {}}
            if self.train and self.decode == "device" and self.reader.cached(row):
                assert self.reader.cache is not None
                payloads, times = self.reader.random_encoded(row, rng)
                item["encoded"] = (payloads, draw_crop(*self.reader.cache.size, self.spec, rng))
                spans.append((float(times[0]), float(times[-1])))
            else:
                if self.train:
                    window = self.reader.random_window(row, rng)
                    item["video"] = augment(torch.from_numpy(window.frames), self.spec, rng)
                else:
                    window = self.reader.windows(row, 1)[0]
                    item["video"] = center(torch.from_numpy(window.frames), self.spec)
                spans.append(window.span)
            # one uniform draw per frame-level teacher, after the augmentation's draws
            draws.append([rng.random() if self.train and f else 0.0 for f in frame_tables])
            items.append(item)
        rows = np.array([int(item["row"]) for item in items], np.int64)
        windows, u = np.array(spans, np.float64).reshape(-1, 2), np.array(draws, np.float64).reshape(len(items), -1)
        for j, (modality, table) in enumerate(self.tables.items()):
            store = self.reader.store() if table.embedding is None else None
            emb, present = table.lookup_batch(rows, windows, u[:, j] if self.train else None, store)
            for item, e, p in zip(items, emb, present):
                item["teachers"][modality], item["masks"][modality] = e, p
        return items

    def finish(self, batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
        """``batch`` with its ``video`` a float (B, 3, T, S, S) tensor on ``device``: an
        :class:`EncodedClips` is decoded there in one codec call and cropped clip by clip; a batch
        decoded by the workers is returned as it is (its copy to the device comes later, non-blocking)."""
        clips = batch["video"]
        if not isinstance(clips, EncodedClips):
            return batch
        assert self.reader.cache is not None
        frames = self.reader.cache.decode(clips.payloads(), device)
        frames = frames.reshape(len(clips.places), self.spec.frames, *frames.shape[1:])
        out: list[torch.Tensor | None] = [None] * clips.size
        for j, (place, crop) in enumerate(zip(clips.places, clips.crops)):
            out[place] = apply_crop(frames[j], crop, self.spec)
        for place, video in clips.ready.items():
            out[place] = video.to(device, non_blocking=True)
        return {**batch, "video": torch.stack(out)}  # type: ignore[arg-type]


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
