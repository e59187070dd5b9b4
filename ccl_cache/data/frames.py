"""Frame sources: a store row's file and window (:class:`ClipInfo`), windows decoded from the file
or the frame cache (:class:`FrameReader`), and the frame cache's reading side
(:class:`FrameCacheIndex`; :mod:`ccl_cache.extract.frame_cache` builds it). The cache is read in
whichever codec its attributes record (:mod:`ccl_cache.codecs`: raw pixels, or JPEG decoded with
``torchvision.io.decode_jpeg``; :meth:`FrameCacheIndex.read_batch` decodes many windows in one
call, with nvJPEG on a CUDA device)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ccl_cache import media
from ccl_cache.codecs import FrameCodec, make_codec
from ccl_cache.data.transforms import ClipSpec
from ccl_cache.errors import MediaError
from ccl_cache.store.schema import (
    COVERAGE_PATH, FRAMES_COUNT, FRAMES_DATA, FRAMES_ENCODED_INDEX, FRAMES_ENCODED_SEGMENT, FRAMES_GROUP,
    FRAMES_OFFSET, FRAMES_TIMES,
)

@dataclass(frozen=True)
class ClipInfo:
    """What a reader needs about a store row: file, window in file seconds, label."""

    path: str
    start: float
    end: float  # NaN = unknown until probed (to the file end)
    label: int


def clip_infos(store: Any) -> list[ClipInfo]:
    """Every row's file and window; a partially decodable clip (extraction's coverage < 1) is
    cut to its decodable span, as extraction did."""
    clips = store.clips
    coverage = (np.asarray(store.array(COVERAGE_PATH)[:], np.float64)
                if store.has(COVERAGE_PATH) else np.full(store.n, np.nan))
    out = []
    for i in range(store.n):
        start = float(clips.start[i]) if np.isfinite(clips.start[i]) else 0.0
        end = float(clips.end[i]) if np.isfinite(clips.end[i]) else float(clips.duration[i])
        if np.isfinite(end) and np.isfinite(coverage[i]) and 0 < coverage[i] < 1:
            end = start + float(coverage[i]) * (end - start)
        out.append(ClipInfo(str(clips.path[i]), start, end, int(clips.label[i])))
    return out


@dataclass
class Window:
    """Decoded frames of one window: uint8 (T, H, W, 3) and their times (T,) in file seconds."""

    frames: np.ndarray
    times: np.ndarray

    @property
    def span(self) -> tuple[float, float]:
        return float(self.times[0]), float(self.times[-1])


class FrameReader:
    """Reads windows of a row from the frame cache when it holds the row, else from the file.

    Process-local state (the open store, probe results) is rebuilt after a fork, so one reader
    object serves the main process and every DataLoader worker.
    """

    def __init__(self, store_path: str | Path, infos: Sequence[ClipInfo], spec: ClipSpec,
                 cache: "FrameCacheIndex | None") -> None:
        self.store_path = str(store_path)
        self.infos = infos
        self.spec = spec
        self.cache = cache
        self._pid = -1
        self._store: Any = None
        self._fps: dict[int, tuple[float, float]] = {}

    # ------------------------------------------------------------------ process-local handles
    def store(self) -> Any:
        """The store opened read-only in this process (reopened after a fork: HDF5 needs it)."""
        if self._pid != os.getpid():
            from ccl_cache.store import open_store

            self._store, self._pid = open_store(self.store_path, "r"), os.getpid()
        return self._store

    def close(self) -> None:
        if self._store is not None and self._pid == os.getpid():
            self._store.close()
        self._store, self._pid = None, -1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_store=None, _pid=-1)  # spawned workers open their own handle
        return state

    # ------------------------------------------------------------------ windows
    def cached(self, row: int) -> bool:
        return self.cache is not None and self.cache.count[row] > 0

    def random_window(self, row: int, rng: np.random.Generator) -> Window:
        """A window at a uniformly random start frame (training); the same draw from either source."""
        if self.cached(row):
            return self._cache_window(row, self._cached_start(row, rng))
        info, fps = self.infos[row], self._file_fps(row)
        length = int(math.floor((self._file_end(row) - info.start) * fps + 1e-6))
        return self._file_window(row, self._frame_time(row, _random_start(length, self.spec.span_frames, rng)))

    def random_encoded(self, row: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
        """A cached row's random window as the cache keeps it, not decoded: the payloads of its
        frames (what the codec decodes, e.g. JPEG bytes) and their times; the same draw from ``rng``
        as :meth:`random_window`, so either gives the same window."""
        assert self.cache is not None and self.cached(row), f"row {row} is not in the frame cache"
        payloads, stamps = self.cache.payloads(self.store(), [(row, self._cached_start(row, rng))],
                                               self.spec.frames, self.spec.stride)
        return payloads, stamps[0]

    def _cached_start(self, row: int, rng: np.random.Generator) -> int:
        assert self.cache is not None
        return _random_start(int(self.cache.count[row]), self.spec.span_frames, rng)

    def windows(self, row: int, count: int | None, max_windows: int | None = None) -> list[Window]:
        """``count`` evenly spaced windows, or (None) all non-overlapping ones from the start.

        ``max_windows`` keeps that many evenly spaced among all (long videos).
        """
        if self.cached(row):
            assert self.cache is not None
            starts = _window_starts(int(self.cache.count[row]), self.spec.span_frames, count, max_windows)
            return [self._cache_window(row, int(round(s))) for s in starts]
        info, fps = self.infos[row], self._file_fps(row)
        length = int(math.floor(max(0.0, self._file_end(row) - info.start) * fps + 1e-6))
        starts = _window_starts(length, self.spec.span_frames, count, max_windows)
        return [self._file_window(row, self._frame_time(row, int(round(s)))) for s in starts]

    def _frame_time(self, row: int, frame: int) -> float:
        """Start time that makes read_clip begin at frame ``frame`` of the clip (constant rate).

        A hair earlier than the frame's nominal time, so float rounding of pts cannot skip it.
        """
        return max(self.infos[row].start, self.infos[row].start + (frame - 1e-3) / self._file_fps(row))

    def _cache_window(self, row: int, first: int) -> Window:
        assert self.cache is not None
        return self.cache.read(self.store(), row, first, self.spec.frames, self.spec.stride)

    def _file_window(self, row: int, start: float) -> Window:
        info = self.infos[row]
        try:
            clip = media.read_clip(info.path, start, self.spec.frames, self.spec.stride,
                                   size=self.spec.base_size, pad=True)
        except MediaError as exc:
            raise MediaError(
                info.path, exc.reason,
                f"cannot read a {self.spec.frames}-frame window at {start:.3f} s ({exc}); check the file with "
                "`ccl-cache probe`, then re-encode it or remove it from the manifest and re-extract",
            ) from exc
        return Window(clip.frames, np.asarray(clip.times, dtype=np.float64))

    def _file_fps(self, row: int) -> float:
        return self._probe(row)[0]

    def _file_end(self, row: int) -> float:
        end = self.infos[row].end
        return end if np.isfinite(end) else self._probe(row)[1]

    def _probe(self, row: int) -> tuple[float, float]:
        """(fps, duration) of a row's file, probed once (forked workers inherit the answers)."""
        if row not in self._fps:
            info = media.probe(self.infos[row].path)
            if info.video is None:
                raise MediaError(self.infos[row].path, "no-video", "has no video stream; remove it from the manifest")
            fps = float(info.video.fps) if info.video.fps > 0 else 25.0
            self._fps[row] = (fps, float(info.duration))
        return self._fps[row]


def _random_start(length: int, span: int, rng: np.random.Generator) -> int:
    """Uniform start frame of a ``span``-frame window in ``length`` frames (0 when it does not fit)."""
    return int(rng.integers(0, max(0, length - span) + 1))


def _window_starts(length: float, span: int, count: int | None, max_windows: int | None) -> np.ndarray:
    """Start offsets (in frames) of evaluation windows over ``length`` frames."""
    room = max(0.0, length - span)
    if count is not None:  # evenly spaced (validation: 3 per video)
        return np.linspace(0.0, room, count) if count > 1 else np.array([room / 2])
    starts = np.arange(max(1, int(length // span))) * float(span)
    if max_windows is not None and len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    return starts


@dataclass
class FrameCacheIndex:
    """Where each row's cached frames live in ``/frames`` (count 0 = not cached), and their codec."""

    offset: np.ndarray  # (N,) int64 first frame of the row
    count: np.ndarray  # (N,) int64 frames written (<= 0: not cached, read the file)
    size: tuple[int, int]
    fps: float | None
    codec: str = "raw"
    quality: int | None = None

    @classmethod
    def load(cls, store: Any) -> "FrameCacheIndex | None":
        """The store's frame cache index, or None when it has none."""
        if not store.has(FRAMES_COUNT):
            return None
        attrs = store.get_attrs(FRAMES_GROUP)
        if "format" not in attrs:
            return None  # planning was interrupted: nothing usable yet
        count = np.asarray(store.array(FRAMES_COUNT)[:], dtype=np.int64)
        offset = np.asarray(store.array(FRAMES_OFFSET)[:], dtype=np.int64)
        index = cls(offset, count, tuple(attrs.get("size", (0, 0))), attrs.get("fps"),
                    str(attrs.get("codec", "raw")), attrs.get("quality"))  # no codec: a cache from before codecs
        index.frame_codec()  # an unknown codec fails here, naming the known ones
        return index

    def frame_codec(self) -> FrameCodec:
        """The cache's codec (made once per index)."""
        codec = self.__dict__.get("_codec")
        if codec is None:
            codec = self.__dict__["_codec"] = make_codec(self.codec, self.quality)
        return codec

    def _span(self, row: int, first: int, frames: int, stride: int) -> tuple[int, int, np.ndarray]:
        """(start, stop) in ``/frames`` of the frames a window touches, and which of them it shows
        (the last repeats at the clip's end, like read_clip(pad=True))."""
        count = int(self.count[row])
        first = min(max(0, first), count - 1)
        stop = min(count, first + frames * stride)
        base = int(self.offset[row])
        return base + first, base + stop, np.minimum(np.arange(frames) * stride, stop - first - 1)

    def read(self, store: Any, row: int, first: int, frames: int, stride: int) -> Window:
        """``frames`` frames every ``stride`` from local frame ``first``; repeats the last at the end."""
        start, stop, pick = self._span(row, first, frames, stride)
        times = store.array(FRAMES_TIMES)[start:stop]
        if self.frame_codec().layout == "pixels":
            data = store.array(FRAMES_DATA)[start:stop]
            return Window(np.asarray(data[pick]), np.asarray(times[pick], dtype=np.float64))
        shown = np.unique(pick)  # each frame decoded once, even when the end repeats it
        decoded = self.frame_codec().decode(_encoded_frames(store, start + shown), self.size, "cpu").numpy()
        pixels = decoded if len(shown) == len(pick) else decoded[np.searchsorted(shown, pick)]
        return Window(pixels, np.asarray(times[pick], dtype=np.float64))

    def read_batch(self, store: Any, windows: Sequence[tuple[int, int]], frames: int, stride: int,
                   device: Any = "cpu") -> tuple[torch.Tensor, np.ndarray]:
        """Many windows ``(row, first)`` at once: uint8 (B, T, H, W, 3) on ``device`` and times (B, T).

        Every frame of the batch goes to the codec in one call (:meth:`decode`): for JPEG on a CUDA
        device that is one batched nvJPEG decode (the CPU decodes the same list frame by frame).
        """
        payloads, stamps = self.payloads(store, windows, frames, stride)
        pixels = self.decode(payloads, device)
        return pixels.reshape(len(windows), frames, *pixels.shape[1:]), stamps

    def payloads(self, store: Any, windows: Sequence[tuple[int, int]], frames: int, stride: int
                 ) -> tuple[list[np.ndarray], np.ndarray]:
        """The frames of windows ``(row, first)`` as the cache keeps them (B·T payloads, window by
        window: pixels (H, W, 3) or encoded bytes), not decoded, and their times (B, T)."""
        spans = [self._span(row, first, frames, stride) for row, first in windows]
        times = store.array(FRAMES_TIMES)
        stamps = np.stack([np.asarray(times[a:b], np.float64)[pick] for a, b, pick in spans]) if spans else \
            np.zeros((0, frames))
        if self.frame_codec().layout == "pixels":
            data = store.array(FRAMES_DATA)
            return [f for a, b, pick in spans for f in np.asarray(data[a:b])[pick]], stamps
        rows = np.concatenate([start + pick for start, _, pick in spans]) if spans else np.zeros(0, np.int64)
        return _encoded_frames(store, rows), stamps

    def decode(self, payloads: Sequence[Any], device: Any = "cpu") -> torch.Tensor:
        """uint8 (n, H, W, 3) on ``device`` from n payloads of :meth:`payloads` (numpy arrays or
        CPU uint8 tensors): the codec's decoder, nvJPEG for JPEG on a CUDA device."""
        return self.frame_codec().decode(payloads, self.size, device)


def _encoded_frames(store: Any, frames: np.ndarray) -> list[np.ndarray]:
    """The bytes of cached frames ``frames`` (indices into ``/frames``) of the bytes layout: one read
    per segment run when the frames lie close together (a window), else one per frame."""
    if len(frames) == 0:
        return []
    index = store.array(FRAMES_ENCODED_INDEX)
    lo, hi = int(frames.min()), int(frames.max()) + 1
    where = np.asarray(index[lo:hi], np.int64)[frames - lo] if hi - lo <= 4 * len(frames) else \
        np.asarray(index[np.asarray(frames, np.int64)], np.int64)
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(frames)
    for segment in np.unique(where[:, 0]):
        mine = np.flatnonzero(where[:, 0] == segment)
        array = store.array(FRAMES_ENCODED_SEGMENT.format(segment=int(segment)))
        first, end = int(where[mine, 1].min()), int((where[mine, 1] + where[mine, 2]).max())
        if end - first <= 2 * int(where[mine, 2].sum()):  # one read of the run (a window's frames)
            run = np.asarray(array[first:end])
            for j in mine:
                out[j] = run[where[j, 1] - first: where[j, 1] - first + where[j, 2]]
        else:
            for j in mine:
                out[j] = np.asarray(array[int(where[j, 1]): int(where[j, 1] + where[j, 2])])
    return out
