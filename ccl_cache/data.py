"""Training data: clip windows of a store's videos with the cached teacher embeddings aligned.

Chen et al., "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (CVPR
2021) train the video student on 16 consecutive frames at 112×112: a random temporal start,
RandomResizedCrop (scale 0.25–1, ratio 3/4–4/3) and a horizontal flip, applied identically to
every frame of the clip, and Kinetics mean/std normalisation. Validation uses 3 evenly spaced
centre-cropped clips per video (clip top-1); the test protocol averages the softmax over
non-overlapping windows covering the whole video (video top-1). See METHOD.md.

One interface, two frame sources: the original media files (decoded with ``media.read_clip`` in
DataLoader workers) or a training frame cache in the store (:mod:`ccl_cache.frame_cache` decodes each
video once into ``/frames``; ``ccl-cache cache-clips``). Frames from either are uint8 at the
"base size" — ``(round(8/7·S), round(171/112·S))``, i.e. 128×171 for S = 112, as torchvision's
video reference resizes Kinetics — and crops are taken from there.

Teacher embeddings are loaded into RAM once per dataset as float32 tensors (forked workers share
them copy-on-write), and the DataLoader's batches look them up with one vectorised gather per
teacher (``ClipDataset.__getitems__``: about the cost of a plain numpy ``emb[rows]``, see
benchmarks/bench_distill_step.py); when they would not fit they are read lazily from the store
instead (one log line says so, with sizes). The audio embedding is the clip's (or, with segments, the segment overlapping the window most); the image embedding is a
cached frame whose timestamp lies inside the sampled window (a random one in training), else the
frame nearest the window centre. Masks say which rows/frames are present.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset, Sampler

from ccl_cache import hardware, media
from ccl_cache.errors import ConfigError, MediaError
from ccl_cache.manifest import STUDENT_SPLITS, canonical_splits
from ccl_cache.store.failures import usable_rows
from ccl_cache.store.schema import COVERAGE_PATH, FRAMES_COUNT, FRAMES_DATA, FRAMES_GROUP, FRAMES_OFFSET, FRAMES_TIMES

log = logging.getLogger(__name__)

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
MODALITIES = ("audio", "image")
_RAM_SHARE = 0.5  # teacher arrays may take at most this share of the available memory
_UNTIMED, _ABSENT = 1e20, 1e30  # slot-centre sentinels of TeacherTable (far beyond any video time)
_CENTRE_HALF = np.array([[0.5, -0.5], [0.5, 0.5]])  # windows (B, 2) @ this = (centre, half width)


# ============================================================================================
# Clip geometry and augmentation


@dataclass(frozen=True)
class ClipSpec:
    """What one training item looks like: ``frames`` frames, every ``stride``-th, ``size``².

    ``scale``/``ratio``/``flip`` are the training augmentation of the paper's code.
    """

    frames: int = 16
    stride: int = 1
    size: int = 112
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True

    def __post_init__(self) -> None:
        if self.frames < 1 or self.stride < 1 or self.size < 8:
            raise ConfigError(
                f"clip spec frames={self.frames}, stride={self.stride}, size={self.size}: "
                "need frames >= 1, stride >= 1 and size >= 8 pixels"
            )
        if not 0 < self.scale[0] <= self.scale[1] <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"crop scale {self.scale} / ratio {self.ratio}: need 0 < lo <= hi (scale <= 1)")

    @property
    def base_size(self) -> tuple[int, int]:
        """(H, W) frames are decoded at: 128×171 for size 112 (torchvision's video reference)."""
        return round(self.size * 128 / 112), round(self.size * 171 / 112)

    @property
    def span_frames(self) -> int:
        """Source frames one window covers."""
        return self.frames * self.stride


def crop_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's (top, left, h, w), drawn from ``rng`` (torchvision's algorithm)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback (torchvision's): the whole frame clamped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


_SCALE = 1.0 / (255.0 * torch.tensor(KINETICS_STD).view(3, 1, 1, 1))
_SHIFT = -torch.tensor(KINETICS_MEAN).view(3, 1, 1, 1) / torch.tensor(KINETICS_STD).view(3, 1, 1, 1)


def normalize(video: torch.Tensor) -> torch.Tensor:
    """uint8 (T, 3, H, W) → contiguous float (3, T, H, W) with Kinetics mean/std.

    The layout change happens on uint8 (a quarter of the bytes) and the maths is two in-place
    passes: 3-4x faster than float-converting the channels-last resize output first (measured).
    """
    return video.permute(1, 0, 2, 3).contiguous().float().mul_(_SCALE).add_(_SHIFT)


def augment(frames: torch.Tensor, spec: ClipSpec, rng: np.random.Generator) -> torch.Tensor:
    """Training transform of uint8 (T, H, W, 3) frames → float (3, T, S, S).

    One crop and one flip decision for the whole clip, so motion stays coherent; the resize runs
    on uint8 (torchvision's fast path) before the float conversion.
    """
    video = frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
    top, left, h, w = crop_params(video.shape[-2], video.shape[-1], spec.scale, spec.ratio, rng)
    video = TF.resized_crop(video, top, left, h, w, [spec.size, spec.size], antialias=True)
    if spec.flip and rng.random() < 0.5:
        video = video.flip(-1)
    return normalize(video)


def center(frames: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """Evaluation transform: shorter side to the base height, centre crop S×S → (3, T, S, S)."""
    video = frames.permute(0, 3, 1, 2)
    base_h = spec.base_size[0]
    h, w = video.shape[-2:]
    if min(h, w) != base_h:
        video = TF.resize(video, [base_h], antialias=True)
    return normalize(TF.center_crop(video, [spec.size, spec.size]))


# ============================================================================================
# Splits and row selection


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


def make_splits(store: Any, teachers: Mapping[str, str], val_fraction: float = 0.1, seed: int = 1) -> Splits:
    """Train/val/test rows of ``store`` (see :class:`Splits`); logs the exclusions."""
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
    if len(train) == 0:
        raise ConfigError(
            f"{store.path}: no usable training clips (split 'train'; excluded: {excluded or 'none'}); "
            "check the manifest's split column and run `ccl-cache extract` to completion"
        )
    if excluded:
        log.warning("%s: excluded %d clips: %s", store.path, sum(excluded.values()),
                    ", ".join(f"{n} {why}" for why, n in excluded.items()))
    return Splits(train, val, test, excluded, source)


# ============================================================================================
# Teacher embeddings aligned with the window


def available_memory() -> int:
    """Bytes of memory available for new allocations (MemAvailable; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def pick_slot(
    times: np.ndarray, mask: np.ndarray, window: tuple[float, float], policy: str, rng: np.random.Generator | None
) -> int:
    """Index of the cached frame/segment for a clip window, or -1 when none is present.

    ``policy="overlap"`` (audio segments): the present segment overlapping the window most.
    ``policy="inside"`` (image frames): a present frame whose time lies inside the window —
    random among them with ``rng``, else the first — or the one nearest the window centre.
    """
    present = np.flatnonzero(mask)
    if present.size == 0:
        return -1
    t0, t1 = times[present, 0], times[present, 1]
    w0, w1 = window
    if policy == "overlap":
        overlap = np.minimum(t1, w1) - np.maximum(t0, w0)
        if np.isfinite(overlap).any() and np.nanmax(overlap) > 0:  # untimed rows: no overlap
            return int(present[np.nanargmax(overlap)])
    else:
        mid = (t0 + t1) / 2
        inside = present[(mid >= w0 - 1e-6) & (mid <= w1 + 1e-6)]
        if inside.size:
            return int(inside[rng.integers(inside.size)] if rng is not None else inside[0])
    distance = np.abs((t0 + t1) / 2 - (w0 + w1) / 2)
    return int(present[np.nanargmin(distance)]) if np.isfinite(distance).any() else int(present[0])


class TeacherTable:
    """One teacher's embeddings for window-aligned lookup: in RAM (float32 tensor) or read lazily.

    :meth:`lookup_batch` serves a whole DataLoader batch with a few vectorised numpy operations
    (slot choice + one gather), so a lookup costs about what a plain ``emb[rows]`` gather does;
    :meth:`lookup` is the same for one row.
    """

    def __init__(self, key: str, dim: int, frames: int | None, times: np.ndarray, mask: np.ndarray,
                 embedding: torch.Tensor | None) -> None:
        self.key = key
        self.modality = key.split("/", 1)[0]
        self.dim = dim
        self.frames = frames
        self.times = times  # (N, K, 2) float64: small, always in RAM
        self.mask = mask  # (N,) or (N, K) bool
        self.embedding = embedding  # None = lazy: read rows from the store
        # A numpy view of the same memory (numpy fancy indexing has less per-call overhead than
        # torch's), C-contiguous so that the (N * K, D) view of a frame table is free.
        self._array = np.ascontiguousarray(embedding.numpy()) if embedding is not None else None
        self._mid = self._any = self._upper = None  # clip-level tables need none of these
        self._all_present = True
        if frames is not None:
            # Slot centres for the "inside" policy, with sentinels instead of NaN so that one
            # argmin also does pick_slot's fallbacks: an untimed slot comes after every timed one,
            # an absent slot after those. Rows with no present slot are flagged apart.
            mid = times.mean(-1)
            self._mid = np.where(mask, np.where(np.isnan(mid), _UNTIMED, mid), _ABSENT)
            self._any = mask.any(1)
            self._all_present = bool(self._any.all())  # usual: failed rows are not trained on
            self._upper = np.triu(np.ones((frames, frames), np.float32))  # inside @ upper = cumsum
        self.policy = "overlap" if self.modality == "audio" else "inside"

    @classmethod
    def load(cls, store: Any, key: str, in_ram: bool | None = None) -> "TeacherTable":
        """Read ``key``'s times and mask, and its embeddings unless they do not fit in RAM."""
        arrays = store.teacher(key)
        need = 4 * int(np.prod(arrays.embedding.shape))
        budget = int(_RAM_SHARE * available_memory())
        if in_ram is None:
            in_ram = need <= budget
            if not in_ram:
                log.warning(
                    "%s: teacher %s needs %.2f GiB as float32 but only %.2f GiB (half the available "
                    "memory) is allowed; reading its rows lazily from the store (slower per item)",
                    store.path, key, need / 2**30, budget / 2**30)
        times, mask = np.asarray(arrays.times[:], np.float64), np.asarray(arrays.mask[:], bool)
        embedding = torch.from_numpy(store.load_teacher(key)[0]) if in_ram else None
        return cls(key, arrays.dim, arrays.frames, times, mask, embedding)

    def lookup(self, row: int, window: tuple[float, float], rng: np.random.Generator | None,
               store: Any = None) -> tuple[torch.Tensor, bool]:
        """(embedding (D,) float32, present) of ``row`` for a window in file seconds.

        With ``rng`` a frame-level teacher draws one uniform number (the random pick among the
        frames inside the window); ``lookup_batch`` with that number gives the same answer.
        """
        if self.frames is None and self._array is not None:  # clip level in RAM: a plain row copy
            return torch.from_numpy(self._array[row].copy()), bool(self.mask[row])
        u = None if rng is None or self.frames is None else np.array([rng.random()])
        emb, present = self.lookup_batch(np.array([row]), np.array([window], np.float64), u, store)
        return emb[0], bool(present[0])

    def lookup_batch(self, rows: np.ndarray, windows: np.ndarray, u: np.ndarray | None = None,
                     store: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, D) float32, present (B,) bool) of ``rows`` for windows (B, 2) in seconds.

        ``u`` (B,) uniform [0, 1) numbers pick a random frame among those inside each window
        (training); None picks the first. Missing rows/frames give zeros and False.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.frames is None:
            emb = self._array[rows] if self._array is not None else self._read(rows, None, store)
            return torch.from_numpy(emb), torch.from_numpy(self.mask[rows])
        windows = np.asarray(windows, np.float64).reshape(-1, 2)
        if self.policy == "overlap":
            slots = self.pick_slots(rows, windows, u)
            ok = slots >= 0
            full = bool(ok.all())
        else:
            slots, ok, full = self._inside(rows, windows, u)
        take = slots if full else np.where(ok, slots, 0)
        if self._array is None:
            emb = self._read(rows, take, store)
        else:  # one flat gather: rows * K + slot indexes the (N * K, D) view
            emb = np.take(self._array.reshape(-1, self.dim), rows * self.frames + take, axis=0)
        if not full:
            emb[~ok] = 0.0
        return torch.from_numpy(emb), torch.from_numpy(ok)

    def pick_slots(self, rows: np.ndarray, windows: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """Vectorised :func:`pick_slot` over a batch: the slot of each row (-1: none present)."""
        if self.policy == "overlap":
            present = self.mask[rows]
            times = self.times[rows]
            overlap = np.minimum(times[..., 1], windows[:, 1:]) - np.maximum(times[..., 0], windows[:, :1])
            overlap[~present | np.isnan(overlap)] = -np.inf
            slots = overlap.argmax(1)
            hit = overlap[np.arange(len(rows)), slots] > 0
            if not hit.all():  # nearest present slot to the window centre (or the first present)
                slots = np.where(hit, slots, self._nearest(rows, windows, present))
            return slots
        slots, ok, full = self._inside(rows, windows, u)
        return slots if full else np.where(ok, slots, -1)

    def _inside(self, rows: np.ndarray, windows: np.ndarray, u: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Image policy: a frame inside the window (the ``u``-quantile among them, else the
        first), else the frame nearest the window centre. Returns (slots, rows with a present
        frame, whether all have one); a row without frames gets an arbitrary slot there.

        About fifteen numpy calls on (B, K) arrays whatever the batch holds: at training batch
        sizes their fixed cost, not the data, is what a lookup pays.
        """
        centre_half = windows @ _CENTRE_HALF  # (B, 2): centre, half width
        dist = self._mid[rows]  # a fresh array: the maths below runs in place
        np.abs(np.subtract(dist, centre_half[:, :1], out=dist), out=dist)
        inside = dist <= centre_half[:, 1:] + 1e-6
        seen = np.dot(inside, self._upper)  # running count of frames inside (5x faster than cumsum)
        count = seen[:, -1]
        rank = np.zeros(1, np.float32) if u is None else np.floor(u * count)
        slots = np.where(count > 0, (seen > rank[:, None]).argmax(1), dist.argmin(1))
        if self._all_present:
            return slots, np.ones(len(rows), bool), True
        present = self._any[rows]
        return slots, present, bool(present.all())

    def _nearest(self, rows: np.ndarray, windows: np.ndarray, present: np.ndarray) -> np.ndarray:
        dist = np.abs(self.times[rows].mean(-1) - windows.mean(1, keepdims=True))
        dist[~present | np.isnan(dist)] = np.inf
        near = dist.argmin(1)
        first = np.where(present.any(1), present.argmax(1), -1)
        return np.where(np.isfinite(dist[np.arange(len(rows)), near]), near, first)

    def _read(self, rows: np.ndarray, slots: np.ndarray | None, store: Any) -> np.ndarray:
        # The embedding array alone: times and masks are in RAM already, and skipping their
        # (compressed) reads makes a lazy batch ~10x cheaper (benchmarks/bench_distill_step.py).
        data = store.teacher(self.key).embedding.read_rows(rows)
        data = data if slots is None else data[np.arange(len(rows)), slots]
        return np.ascontiguousarray(data, dtype=np.float32)


# ============================================================================================
# Frame sources


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
            assert self.cache is not None
            first = _random_start(int(self.cache.count[row]), self.spec.span_frames, rng)
            return self._cache_window(row, first)
        info, fps = self.infos[row], self._file_fps(row)
        length = int(math.floor((self._file_end(row) - info.start) * fps + 1e-6))
        return self._file_window(row, self._frame_time(row, _random_start(length, self.spec.span_frames, rng)))

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


# ============================================================================================
# The frame cache (reading side; building is below)


@dataclass
class FrameCacheIndex:
    """Where each row's cached frames live in ``/frames/data`` (count 0 = not cached)."""

    offset: np.ndarray  # (N,) int64 first frame of the row
    count: np.ndarray  # (N,) int64 frames written (<= 0: not cached, read the file)
    size: tuple[int, int]
    fps: float | None

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
        return cls(offset, count, tuple(attrs.get("size", (0, 0))), attrs.get("fps"))

    def read(self, store: Any, row: int, first: int, frames: int, stride: int) -> Window:
        """``frames`` frames every ``stride`` from local frame ``first``; repeats the last at the end."""
        count = int(self.count[row])
        first = min(max(0, first), count - 1)
        stop = min(count, first + frames * stride)
        base = int(self.offset[row])
        data = store.array(FRAMES_DATA)[base + first: base + stop]
        times = store.array(FRAMES_TIMES)[base + first: base + stop]
        pick = np.minimum(np.arange(frames) * stride, len(data) - 1)  # pad like read_clip(pad=True)
        return Window(np.asarray(data[pick]), np.asarray(times[pick], dtype=np.float64))


# ============================================================================================
# Datasets


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


# ============================================================================================
# Sampling and loaders


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: a seeded permutation per epoch, sharded across ranks.

    The order is a pure function of (seed, epoch) — a resumed run continues exactly where it
    stopped with :meth:`set_epoch` ``(epoch, skip)``. With ``world > 1`` the permutation is padded
    by wrapping around to a multiple of ``world`` and rank r takes every world-th index from r
    (as torch's DistributedSampler does).
    """

    def __init__(self, size: int, *, seed: int = 1, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        if size < 1:
            raise ConfigError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle, self.rank, self.world = size, int(seed), shuffle, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch``, leaving out the first ``skip`` items of this rank (already trained)."""
        self.epoch, self.skip = int(epoch), int(skip)

    def per_rank(self) -> int:
        return -(-self.size // self.world)

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank() * self.world
        order = (order * (-(-total // self.size)))[:total]
        for idx in order[self.rank::self.world][self.skip:]:
            yield self.epoch, idx


def _worker_init(_: int) -> None:
    # Why: each worker decodes/resizes one clip at a time; intra-op or decoder threads would
    # oversubscribe the cores the other workers use.
    torch.set_num_threads(1)
    media.set_decoder_threads(1)


DEFAULT_WORKERS = 4  # loader processes when not given, at most one per usable core


def default_workers(workers: int | None) -> int:
    """``workers``, or for None ``DEFAULT_WORKERS`` but at most one per usable core (more only
    queue behind each other, and torch warns about it)."""
    return min(DEFAULT_WORKERS, hardware.usable_cores()) if workers is None else workers


def make_loader(dataset: Dataset, *, batch_sampler: Any = None, batch_size: int = 1, workers: int | None = 0,
                pin_memory: bool = False, prefetch: int = 2, collate: Any = None) -> torch.utils.data.DataLoader:
    """A DataLoader with the project's settings: persistent forked workers, pinned memory;
    ``workers=None``: :func:`default_workers`."""
    workers = default_workers(workers)
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory, "worker_init_fn": _worker_init}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch)
    if collate is not None:
        kwargs["collate_fn"] = collate
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
