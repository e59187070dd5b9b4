"""Building the training frame cache (``ccl-cache cache-clips``): each video of a store decoded
once into ``/frames`` at the training base size, so ``distill`` reads windows from the store
instead of seeking in the original files (the reading side is :class:`ccl_cache.data.FrameCacheIndex`).
Frames are kept by a codec of :data:`ccl_cache.codecs.FRAME_CODECS` (``raw`` pixels, or ``jpeg``
bytes encoded in the workers); the cache's attributes record which, with its quality.

Probing and decoding run in :class:`~ccl_cache.workers.WorkerPool` processes, which import only
:mod:`ccl_cache.extract.frame_tasks` for their tasks (PyAV, Pillow, numpy: neither torch nor the
store's backends). A task whose worker dies or hangs fails its row, as a decoding error does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ccl_cache import media
from ccl_cache.codecs import DEFAULT_CODEC, FrameCodec, make_codec
from ccl_cache.errors import ConfigError, ExtractError
from ccl_cache.extract.config import MAX_IMAGE_SIZE
from ccl_cache.extract.decode import centre_times, worker_failure_message
from ccl_cache.extract.frame_tasks import decode_piece, probe_row
from ccl_cache.store.failures import usable_rows
from ccl_cache.store.schema import (
    FRAMES_COUNT, FRAMES_DATA, FRAMES_ENCODED, FRAMES_ENCODED_INDEX, FRAMES_ENCODED_SEGMENT, FRAMES_GROUP,
    FRAMES_OFFSET, FRAMES_PLANNED, FRAMES_RATE, FRAMES_TIMES,
)
from ccl_cache.store.space import check_free_space, explain_write_error, os_error
from ccl_cache.workers import TaskFailure, WorkerPool

log = logging.getLogger(__name__)

# A task is one media call, which media.DecodeLimits.wall_s already bounds; this deadline is the
# backstop for a decoder stuck where that bound cannot reach.
TASK_TIMEOUT_S = 2 * media.DEFAULT_LIMITS.wall_s
# Byte segments of the "bytes" layout: written through storage chunks of this many bytes, and at
# most this long unless one piece needs more (a segment's unwritten tail takes no disk).
SEGMENT_CHUNK_BYTES = 1 << 20
SEGMENT_MAX_BYTES = 4 << 30


@dataclass(frozen=True)
class FrameCacheConfig:
    """How ``build_frame_cache`` decodes.

    ``size`` (H, W): every frame is resized to it — 128×171 by default, the base size of
    112-pixel training crops (aspect not kept, as torchvision's video reference does).
    ``fps``: cache rate; None keeps the native rate (consecutive cached frames are then the
    paper's consecutive frames; a lower rate makes a T-frame window span more time).
    ``max_frames``: per-clip cap (None = whole clip). ``chunk_frames``: frames per storage chunk
    (a window reads about T / chunk_frames + 1 chunks). ``piece_frames``: frames one worker task
    decodes (bounds memory for long videos). ``workers=0`` decodes in this process.
    ``codec``: how frames are kept (a name in :data:`ccl_cache.codecs.FRAME_CODECS`); ``quality``
    its quality setting (None = the codec's default; ``raw`` has none). ``compression``: a store
    compressor for the ``raw`` codec's pixels (None = none, and a free-space check up front).
    """

    size: tuple[int, int] = (128, 171)
    fps: float | None = None
    workers: int = 2
    max_frames: int | None = None
    chunk_frames: int = 16
    piece_frames: int = 256
    compression: str | None = None
    overwrite: bool = False
    force: bool = False
    codec: str = DEFAULT_CODEC
    quality: int | None = None

    def __post_init__(self) -> None:
        if min(self.size) < 8 or (self.fps is not None and self.fps <= 0) or self.workers < 0:
            raise ConfigError(f"frame cache size={self.size} (>= 8 px), fps={self.fps} (> 0 or None), "
                              f"workers={self.workers} (>= 0)")
        if max(self.size) > MAX_IMAGE_SIZE:
            # A worker decodes piece_frames frames of this size at once, and a storage chunk holds
            # chunk_frames of them: --size 100000 would ask for terabytes before the first frame.
            raise ConfigError(f"frame cache size={self.size[0]}x{self.size[1]}: give 8 to {MAX_IMAGE_SIZE} pixels "
                              "per side (the default 128x171 is the base of 112-pixel training crops)")
        if self.chunk_frames < 1 or self.piece_frames % self.chunk_frames or self.piece_frames < 1:
            raise ConfigError(f"piece_frames={self.piece_frames} must be a positive multiple of "
                              f"chunk_frames={self.chunk_frames}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames={self.max_frames}: need >= 1 or None")
        if self.frame_codec().layout != "pixels" and self.compression is not None:  # also checks codec, quality
            raise ConfigError(f"compression={self.compression!r} applies to the raw codec's pixels; the "
                              f"{self.codec!r} codec compresses its frames itself: drop compression")

    def frame_codec(self) -> FrameCodec:
        """The codec (ConfigError for an unknown name or a quality it does not take)."""
        return make_codec(self.codec, self.quality)

    def identity(self) -> dict[str, Any]:
        """What a resumed build must agree on (the codec and its quality included)."""
        return {"size": list(self.size), "fps": self.fps, "max_frames": self.max_frames,
                "chunk_frames": self.chunk_frames, **self.frame_codec().identity()}


@dataclass(frozen=True)
class FrameCacheSummary:
    store: str
    rows: int
    cached: int  # rows written by this call
    skipped: int  # rows already cached (resume)
    failed: dict[int, str]  # row -> message (those rows are read from their files)
    frames: int
    seconds: float
    codec: str = "raw"
    quality: int | None = None

    @property
    def clips_per_s(self) -> float:
        return self.cached / max(self.seconds, 1e-9)


def _probe_failed(task: tuple[int, str, float, float], failure: TaskFailure) -> tuple[int, float, float, str]:
    return task[0], 0.0, 0.0, worker_failure_message(task[1], failure)


def _piece_failed(task: tuple[Any, ...], failure: TaskFailure) -> tuple[int, int, Any, Any, Any, str]:
    return task[0], task[1], None, None, None, worker_failure_message(task[2], failure)


@contextlib.contextmanager
def _pool_map(fn: Any, tasks: Iterable[Any], workers: int,
              failed: Callable[[Any, TaskFailure], Any]) -> Iterator[Iterator[Any]]:
    """``fn``'s answers over ``tasks`` in worker processes, in completion order, with at most
    2·workers answers waiting (bounded memory); a task whose worker died or hung answers
    ``failed(task, failure)``."""
    # One decoder thread per worker: the workers are the parallelism (FFmpeg's own threads in each
    # of them only contend for the same cores), as in extract's decode workers.
    with WorkerPool(fn, workers, timeout_s=TASK_TIMEOUT_S, readahead=2 * max(1, workers), name="frame-cache",
                    initializer=media.set_decoder_threads, initargs=(1,), job="the frame cache build",
                    inline="workers=0 (--workers 0) decodes in this process instead", error=ExtractError) as pool:
        pool.start(tasks)
        yield (failed(task, answer) if isinstance(answer, TaskFailure) else answer for task, answer in pool)


def _plan_cache(store: Any, config: FrameCacheConfig) -> dict[int, str]:
    """Probe every usable clip and create ``/frames`` with one chunk-aligned region per row."""
    from ccl_cache.data import clip_infos

    ok, _ = usable_rows(store, {})
    infos = clip_infos(store)
    planned = np.zeros(store.n, np.int64)
    rate = np.zeros(store.n, np.float64)
    failed: dict[int, str] = {}
    tasks = [(r, infos[r].path, infos[r].start, infos[r].end) for r in np.flatnonzero(ok)]
    with _pool_map(probe_row, tasks, config.workers, _probe_failed) as answers:
        for row, fps, end, error in answers:
            if error:
                failed[row] = error
                continue
            rate[row] = min(fps, config.fps) if config.fps else fps
            frames = max(1, int(math.floor((end - infos[row].start) * rate[row] + 1e-6)))
            planned[row] = min(frames, config.max_frames or frames)
    cf = config.chunk_frames
    capacity = -(-planned // cf) * cf
    offset = np.concatenate([[0], np.cumsum(capacity)[:-1]]).astype(np.int64)
    total = max(cf, int(capacity.sum()))
    h, w = config.size
    codec = config.frame_codec()
    if config.compression is None:  # compressed chunks may be far smaller: no estimate
        # Before the old plan goes: a cache that cannot fit must not cost the one already there.
        needed = _cache_bytes(store, config, planned) - store.freed_by_delete(FRAMES_GROUP)
        check_free_space(store.path, needed, _SPACE_FIX)
    if store.has(FRAMES_GROUP):
        # The old plan goes first, marker included: re-planning over it left the old "format"
        # marker on new, empty arrays until the end, so a kill in between made training read
        # black frames that the old counts called cached.
        store.delete(FRAMES_GROUP)
    if codec.layout == "pixels":
        store.create_array(FRAMES_DATA, (total, h, w, 3), "uint8", chunk_rows=cf, compression=config.compression)
    else:  # the byte segments come as the frames do (_Segments)
        store.create_array(FRAMES_ENCODED_INDEX, (total, 3), "int64", chunk_rows=cf * 256)
    store.create_array(FRAMES_TIMES, (total,), "float64", chunk_rows=cf * 256)
    for path, values in ((FRAMES_OFFSET, offset), (FRAMES_PLANNED, planned), (FRAMES_RATE, rate)):
        store.create_array(path, (store.n,), values.dtype)[:] = values
    store.create_array(FRAMES_COUNT, (store.n,), "int64", fill_value=0)
    store.set_attrs(FRAMES_GROUP, {**config.identity(), "format": "ccl-cache-frames"})  # last: marks the plan
    return failed


def _piece_tasks(store: Any, config: FrameCacheConfig, rows: np.ndarray) -> Iterator[tuple[Any, ...]]:
    from ccl_cache.data import clip_infos

    infos = clip_infos(store)
    planned, rate = store.array(FRAMES_PLANNED)[:], store.array(FRAMES_RATE)[:]
    for row in rows:
        for first in range(0, int(planned[row]), config.piece_frames):
            k = np.arange(first, min(int(planned[row]), first + config.piece_frames))
            times = centre_times(infos[row].start, 1.0 / rate[row], k)
            yield int(row), first, infos[row].path, times, tuple(config.size), config.codec, config.quality


def _check_existing(store: Any, config: FrameCacheConfig) -> bool:
    """True when a compatible plan exists (resume); StoreMismatchError when it differs."""
    from ccl_cache.errors import StoreMismatchError

    if config.overwrite or not store.has(FRAMES_COUNT):
        return False
    attrs = store.get_attrs(FRAMES_GROUP)
    if "format" not in attrs:
        return False  # an interrupted planning step: plan again
    attrs = {"codec": "raw", "quality": None, **attrs}  # caches from before codecs held raw pixels
    wanted = config.identity()
    diffs = [f"{k}: {attrs.get(k)!r} (store) vs {v!r} (now)" for k, v in wanted.items() if attrs.get(k) != v]
    if diffs:
        raise StoreMismatchError(f"{store.path}: the frame cache was built with other settings: "
                                 + "; ".join(diffs) + ". Pass --overwrite to rebuild it, or the same settings")
    return True


def build_frame_cache(store_path: str | Path, config: FrameCacheConfig = FrameCacheConfig(),
                      progress: Any = None) -> FrameCacheSummary:
    """Decode each clip of the store once into ``/frames`` (frames + pts), resumably.

    Layout: ``times`` (F,) float64 and the frames hold every row's frames in a chunk-aligned
    region starting at ``offset[row]`` (``planned[row]`` frames at ``rate[row]`` fps); the frames
    are ``data`` (F, H, W, 3) uint8 for the ``raw`` codec, or (``jpeg``) bytes in the segments
    ``encoded/<k>`` located by ``encoded_index`` (F, 3) = (segment, start, length).
    ``count[row]`` is written after the row's frames (0 = not cached: training reads the file).
    Rows in the failure ledger are skipped. ``progress(done, total)`` after each row.
    """
    from ccl_cache.store import open_store

    began = time.perf_counter()
    with open_store(store_path, "r+") as store, store.acquire_lease(force=config.force, command="ccl-cache cache-clips"):
        resume = _check_existing(store, config)
        failed = {} if resume else _plan_cache(store, config)  # a new plan checks the disk before it deletes
        count, planned = store.array(FRAMES_COUNT)[:], store.array(FRAMES_PLANNED)[:]
        todo = np.flatnonzero((count == 0) & (planned > 0))
        skipped = int(((count > 0) & (planned > 0)).sum())
        if resume and config.compression is None:
            check_free_space(store.path, _cache_bytes(store, config, planned[todo]), _SPACE_FIX)
        cached, frames = _decode_rows(store, config, todo, failed, progress)
        store.flush()
    codec = config.frame_codec()
    return FrameCacheSummary(str(store_path), int(store.n), cached, skipped, failed, frames,
                             time.perf_counter() - began, codec.name, codec.quality)


_SPACE_FIX = "cache fewer frames (--max-frames, --fps) or smaller ones (--size, --codec jpeg, a lower --quality)"


def _cache_bytes(store: Any, config: FrameCacheConfig, planned: np.ndarray) -> int:
    """Disk bytes of caching rows of ``planned`` frames in ``store``: the plan's one rule
    (:func:`ccl_cache.extract.cache_budget.cache_bytes`, which ``cache-clips`` prints)."""
    from ccl_cache.extract.cache_budget import cache_bytes  # it imports this module: not at the top

    return cache_bytes(config, np.asarray(planned, np.int64), Path(store.path).suffix)


class _Segments:
    """Appends encoded pieces to the byte segments ``encoded/<k>``: to the current segment while it
    has room, else to a new one sized for the bytes still expected. A resumed build starts a new
    segment, so bytes of rows a kill left half-written are never overwritten under a cached row."""

    def __init__(self, store: Any) -> None:
        self.store = store
        names = [p.rsplit("/", 1)[1] for p in store.generic_arrays(FRAMES_ENCODED)] if store.has(FRAMES_ENCODED) else []
        self.next = 1 + max((int(n) for n in names if n.isdigit()), default=-1)
        self.segment, self.array, self.used, self.capacity = -1, None, 0, 0

    def append(self, data: np.ndarray, expected: int) -> tuple[int, int]:
        """Write ``data`` (1-D uint8); (segment, first byte). ``expected``: bytes still to come, this included."""
        if self.array is None or self.used + len(data) > self.capacity:
            size = max(len(data), min(max(expected, 1), SEGMENT_MAX_BYTES))
            self.array = self.store.create_array(FRAMES_ENCODED_SEGMENT.format(segment=self.next), (size,), "uint8",
                                                 chunk_rows=min(SEGMENT_CHUNK_BYTES, size), compression="none")
            self.segment, self.next, self.used, self.capacity = self.next, self.next + 1, 0, size
        start = self.used
        self.array[start: start + len(data)] = data
        self.used += len(data)
        return self.segment, start


class _FrameSink:
    """Writes decoded pieces where the codec's layout keeps them: the pixels into ``data``, or the
    bytes into the segments and their places into ``encoded_index``; the timestamps after."""

    def __init__(self, store: Any, config: FrameCacheConfig) -> None:
        self.codec = config.frame_codec()
        self.per_frame = self.codec.bytes_per_frame(config.size)
        self.times = store.array(FRAMES_TIMES)
        if self.codec.layout == "pixels":
            self.data = store.array(FRAMES_DATA)
        else:
            self.segments, self.index = _Segments(store), store.array(FRAMES_ENCODED_INDEX)

    def write(self, at: int, data: np.ndarray, lengths: np.ndarray, stamps: np.ndarray, frames_left: int) -> None:
        """Frames ``at...`` of ``/frames``; ``frames_left``: frames still to write, these included."""
        if self.codec.layout == "pixels":
            self.data[at: at + len(data)] = data
        else:
            expected = max(len(data), frames_left * self.per_frame)
            segment, start = self.segments.append(np.ascontiguousarray(data, np.uint8).reshape(-1), expected)
            starts = start + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            self.index[at: at + len(lengths)] = np.stack([np.full(len(lengths), segment), starts, lengths], 1)
        self.times[at: at + len(stamps)] = stamps


def _decode_rows(store: Any, config: FrameCacheConfig, rows: np.ndarray, failed: dict[int, str],
                 progress: Any) -> tuple[int, int]:
    """Decode the pieces of ``rows`` and write them; a row's count goes last, so a failed write
    (a full disk) leaves every row cached before it valid and a rerun resumes after them."""
    offset, planned = store.array(FRAMES_OFFSET)[:], store.array(FRAMES_PLANNED)[:]
    pieces_left = {int(r): -(-int(planned[r]) // config.piece_frames) for r in rows}
    sink, count = _FrameSink(store, config), store.array(FRAMES_COUNT)
    cached = frames_written = 0
    frames_left = int(planned[rows].sum())
    tasks = _piece_tasks(store, config, rows)
    with _pool_map(decode_piece, tasks, config.workers, _piece_failed) as answers:
        for row, first, data, lengths, stamps, error in answers:
            if error:
                failed[row] = error
            elif row not in failed:
                at = int(offset[row]) + first
                try:
                    sink.write(at, data, lengths, stamps, frames_left)
                except Exception as exc:
                    if os_error(exc) is None:
                        raise  # not the storage: a bug must not be reported as a disk problem
                    left = planned[[int(r) for r in rows if pieces_left[int(r)] > 0]]
                    raise explain_write_error(store.path, exc, _cache_bytes(store, config, left)) from exc
                frames_written += len(lengths)
                frames_left -= len(lengths)
            pieces_left[row] -= 1
            if pieces_left[row] == 0:
                if row not in failed:
                    count[row: row + 1] = np.array([planned[row]])
                    cached += 1
                if progress is not None:
                    progress(cached + len(failed), len(rows))
    return cached, frames_written
