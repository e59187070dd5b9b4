"""The extraction pipeline: decode → teachers → store, resumable, sharded, failures as data.

Chen et al. ("Distilling Audio-Visual Knowledge by Compositional Contrastive Learning",
CVPR 2021) distil a video student from an audio teacher (PANNs CNN14) and an image teacher
(ImageNet ResNet-34). The teachers are frozen, so ccl-cache runs them once per clip and caches
what they say in a store (``ccl_cache.store``); training then reads the cache.

Three stages overlap:

1. **decode** in worker processes (``forkserver``: fresh processes, never forked from the one
   running CUDA and threads): each clip is probed, its decodable span measured
   (``media.measure_coverage``), its audio read at the audio teacher's sample rate and its
   frames read at the image teacher's size. A clip that overruns ``timeout_s`` has its worker
   killed and replaced; the clip is recorded as a ``"timeout"`` failure.
2. **inference** in the calling thread: batched, ``torch.inference_mode``; on CPU the teachers
   run in ``channels_last`` (same values; measured 1.3-1.5x faster for the small teachers and
   1.3x for ResNet-18 with oneDNN). With ``amp``: autocast to bfloat16 on CUDA (float16 on GPUs
   without bfloat16, image teachers only: log-mel powers overflow float16) and on CPUs with
   bfloat16 units (AMX / AVX512-BF16: a further 1.7-2.8x for the small teachers, 2.8x for
   ResNet-18; embeddings within cosine 0.99999 of float32); other CPUs stay in float32.
3. **write** in a background thread: whole store chunks are committed in the order *failures,
   data, done ledger* (``Store.write_rows`` writes the data before the done flags), so a kill at
   any moment loses at most the chunks in flight and never leaves a row marked done that is not.

Policies (the frame and audio policies and the dtype are part of each teacher's fingerprint in
the store, so a resume with other settings is refused rather than mixed in):

* **Clip window**: the manifest's ``[start, end)`` or the whole file; times are seconds relative
  to the file's start (``ccl_cache.media``). Partially decodable files (``coverage`` = fraction of
  the window that decodes) are cut to their decodable span; below ``min_coverage`` the clip is a
  ``"partial"`` failure.
* **Frames** (image teachers): ``frames_per_clip`` K frames at the centres of K equal parts of
  the window, ``t_k = s + (k + 1/2)(e - s)/K``; decoded with the shorter side at
  ``image_size`` (aspect kept), centre-cropped by the teacher. Stored: embedding (N, K, D);
  ``times[n, k] = (pts, pts)`` — the presentation time of the decoded frame, an instant.
  ``frame_sampling`` says which frame stands for ``t_k``: ``"spread"`` (default) the frame
  displayed at ``t_k`` (``media.read_frames``: decodes from the keyframe before each ``t_k``);
  ``"keyframes"`` a keyframe near ``t_k``, distinct ones while the clip has enough
  (``media.read_keyframes``: decodes keyframes only, ~10x fewer frames on long GOPs; with few
  keyframes several of the K frames are the same picture, and a keyframe may lie just outside the
  window). ``times`` holds the pts actually decoded either way, so training still picks a frame
  by its true time.
* **Audio** (audio teachers): clip level by default — one embedding of the whole window,
  (N, D), ``times[n, 0] = (s, e)``. With ``audio_segment`` L seconds: consecutive L-second
  segments from the window start, (N, K_a, D) with K_a the most segments any clip has; a tail
  shorter than L is dropped unless the clip is shorter than one segment (then it is one short
  segment). Unused segment slots have mask False. Audio is never zero-padded to a batch:
  padding changes a pooled embedding, so clips (segments) of equal length are batched together
  and others run in their own batches (the 10 s clips of VGGSound form one batch).
* **Missing audio** (no audio stream) is not a failure: mask False, zero embedding.
* **Coverage** of every decoded clip goes to the per-clip array ``extraction/coverage`` (float32,
  NaN = not measured), failed or not. The packets the video decoder rejected while reading a
  clip's frames (``Frames.decode_errors``) go to ``extraction/decode_errors`` (int32, -1 = no
  frames read). ``strict`` makes a clip with decoder errors a ``"decode"`` failure; by default
  such damage is tolerated (and counted) when frames come out.
* **Audio track**: the first audio stream in file order (``media.read_audio(stream=0)``),
  recorded as ``audio_stream: 0`` in the audio teacher's fingerprint.
* **Failures** (decode errors, timeouts, crashed workers, ``"partial"``, ``"teacher-nonfinite"``
  outputs, ``"teacher-error"``) are data: the failed modality's row gets mask False and a zero
  embedding (a file that does not decode fails every modality; an audio-only problem leaves the
  image embedding valid), is marked done (a plain rerun skips it; ``retry_failed`` redoes failed
  and unfinished rows, and clears a row's ledger entry when it succeeds for every teacher stored)
  and is recorded in the store's failure ledger and in ``<store>.failures.jsonl``.

Files written beside the store: ``<store>.extract.yaml`` (the resolved config: absolute paths,
the shard and device used; Zarr shards: ``<store>.extract-shard-I-of-N.yaml``) and
``<store>.failures.jsonl`` (one JSON line per failure: time, row, id, path, stage, reason,
message, coverage). Manifests are read with ``check_files=False``: a missing file is a
``"not-found"`` failure of its row, not an error that stops the run.

Scale-out: ``shard="I/N"`` (or ``RANK``/``WORLD_SIZE`` from torchrun) processes a contiguous,
chunk-aligned block of rows (``store.schema.shard_slices``). Zarr shards write into one store
concurrently, each under its own lease; HDF5 shards write ``<stem>.shard-I-of-N.h5`` files that
``merge_shards`` joins.

Heavy modules (torch, the teachers, the store backends) are imported inside the functions that
need them: decode workers import this module (``forkserver``) and need only PyAV and numpy.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from ccl_cache import hardware, media
from ccl_cache.errors import (
    CclCacheError, ConfigError, ExtractError, MediaError, NoAudioError, StoreError, StoreLockedError,
    StoreMismatchError,
)
from ccl_cache.fileio import save_config
from ccl_cache.store.failures import graver
from ccl_cache.store.schema import COVERAGE_PATH, DECODE_ERRORS_PATH
from ccl_cache.store.space import check_free_space, explain_write_error

if TYPE_CHECKING:
    import torch

    from ccl_cache.manifest import Manifest
    from ccl_cache.store import Store
    from ccl_cache.teachers import Teacher

log = logging.getLogger(__name__)

FRAME_TIMES = "uniform-centres"  # t_k = s + (k + 1/2)(e - s)/K over the (decodable) window
FRAME_DECODE = "shorter-side=image_size"  # decode size before the teacher's centre crop
FRAME_SAMPLING = ("spread", "keyframes")  # which frame stands for each t_k (the first is the default)
DTYPES = ("float16", "float32")
FLOAT16_MAX = 65504.0
FAILURE_LOG_SUFFIX = ".failures.jsonl"
AUDIO_STREAM = 0  # which audio stream is embedded: the first in file order (deterministic, fingerprinted)

# Exit statuses of `ccl-cache extract` (documented in its --help).
EXIT_OK, EXIT_FAILED_CLIPS = 0, 1  # usage/config errors exit with 2 (ccl_cache_cli.main)


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction run needs; saved as YAML beside the store.

    ``audio_teacher``/``image_teacher``: a registered teacher name, ``"pkg.module:factory"``
    or None (skip that modality). ``*_weights``: a file, a built-in tag ("imagenet") or None
    (random, warned). ``frame_sampling``: ``"spread"`` (frames at the K sample times) or
    ``"keyframes"`` (keyframes near them, decoding keyframes only). ``batch_size`` becomes the
    store's ``chunk_rows`` when the store is created (an existing store keeps its own).
    ``shard``: ``"I/N"``; None reads torchrun's ``RANK``/``WORLD_SIZE`` when set. ``workers=0``
    decodes in the calling thread (no timeouts). ``threads``: torch intra-op threads for the
    teachers while extraction runs; None means, on CPU, the cores the decode workers leave (at
    least 1) and, on CUDA, torch's default. Oversubscribing the cores costs more than it gives:
    on 2 cores with 2 workers (48 clips of 10 s, keyframes, amp) 1 thread gave 8.96 clips/s/core
    end to end, 2 threads 7.68.
    """

    manifest: str
    store: str
    format: str = "auto"
    root: str | None = None
    audio_teacher: str | None = "cnn14_emb512"
    audio_weights: str | None = None
    image_teacher: str | None = "resnet34"
    image_weights: str | None = "imagenet"
    image_size: int = 112
    frames_per_clip: int = 8
    frame_sampling: str = "spread"
    audio_segment: float | None = None
    dtype: str = "float16"
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    threads: int | None = None
    shard: str | None = None
    overwrite: bool = False
    retry_failed: bool = False
    min_coverage: float = 0.5
    strict: bool = False
    timeout_s: float = 60.0
    force: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        checks: list[tuple[bool, str]] = [
            (self.audio_teacher is not None or self.image_teacher is not None,
             "no teacher chosen: pass an audio teacher, an image teacher or both"),
            (self.dtype in DTYPES, f"dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}"),
            (self.frames_per_clip >= 1, f"frames_per_clip={self.frames_per_clip}: need at least 1"),
            (self.frame_sampling in FRAME_SAMPLING,
             f"frame_sampling={self.frame_sampling!r}: choose one of {', '.join(FRAME_SAMPLING)}"),
            (self.image_size >= 8, f"image_size={self.image_size}: need at least 8 pixels"),
            (self.audio_segment is None or self.audio_segment > 0,
             f"audio_segment={self.audio_segment}: need a positive number of seconds (or none)"),
            (self.batch_size >= 1, f"batch_size={self.batch_size}: need at least 1"),
            (self.workers >= 0, f"workers={self.workers}: need 0 (decode in-process) or more"),
            (self.threads is None or self.threads >= 1,
             f"threads={self.threads}: need at least 1 (or none: the cores the decode workers leave)"),
            (0.0 <= self.min_coverage <= 1.0, f"min_coverage={self.min_coverage}: need a fraction in [0, 1]"),
            (self.timeout_s > 0, f"timeout_s={self.timeout_s}: need a positive number of seconds"),
            (not (self.overwrite and self.retry_failed),
             "overwrite and retry_failed contradict each other: overwrite recomputes every row"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        hardware.check_device_name(self.device)
        if self.shard is not None:
            parse_shard(self.shard)


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` → ``(3, 8)`` (shard 3 of 8, numbered from 0); ConfigError otherwise."""
    from ccl_cache.store.schema import parse_shard as store_parse_shard

    return store_parse_shard(text)


def resolve_shard(shard: str | None) -> tuple[int, int] | None:
    """The shard to run: the given ``"I/N"``, else torchrun's RANK/WORLD_SIZE, else None (all)."""
    if shard is not None:
        index, count = parse_shard(shard)
        return None if count == 1 else (index, count)
    world, rank = os.environ.get("WORLD_SIZE", ""), os.environ.get("RANK", "0")
    if not world or world == "1":
        return None
    index, count = parse_shard(f"{rank}/{world}")  # ConfigError names bad torchrun variables
    return index, count


def shard_label(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def store_path_for(store: str | Path, shard: tuple[int, int] | None) -> Path:
    """Where this process writes: the store itself, or ``<stem>.shard-I-of-N.h5`` for HDF5 shards."""
    path = Path(store)
    if shard is None or path.suffix.lower() == ".zarr":
        return path
    return path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}{path.suffix}")


def config_path_for(store_path: Path, shard: tuple[int, int] | None) -> Path:
    """``<store>.extract.yaml``, or ``<store>.extract-shard-I-of-N.yaml`` for Zarr shards."""
    if shard is not None and store_path.suffix.lower() == ".zarr":
        return store_path.with_name(f"{store_path.name}.extract-shard-{shard[0]}-of-{shard[1]}.yaml")
    return store_path.with_name(f"{store_path.name}.extract.yaml")


def failure_log_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + FAILURE_LOG_SUFFIX)


# ----------------------------------------------------------------------------------------------
# Decoding (runs in worker processes)


@dataclass(frozen=True)
class DecodeSpec:
    """What workers produce for every clip (picklable; the same for the whole run)."""

    sample_rate: int | None = None  # audio wanted at this rate; None = no audio teacher
    frames_per_clip: int = 8
    frame_sampling: str = "spread"  # "spread": media.read_frames; "keyframes": media.read_keyframes
    image_size: int | None = None  # shorter side of decoded frames; None = no image teacher
    min_coverage: float = 0.5
    strict: bool = False


@dataclass(frozen=True)
class ClipTask:
    """One clip to decode: ``kind`` is "decode" or "probe" (duration only)."""

    row: int
    path: str
    start: float | None
    end: float | None
    audio: bool = False
    image: bool = False
    kind: str = "decode"


@dataclass(frozen=True)
class Failure:
    """Why a clip (or one modality of it) has no embedding; stored in the failure ledger."""

    stage: str  # "decode" | "audio" | "image" | "teacher"
    reason: str  # MediaError.reason, "timeout", "crash", "partial", "teacher-nonfinite", "teacher-error", "error"
    message: str
    coverage: float | None = None


@dataclass
class DecodedClip:
    """A worker's answer for one clip; ``failures`` maps a modality to why it is unusable."""

    row: int
    window: tuple[float, float] = (0.0, 0.0)  # decodable window [s, e) in file seconds
    duration: float = math.nan
    coverage: float | None = None
    has_audio: bool = False
    audio: np.ndarray | None = None  # (S,) float32 mono at spec.sample_rate
    frames: np.ndarray | None = None  # (K, H, W, 3) uint8 RGB
    frame_times: np.ndarray | None = None  # (K,) float64 pts of the decoded frames
    decode_errors: int | None = None  # packets the video decoder rejected (None: no frames read)
    failures: dict[str, Failure] = field(default_factory=dict)
    seconds: float = 0.0


def _modalities(task: ClipTask) -> list[str]:
    return [m for m, wanted in (("audio", task.audio), ("image", task.image)) if wanted]


def _fail_all(clip: DecodedClip, task: ClipTask, failure: Failure) -> DecodedClip:
    for modality in _modalities(task) or ["audio", "image"]:
        clip.failures[modality] = failure
    return clip


def _window(task: ClipTask, info: media.MediaInfo) -> tuple[float, float]:
    """The clip window [s, e) in file seconds, checked against the file's duration."""
    start = 0.0 if task.start is None else float(task.start)
    end = info.duration if task.end is None else min(float(task.end), info.duration)
    if not end > start:
        raise MediaError(
            task.path, "window",
            f"clip window [{start:.3f}, {task.end}) lies outside the file (duration {info.duration:.3f} s); "
            "fix start/end in the manifest",
        )  # fmt: skip
    return start, end


def _decodable_window(task: ClipTask, info: media.MediaInfo, spec: DecodeSpec) -> tuple[tuple[float, float], float]:
    """The window cut to the decodable span of the file, and the fraction of the window kept."""
    start, end = _window(task, info)
    if info.duration <= 0:
        return (start, end), 1.0
    span = media.measure_coverage(task.path) * info.duration
    kept_end = min(end, span)
    coverage = max(0.0, kept_end - start) / (end - start)
    return (start, kept_end), coverage


def frame_times(window: tuple[float, float], count: int) -> list[float]:
    """K sample times at the centres of K equal parts of the window (the frame policy)."""
    start, end = window
    step = (end - start) / count
    return [start + (k + 0.5) * step for k in range(count)]


def frame_size(info: media.MediaInfo, short_side: int) -> tuple[int, int]:
    """(H, W) with the shorter side at ``short_side`` and the aspect ratio kept (even sizes)."""
    video = info.video
    if video is None or video.width <= 0 or video.height <= 0:
        return short_side, short_side
    scale = short_side / min(video.width, video.height)
    height = max(short_side, 2 * round(video.height * scale / 2))
    width = max(short_side, 2 * round(video.width * scale / 2))
    return height, width


def _decode_image(clip: DecodedClip, task: ClipTask, info: media.MediaInfo, spec: DecodeSpec) -> None:
    try:
        size = frame_size(info, int(spec.image_size or 0))
        read = media.read_keyframes if spec.frame_sampling == "keyframes" else media.read_frames
        frames = read(task.path, frame_times(clip.window, spec.frames_per_clip), size=size)
        clip.decode_errors = int(frames.decode_errors)
        if spec.strict and frames.decode_errors:
            raise MediaError(task.path, "decode", f"the decoder rejected {frames.decode_errors} packet(s) "
                             "(--strict); re-encode or re-download the file, or run without --strict")
        clip.frames, clip.frame_times = frames.frames, np.asarray(frames.times, dtype=np.float64)
    except MediaError as exc:
        clip.failures["image"] = Failure("image", exc.reason, str(exc), clip.coverage)


def _decode_audio(clip: DecodedClip, task: ClipTask, spec: DecodeSpec) -> None:
    try:
        start, end = clip.window
        clip.audio = media.read_audio(task.path, sample_rate=int(spec.sample_rate or 0), start=start, end=end,
                                      stream=AUDIO_STREAM)
        clip.has_audio = clip.audio.size > 0
    except NoAudioError:
        clip.has_audio = False  # a missing modality, not a failure: the mask says so
    except MediaError as exc:
        clip.failures["audio"] = Failure("audio", exc.reason, str(exc), clip.coverage)


def decode_clip(task: ClipTask, spec: DecodeSpec) -> DecodedClip:
    """Decode what ``task`` asks for; every problem becomes a :class:`Failure`, never an exception."""
    began = time.perf_counter()
    clip = DecodedClip(row=task.row)
    try:
        info = media.probe(task.path)
        clip.duration = float(info.duration)
        clip.has_audio = info.has_audio
        if task.kind == "probe":
            clip.window = _window(task, info)
            return clip
        clip.window, clip.coverage = _decodable_window(task, info, spec)
        if clip.coverage < spec.min_coverage:
            message = (
                f"{task.path}: only {clip.coverage:.0%} of the clip window decodes (minimum "
                f"{spec.min_coverage:.0%}); re-download the file or lower --min-coverage"
            )
            return _fail_all(clip, task, Failure("decode", "partial", message, clip.coverage))
        if task.image:
            _decode_image(clip, task, info, spec)
        elif not info.has_video:
            # No image teacher here, but the student reads frames: the ledger must say the clip has
            # none, or a distill run on this store fails on it in its loader (store.failures.usable_rows).
            clip.failures["image"] = Failure("image", "no-video", f"{task.path}: has no video stream; the audio "
                                             "embedding is kept, no video student can use the clip")
        if task.audio and clip.has_audio:
            _decode_audio(clip, task, spec)
    except MediaError as exc:
        _fail_all(clip, task, Failure("decode", exc.reason, str(exc), clip.coverage))
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not end a long run
        _fail_all(clip, task, Failure("decode", "error", f"{task.path}: {type(exc).__name__}: {exc}", clip.coverage))
    finally:
        clip.seconds = time.perf_counter() - began
    return clip


DecodeFn = Callable[[ClipTask, DecodeSpec], DecodedClip]


WORKER_START_S = 120.0  # a decode process that is not ready by then is broken (imports, resources)
READY = "ready"


def _worker_main(conn: multiprocessing.connection.Connection, spec: DecodeSpec, decode: DecodeFn) -> None:
    """Decode worker: say it is ready, then answer one task at a time until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    media.set_decoder_threads(1)  # one worker per core: decoder threads would only add CPU
    conn.send(READY)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(decode(task, spec))


class _Worker:
    """One decode process, whether it has started, and the task it is working on."""

    def __init__(self, ctx: Any, spec: DecodeSpec, decode: DecodeFn) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, spec, decode), daemon=True, name="ccl-decode")
        self.proc.start()
        child.close()
        self.ready = False
        self.task: ClipTask | None = None
        # The per-clip clock starts at assignment, and only ready workers get clips: a slow
        # start (spawn imports) never counts against a clip.
        self.deadline = time.monotonic() + WORKER_START_S

    @property
    def waiting(self) -> bool:
        """True while we wait for this worker: starting up or decoding."""
        return not self.ready or self.task is not None

    def assign(self, task: ClipTask, timeout_s: float) -> None:
        self.task, self.deadline = task, time.monotonic() + timeout_s
        self.conn.send(task)

    def started(self) -> None:
        """Consume the start-up message (call when the connection is readable and not ready)."""
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            message = None
        if message != READY:
            raise ExtractError(
                f"a decode worker process exited while starting (exit code {self.proc.exitcode}; its "
                "error is printed above). Workers start as fresh processes (forkserver): a script that runs "
                "the extraction must guard its entry point with `if __name__ == \"__main__\":`; workers=0 (--workers 0) "
                "decodes in the main process instead"
            )
        self.ready = True

    def stop(self, kill: bool = False) -> None:
        if not kill:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
            self.proc.join(timeout=2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5.0)
        self.conn.close()


class DecodePool:
    """Decode :class:`ClipTask` s in ``workers`` processes; results come back in any order.

    A dispatcher thread feeds idle workers, collects results, and replaces a worker that
    overruns ``timeout_s`` on one clip (killed: the clip becomes a "timeout" failure) or dies
    (a "crash" failure). At most ``readahead`` results wait unconsumed, bounding memory.
    ``workers=0`` decodes inline in :meth:`get` (no timeout). ``decode`` is the per-clip function
    (a module-level function, so that spawned workers can import it); :func:`decode_clip` by default.
    """

    def __init__(self, spec: DecodeSpec, workers: int, timeout_s: float, readahead: int = 128,
                 decode: DecodeFn | None = None) -> None:
        self.spec, self.workers, self.timeout_s = spec, workers, timeout_s
        self.decode: DecodeFn = decode or decode_clip
        self._tasks: collections.deque[ClipTask] = collections.deque()
        self._out: queue.Queue[DecodedClip] = queue.Queue()
        self._slots = threading.Semaphore(max(1, readahead))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.replaced = 0  # workers killed (timeout) or lost (crash)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, tasks: Sequence[ClipTask]) -> None:
        self._tasks.extend(tasks)
        if self.workers > 0 and tasks:
            self._thread = threading.Thread(target=self._dispatch, name="ccl-decode-dispatch", daemon=True)
            self._thread.start()

    def get(self) -> DecodedClip:
        """The next finished clip (blocks)."""
        if self.workers == 0:
            return self.decode(self._tasks.popleft(), self.spec)
        while True:
            try:
                clip = self._out.get(timeout=0.5)
            except queue.Empty:
                if self._error is not None:
                    if isinstance(self._error, CclCacheError):
                        raise self._error
                    raise ExtractError(f"the decode pool stopped: {self._error!r}") from self._error
                continue
            self._slots.release()
            return clip

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)

    def _dispatch(self) -> None:
        # forkserver: workers fork from a clean server process (never from this one, which runs
        # threads), and only the first start pays the imports; replacements are cheap.
        ctx = multiprocessing.get_context("forkserver")
        workers = [_Worker(ctx, self.spec, self.decode) for _ in range(self.workers)]
        try:
            while not self._stop.is_set():
                self._feed(workers)
                waiting = [w for w in workers if w.waiting]
                if not any(w.task is not None for w in workers) and not self._tasks:
                    return
                if not waiting:
                    time.sleep(0.01)  # readahead full: wait for the consumer
                    continue
                multiprocessing.connection.wait([w.conn for w in waiting] + [w.proc.sentinel for w in waiting], 0.1)
                for i, worker in enumerate(workers):
                    if worker.waiting:
                        workers[i] = self._service(ctx, worker)
        except BaseException as exc:  # noqa: BLE001 - reported to the consumer by get()
            self._error = exc
        finally:
            for worker in workers:
                worker.stop(kill=self._stop.is_set() or self._error is not None)

    def _feed(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.ready and worker.task is None and self._tasks:
                if not self._slots.acquire(blocking=False):
                    return
                worker.assign(self._tasks.popleft(), self.timeout_s)

    def _service(self, ctx: Any, worker: _Worker) -> _Worker:
        """Collect the worker's message, or replace it when it died or overran its deadline."""
        if not worker.ready:
            if worker.conn.poll():
                worker.started()
            elif not worker.proc.is_alive() or time.monotonic() > worker.deadline:
                raise ExtractError(f"a decode worker did not start within {WORKER_START_S:g} s "
                                   f"(exit code {worker.proc.exitcode}); the machine may be overloaded")
            return worker
        task = worker.task
        assert task is not None
        if worker.conn.poll():
            try:
                self._out.put(worker.conn.recv())
                worker.task = None
                return worker
            except (EOFError, OSError):
                failure = Failure("decode", "crash", f"{task.path}: the decoder process died on this file")
        elif not worker.proc.is_alive():
            failure = Failure("decode", "crash", f"{task.path}: the decoder process died on this file")
        elif time.monotonic() > worker.deadline:
            failure = Failure(
                "decode", "timeout",
                f"{task.path}: decoding took longer than {self.timeout_s:g} s; the file may be damaged "
                "or on a stalled mount (raise --timeout if it is just long)",
            )  # fmt: skip
        else:
            return worker
        worker.stop(kill=True)
        self.replaced += 1
        self._out.put(_fail_all(DecodedClip(row=task.row), task, failure))
        return _Worker(ctx, self.spec, self.decode)


# ----------------------------------------------------------------------------------------------
# Inference


@dataclass
class TeacherRows:
    """One teacher's output for the rows of a chunk that it computed."""

    rows: np.ndarray  # (R,) absolute row numbers
    embedding: np.ndarray  # (R, D) or (R, K, D) float32
    times: np.ndarray  # (R, K, 2) float64 (K = 1 for clip-level audio)
    mask: np.ndarray  # (R,) or (R, K) bool
    failures: dict[int, Failure] = field(default_factory=dict)
    missing: set[int] = field(default_factory=set)  # rows without an audio stream


class TeacherRunner:
    """Runs one teacher over decoded clips: batched forward passes, finiteness and range checks.

    ``slots`` is K (frames per clip for images, audio segments for segmented audio) or None for
    clip-level audio. Inputs of equal shape are batched, ``max_items`` frames/waves at a time;
    a batch that raises is retried item by item so one bad clip does not fail its neighbours.
    """

    def __init__(self, key: str, teacher: "Teacher", device: str, *, amp: bool, dtype: str,
                 slots: int | None, segment_seconds: float | None = None, max_items: int = 256) -> None:
        self.key, self.teacher, self.device = key, teacher, device
        self.amp, self.dtype, self.slots = amp, dtype, slots
        self.segment_seconds, self.max_items = segment_seconds, max_items
        self.modality = teacher.modality

    def run(self, clips: Sequence[DecodedClip]) -> TeacherRows:
        k = self.slots or 1
        rows = np.array([c.row for c in clips], dtype=np.int64)
        emb = np.zeros((len(clips), k, self.teacher.dim), dtype=np.float32)
        times = np.zeros((len(clips), k, 2), dtype=np.float64)
        mask = np.zeros((len(clips), k), dtype=bool)
        out = TeacherRows(rows, emb, times, mask)
        units = self._units(clips, out)
        results = self._forward_units([u[2] for u in units])
        for (i, slot, _), result in zip(units, results):
            row = int(rows[i])
            if isinstance(result, Failure):
                out.failures.setdefault(row, dataclasses.replace(result, coverage=clips[i].coverage))
            else:
                emb[i, slot], mask[i, slot] = result, True
        for i, clip in enumerate(clips):  # a failed part fails the whole row: no half-valid rows
            if clip.row in out.failures:
                emb[i], mask[i] = 0.0, False
        if self.slots is None:
            out.embedding, out.mask = emb[:, 0], mask[:, 0]
        return out

    def _units(self, clips: Sequence[DecodedClip], out: TeacherRows) -> list[tuple[int, int | slice, "torch.Tensor"]]:
        """(clip index, slot(s), prepared input) of every input to embed; records failures/missing.

        An image unit is a clip's K frames and fills all K slots; an audio unit is one clip or segment.
        """
        units: list[tuple[int, int | slice, torch.Tensor]] = []
        for i, clip in enumerate(clips):
            failure = clip.failures.get(self.modality)
            if failure is None and self.modality == "audio" and (not clip.has_audio or clip.audio is None):
                out.missing.add(clip.row)
                continue
            try:
                if failure is None and self.modality == "image":
                    assert clip.frames is not None and clip.frame_times is not None
                    out.times[i, :, 0] = out.times[i, :, 1] = clip.frame_times
                    units.append((i, slice(None), self.teacher.prepare(clip.frames)))
                elif failure is None:
                    units.extend(self._audio_units(i, clip, out))
            except Exception as exc:  # noqa: BLE001 - input the teacher refuses: this clip fails
                failure = Failure("teacher", "teacher-error", f"teacher {self.key}: {type(exc).__name__}: {exc}")
            if failure is not None:
                out.failures[clip.row] = dataclasses.replace(failure, coverage=clip.coverage)
        return units

    def _audio_units(self, i: int, clip: DecodedClip, out: TeacherRows) -> list[tuple[int, int | slice, "torch.Tensor"]]:
        assert clip.audio is not None
        start, end = clip.window
        if self.segment_seconds is None:
            out.times[i, 0] = (start, end)
            return [(i, 0, self.teacher.prepare(clip.audio))]
        rate = int(self.teacher.preprocess.sample_rate or 0)
        seg = max(1, round(self.segment_seconds * rate))
        count = min(self.slots or 1, max(1, clip.audio.size // seg))
        units: list[tuple[int, int | slice, torch.Tensor]] = []
        for j in range(count):
            piece = clip.audio[j * seg : (j + 1) * seg] if clip.audio.size >= seg else clip.audio
            t0 = start + j * self.segment_seconds
            out.times[i, j] = (t0, min(end, t0 + piece.size / rate))
            units.append((i, j, self.teacher.prepare(piece)))
        return units

    def _forward_units(self, inputs: list["torch.Tensor"]) -> list[np.ndarray | Failure]:
        """Embed every input; same-shape inputs share batches (no padding: it changes pooling)."""
        results: list[np.ndarray | Failure | None] = [None] * len(inputs)
        groups: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
        for idx, x in enumerate(inputs):
            groups[tuple(x.shape)].append(idx)
        for shape, members in groups.items():
            per_item = shape[0] if self.modality == "image" else 1
            step = max(1, self.max_items // per_item)
            for b in range(0, len(members), step):
                batch = members[b : b + step]
                for idx, result in zip(batch, self._forward_batch([inputs[m] for m in batch])):
                    results[idx] = result
        return results  # type: ignore[return-value]

    def _forward_batch(self, xs: list["torch.Tensor"]) -> list[np.ndarray | Failure]:
        import torch

        out_of_memory = False
        try:
            y = self._forward(xs)
        except torch.AcceleratorError:
            # The device is unusable (illegal address, device-side assert): every later clip would
            # fail too and be marked done. Stop; a resume redoes the unfinished chunk.
            raise
        except torch.OutOfMemoryError:
            out_of_memory = True  # handled below, once the traceback no longer pins the batch's memory
        except Exception as exc:  # noqa: BLE001 - isolate the clip that breaks the batch
            if len(xs) > 1:
                return [r for x in xs for r in self._forward_batch([x])]
            return [Failure("teacher", "teacher-error", f"teacher {self.key}: {type(exc).__name__}: {exc}")]
        if out_of_memory:
            return self._after_out_of_memory(xs)
        return [self._check(item) for item in y]

    def _after_out_of_memory(self, xs: list["torch.Tensor"]) -> list[np.ndarray | Failure]:
        """Halve the batch for this and every later chunk; a single input that does not fit fails."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        per_item = xs[0].shape[0] if self.modality == "image" else 1
        if len(xs) == 1:
            return [Failure("teacher", "teacher-error", f"teacher {self.key}: out of device memory on one clip "
                            f"alone ({per_item} input(s)); use a device with more memory or --device cpu")]
        self.max_items = min(self.max_items, len(xs) // 2 * per_item)
        log.warning("teacher %s: out of device memory on %d inputs; batches of at most %d from now on",
                    self.key, len(xs), self.max_items // per_item)
        results: list[np.ndarray | Failure] = []
        while len(results) < len(xs):  # the size is re-read each time: an inner failure lowers it
            step = max(1, self.max_items // per_item)
            results += self._forward_batch(xs[len(results) : len(results) + step])
        return results

    def _forward(self, xs: list["torch.Tensor"]) -> np.ndarray:
        import torch

        x = torch.stack(xs).to(self.device, non_blocking=True)
        lead = x.shape[:2] if self.modality == "image" else x.shape[:1]
        if self.modality == "image":
            x = x.flatten(0, 1)  # (B, K, 3, S, S) -> (B*K, 3, S, S)
        use_amp, amp_dtype = self._autocast(x.device)
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp_dtype, enabled=use_amp):
            y = self.teacher(x)
        return y.float().reshape(*lead, -1).cpu().numpy()

    def _autocast(self, device: "torch.device") -> tuple[bool, "torch.dtype"]:
        """(enabled, dtype) of autocast for this runner's teacher (see ``autocast_dtype``)."""
        import torch

        dtype = autocast_dtype(self.modality, self.amp, device)
        return dtype is not None, dtype or torch.float32

    def _check(self, y: np.ndarray) -> np.ndarray | Failure:
        if not np.all(np.isfinite(y)):
            return Failure("teacher", "teacher-nonfinite", f"teacher {self.key} returned NaN/inf for this clip")
        if self.dtype == "float16" and float(np.abs(y).max(initial=0.0)) > FLOAT16_MAX:
            return Failure(
                "teacher", "teacher-nonfinite",
                f"teacher {self.key}: embedding values exceed the float16 range; use --dtype float32",
            )  # fmt: skip
        return y


# ----------------------------------------------------------------------------------------------
# Writing (background thread)


@dataclass
class ChunkJob:
    """Everything to commit for one store chunk."""

    rows: slice
    teachers: dict[str, TeacherRows]
    failures: dict[int, Failure]
    clear: list[int]  # rows whose old ledger entries this run resolved (retry_failed)
    decoded: list[DecodedClip]
    retried: frozenset[int] = frozenset()  # rows whose old ledger entries this run redoes


def _keep_graver(failures: dict[int, Failure], row: int, failure: Failure) -> None:
    """Record ``failure`` for ``row`` unless the row already has one that rules out at least as much."""
    if graver(failure.stage, failures[row].stage if row in failures else None):
        failures[row] = failure


@dataclass
class RunCounters:
    """Running totals, updated by the writer after each committed chunk."""

    total: int = 0
    skipped: int = 0
    processed: int = 0
    failed: int = 0
    missing_audio: int = 0
    by_reason: collections.Counter = field(default_factory=collections.Counter)
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ProgressEvent:
    """Sent to the ``progress`` callback after each committed chunk (and once at the start)."""

    total: int
    done: int  # skipped + processed
    processed: int
    skipped: int
    failed: int
    missing_audio: int
    elapsed: float


class StoreWriter:
    """Commits :class:`ChunkJob` s in a background thread: failures, the per-clip columns
    (duration, coverage), then data + done, then clears."""

    def __init__(self, store: "Store", manifest: "Manifest", log_path: Path, counters: RunCounters,
                 progress: Callable[[ProgressEvent], None] | None, depth: int = 4) -> None:
        self.store, self.manifest, self.log_path = store, manifest, log_path
        self.counters, self.progress = counters, progress
        self._queue: queue.Queue[ChunkJob | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="ccl-store-writer", daemon=True)

    def __enter__(self) -> "StoreWriter":
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self.raise_error()

    def put(self, job: ChunkJob) -> None:
        while True:
            self.raise_error()
            try:
                self._queue.put(job, timeout=0.5)
                return
            except queue.Full:
                continue

    def raise_error(self) -> None:
        if self._error is not None:
            if isinstance(self._error, CclCacheError):
                raise self._error
            raise write_error(self.store, self._error, self.counters) from self._error

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is not None:
                continue  # drain: the main thread will raise
            try:
                self._commit(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc

    def _commit(self, job: ChunkJob) -> None:
        for row, failure in sorted(self._ledger_entries(job).items()):
            self.store.record_failure(row, failure.stage, failure.reason, failure.message, failure.coverage)
        self._log_failures(job.failures)
        # The per-clip columns go before the teachers' done flags: a run killed in between must
        # redo the chunk, not skip it with its durations and coverage never written.
        self._record_clips(job.rows, job.decoded)
        for key, rows in job.teachers.items():
            embedding, times, mask = self._full_chunk(key, job.rows, rows)
            self.store.write_rows(key, job.rows, embedding, times, mask)
        if job.clear:
            self.store.clear_failures(job.clear)
        self._count(job)

    def _ledger_entries(self, job: ChunkJob) -> dict[int, Failure]:
        """The chunk's failures to record: a graver entry of an earlier run (an image failure
        when this run adds the audio teacher) stays unless this run redoes that row."""
        rows = np.array(sorted(r for r in job.failures if r not in job.retried), dtype=np.int64)
        if rows.size == 0:
            return job.failures
        stages = self.store.failure_stages(rows)
        out = dict(job.failures)
        for row, stage in zip(rows.tolist(), stages):
            if str(stage) and graver(str(stage), job.failures[row].stage):
                del out[row]  # the ledger's entry rules out more: keep it (this one is in the log)
        return out

    def _full_chunk(self, key: str, rows: slice, part: TeacherRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunk's arrays: computed rows from ``part``, the others as already stored."""
        count = rows.stop - rows.start
        if len(part.rows) == count:
            return part.embedding, part.times, part.mask
        embedding, times, mask = self.store.read_rows(key, rows)
        local = part.rows - rows.start
        embedding, times, mask = np.array(embedding), np.array(times), np.array(mask)
        embedding[local], times[local] = part.embedding, part.times.reshape(times[local].shape)
        mask[local] = part.mask
        return embedding, times, mask

    def _record_clips(self, rows: slice, decoded: list[DecodedClip]) -> None:
        """Fill the clips table's probed columns (duration, has_audio) and the coverage column."""
        ok = [c for c in decoded if math.isfinite(c.duration)]
        if ok:
            self.store.record_clips(
                np.array([c.row for c in ok], dtype=np.int64),
                duration=np.array([c.duration for c in ok], dtype=np.float64),
                has_audio=np.array([c.has_audio for c in ok], dtype=bool),
            )
        for path, value in ((COVERAGE_PATH, "coverage"), (DECODE_ERRORS_PATH, "decode_errors")):
            measured = [c for c in decoded if getattr(c, value) is not None]
            if measured:  # the whole chunk is rewritten: writers own chunks
                self.store.update_rows(path, rows, [c.row for c in measured], [getattr(c, value) for c in measured])

    def _log_failures(self, failures: dict[int, Failure]) -> None:
        if not failures:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        lines = []
        for row, f in sorted(failures.items()):
            rec = self.manifest.records[row]
            lines.append(json.dumps({
                "time": now, "row": row, "id": rec.id, "path": rec.path, "stage": f.stage,
                "reason": f.reason, "message": f.message, "coverage": f.coverage,
            }, ensure_ascii=False))  # fmt: skip
        # One O_APPEND write per chunk: shards appending to the same log do not interleave lines.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode("utf-8"))
        finally:
            os.close(fd)

    def _count(self, job: ChunkJob) -> None:
        c = self.counters
        c.processed += len({clip.row for clip in job.decoded})
        c.failed += len(job.failures)
        c.by_reason.update(f.reason for f in job.failures.values())
        missing = set().union(*(t.missing for t in job.teachers.values())) if job.teachers else set()
        c.missing_audio += len(missing)
        if self.progress is not None:
            self.progress(progress_event(c))


def write_error(store: "Store", exc: BaseException, counters: RunCounters) -> StoreError:
    """The StoreError for a failed store write (see :func:`~ccl_cache.store.space.explain_write_error`).

    Chunks are committed whole (data before the done flags), so the rows written before the
    failure are kept and a rerun of the same command resumes after them.
    """
    left = max(0, counters.total - counters.skipped - counters.processed)
    return explain_write_error(store.path, exc, left * _row_bytes(store))


def _row_bytes(store: "Store") -> int:
    """Bytes one row adds to the store, summed over its teachers (see estimate_store_bytes)."""
    layouts = [(int(t.frames or 1), int(t.dim)) for t in (store.teacher(k) for k in store.teacher_keys())]
    dtypes = [store.teacher(k).dtype for k in store.teacher_keys()]
    return estimate_store_bytes(1, layouts, dtypes[0] if dtypes else "float32")


def progress_event(c: RunCounters) -> ProgressEvent:
    return ProgressEvent(
        total=c.total, done=c.skipped + c.processed, processed=c.processed, skipped=c.skipped,
        failed=c.failed, missing_audio=c.missing_audio, elapsed=time.monotonic() - c.started,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Planning: which rows of which chunks still need which teacher


@dataclass(frozen=True)
class ChunkPlan:
    rows: slice  # the whole chunk
    todo: dict[str, np.ndarray]  # teacher key -> absolute rows to compute
    retry: np.ndarray  # rows with a ledger entry that are recomputed (cleared when they succeed)

    @property
    def decode_rows(self) -> np.ndarray:
        return np.unique(np.concatenate(list(self.todo.values())))


def plan_chunks(store: "Store", keys: Sequence[str], chunks: Sequence[slice], retry_failed: bool) -> list[ChunkPlan]:
    """Chunks with work left: rows not done (and, with ``retry_failed``, rows that failed).

    A failed row that no teacher of the run has done was recorded by a run killed before the
    chunk's done flags: it is retried like ``retry_failed`` rows, so that its entry is cleared
    if it succeeds now (the ledger is written first, see StoreWriter._commit).
    """
    failed = np.asarray(store.failure_rows(), dtype=np.int64)
    plans = []
    for rows in chunks:
        todo: dict[str, np.ndarray] = {}
        in_chunk = failed[(failed >= rows.start) & (failed < rows.stop)]
        done = {key: np.asarray(store.teacher(key).done[rows], dtype=bool) for key in keys}
        undone_by_all = np.logical_and.reduce([~d for d in done.values()]) if done else np.zeros(0, bool)
        retry = in_chunk if retry_failed else in_chunk[undone_by_all[in_chunk - rows.start]]
        for key in keys:
            need = np.union1d(np.flatnonzero(~done[key]) + rows.start, retry)
            if need.size:
                todo[key] = need
        if todo:
            plans.append(ChunkPlan(rows, todo, retry))
    return plans


# ----------------------------------------------------------------------------------------------
# Set-up: checks, teachers, store


def check_output_location(store_path: Path) -> None:
    """Fail before any model loads when the store's folder (or the existing store) is not writable."""
    parent = store_path.resolve().parent
    if not parent.is_dir():
        raise ConfigError(
            f"output folder {parent} does not exist; create it (mkdir -p {parent}) or choose "
            "another --store location"
        )
    try:
        _probe_write(parent)
    except OSError as exc:
        raise StoreError(
            f"cannot write in {parent} ({exc.strerror}); choose a writable --store location"
        ) from None
    if store_path.exists():  # resuming: the store itself must take writes (read-only mount, chmod)
        try:
            if store_path.is_dir():
                _probe_write(store_path)
            else:
                os.close(os.open(store_path, os.O_WRONLY))
        except OSError as exc:
            raise StoreError(
                f"cannot write into the existing store {store_path} ({exc.strerror}); make it writable, or "
                "copy it to a writable place and pass that --store"
            ) from None


def _probe_write(folder: Path) -> None:
    fd, probe = tempfile.mkstemp(prefix=".ccl-write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def estimate_store_bytes(rows: int, layouts: Sequence[tuple[int, int]], dtype: str) -> int:
    """Upper bound of the bytes one run writes: ``layouts`` = (slots K, dim D) per teacher.

    Per row and teacher: K·D embedding values, K·2 float64 times, K mask bytes, a done byte;
    plus ~512 bytes of clip table and failure ledger per row. Compression only makes it smaller.
    """
    itemsize = np.dtype(dtype).itemsize
    per_row = 512 + sum(k * d * itemsize + k * 16 + k + 1 for k, d in layouts)
    return rows * per_row


def _teacher_options(name: str, modality: str, config: ExtractConfig) -> dict[str, Any]:
    return {"image_size": config.image_size} if modality == "image" else {}


def teacher_dim_hint(name: str, modality: str, config: ExtractConfig) -> int | None:
    """The embedding size of a registered teacher, from its architecture (no weights loaded)."""
    from ccl_cache.teachers import TEACHERS
    from ccl_cache.teachers.base import call_factory

    if name not in TEACHERS:
        return None  # a user factory may load weights itself: size it after building
    return int(call_factory(TEACHERS.get(name), _teacher_options(name, modality, config), name).dim)


def build_teachers(config: ExtractConfig, device: str) -> dict[str, "Teacher"]:
    """modality -> teacher, in eval mode on ``device``; a teacher of the wrong modality is refused."""
    import torch

    from ccl_cache.teachers import build_teacher

    teachers = {}
    for modality, name, weights in (
        ("audio", config.audio_teacher, config.audio_weights),
        ("image", config.image_teacher, config.image_weights),
    ):
        if name is None:
            continue
        teacher = build_teacher(name, weights, device, **_teacher_options(name, modality, config))
        if torch.device(device).type == "cpu":
            # oneDNN's convolutions are faster on NHWC (see the module docstring); values are the
            # same up to float rounding (measured ≤ 3e-7 relative).
            teacher.to(memory_format=torch.channels_last)
        if teacher.modality != modality:
            raise ConfigError(
                f"teacher {name!r} is an {teacher.modality} teacher but was given as the {modality} "
                f"teacher; pass it with --{teacher.modality}-teacher"
            )
        teachers[modality] = teacher
    return teachers


def autocast_dtype(modality: str, amp: bool, device: "torch.device | str") -> "torch.dtype | None":
    """The dtype a teacher computes in under ``amp``, or None for float32 (autocast off).

    bfloat16 where the GPU or CPU has it, else float16 on GPUs and float32 on CPUs (emulated
    bfloat16 would be slower than float32). float16 is not used for audio teachers: a log-mel
    power spectrum (up to ~1e5 for loud audio) overflows float16 and the embedding turns to inf.
    """
    import torch

    device = torch.device(device)
    if not amp or device.type not in ("cpu", "cuda"):
        return None
    if device.type == "cpu":
        return torch.bfloat16 if hardware.cpu_has_bf16() else None
    if hardware.cuda_has_bf16(device):
        return torch.bfloat16
    return torch.float16 if modality == "image" else None


def teacher_fingerprint(teacher: "Teacher", config: ExtractConfig, slots: int | None,
                        device: str = "cpu") -> dict[str, Any]:
    """The teacher's fingerprint plus the extraction policy that shaped its inputs and outputs."""
    policy: dict[str, Any] = {"dtype": config.dtype}
    compute = autocast_dtype(teacher.modality, config.amp, device)
    if compute is not None:
        # Rows computed in bfloat16 and float32 must not share a store. Recorded only when
        # autocast is on, so float32 stores (all those made before the field) keep resuming.
        policy.update(compute=str(compute).removeprefix("torch."))
    if teacher.modality == "image":
        policy.update(frames_per_clip=config.frames_per_clip, frame_times=FRAME_TIMES, frame_decode=FRAME_DECODE)
        if config.frame_sampling != FRAME_SAMPLING[0]:
            # Recorded only when not the default: stores made before the option existed hold
            # "spread" frames without the field, and must keep resuming with the default.
            policy.update(frame_sampling=config.frame_sampling)
    else:
        policy.update(audio="segments" if config.audio_segment else "clip",
                      segment_seconds=config.audio_segment, segments=slots, audio_stream=AUDIO_STREAM)  # fmt: skip
    return {**teacher.fingerprint(), "extraction": policy}


def open_or_create_store(path: Path, manifest: "Manifest", config: ExtractConfig, sharded: bool) -> "Store":
    """Open the store for writing (resume), creating it when absent.

    ``create_store(exist_ok=True)`` lets shard processes that start together agree on one store.
    A store of another manifest, or a damaged one, is refused unless ``overwrite`` (not for
    shards: each would wipe the others' work).
    """
    from ccl_cache.store import create_store

    try:
        return create_store(path, manifest, chunk_rows=config.batch_size, exist_ok=True)
    except StoreLockedError:
        raise
    except StoreError:  # another manifest's store, or a damaged one (its message advises --overwrite)
        if not config.overwrite or sharded:
            raise
    return create_store(path, manifest, chunk_rows=config.batch_size, overwrite=True)


# ----------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class ExtractSummary:
    """What a run did; ``exit_code`` is 0 when every clip of the shard has its embeddings."""

    store: str
    shard: str | None
    teachers: tuple[str, ...]
    rows: int  # rows this process is responsible for
    processed: int
    skipped: int
    failed: int  # failures recorded by this run
    failed_total: int  # rows of the shard in the failure ledger after the run
    missing_audio: int
    failures_by_reason: dict[str, int]
    seconds: float
    clips_per_s: float
    config_path: str
    failure_log: str

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED_CLIPS if self.failed_total else EXIT_OK


def run_extraction(
    config: ExtractConfig, progress: Callable[[ProgressEvent], None] | None = None
) -> ExtractSummary:
    """Run the teachers of ``config`` over its manifest into its store (see the module docstring).

    Raises a :class:`CclCacheError` for usage/config problems (before any model loads where it
    can); clips that fail are recorded, not raised.
    """
    from ccl_cache.manifest import load_manifest

    config.validate()
    shard = resolve_shard(config.shard)
    path = store_path_for(config.store, shard)
    if config.overwrite and shard is not None and path.suffix.lower() == ".zarr":
        raise ConfigError(
            "--overwrite with --shard on a shared Zarr store would let each shard wipe the others' "
            f"work; delete {path} first, then start the shards without --overwrite"
        )
    check_output_location(path)
    # Missing files are failures (data), not manifest errors: a large dataset always has a few.
    manifest = load_manifest(config.manifest, format=config.format, root=config.root, check_files=False)
    _check_space(path, manifest, config, shard)
    device = str(hardware.resolve_device(config.device))
    # A new store, or one --overwrite may replace: the teachers load first, so a bad teacher or
    # weights leave no empty store behind and no old store wiped. Resuming an existing store: its
    # lease first, so a refused second writer fails fast.
    teachers = build_teachers(config, device) if config.overwrite or not path.exists() else None
    store = open_or_create_store(path, manifest, config, shard is not None)
    if store.chunk_rows != config.batch_size:
        log.warning("%s keeps its chunk_rows=%d: batches follow the store's chunks, not batch_size=%d",
                    path, store.chunk_rows, config.batch_size)
    try:
        # Zarr shards share one store, each under its own lease; an HDF5 shard owns its file.
        lease_shard = shard_label(shard) if path.suffix.lower() == ".zarr" else None
        with store.acquire_lease(force=config.force, shard=lease_shard, command="ccl-cache extract"), \
                _torch_threads(inference_threads(config, device)):
            save_config(resolved_config(config, shard, device), config_path_for(path, shard))
            teachers = build_teachers(config, device) if teachers is None else teachers
            runners = _create_teachers(store, manifest, teachers, config, device)
            return _run(store, manifest, runners, config, shard, path, progress)
    finally:
        store.close()


def inference_threads(config: ExtractConfig, device: str) -> int | None:
    """Torch threads for the teachers (see ``ExtractConfig.threads``); None leaves torch's."""
    if config.threads is not None or not device.startswith("cpu"):
        return config.threads
    cores = hardware.usable_cores()
    return max(1, cores - config.workers)


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block and restore them after (a library call must
    not change its caller's setting)."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolved_config(config: ExtractConfig, shard: tuple[int, int] | None, device: str) -> ExtractConfig:
    """The config as run: absolute paths, the shard, device and threads actually used (saved as YAML)."""
    return dataclasses.replace(
        config, manifest=os.path.abspath(config.manifest), store=os.path.abspath(config.store),
        root=None if config.root is None else os.path.abspath(config.root), shard=shard_label(shard), device=device,
        threads=inference_threads(config, device),
    )  # fmt: skip


def _check_space(path: Path, manifest: "Manifest", config: ExtractConfig, shard: tuple[int, int] | None) -> None:
    layouts = []
    for modality, name in (("audio", config.audio_teacher), ("image", config.image_teacher)):
        if name is None:
            continue
        dim = teacher_dim_hint(name, modality, config)
        slots = config.frames_per_clip if modality == "image" else 1
        layouts.append((slots, dim or 2048))  # unknown user teacher: assume a large embedding
    rows = len(manifest) if shard is None else -(-len(manifest) // shard[1])
    check_free_space(path, estimate_store_bytes(rows, layouts, config.dtype),
                     "use --dtype float16 / fewer --frames-per-clip")


def _create_teachers(store: "Store", manifest: "Manifest", teachers: dict[str, "Teacher"],
                     config: ExtractConfig, device: str) -> list[TeacherRunner]:
    """Create (or check) each teacher's arrays in the store and wrap the teacher in a runner."""
    runners = []
    for modality, teacher in teachers.items():
        key = f"{modality}/{teacher.name}"
        if modality == "image":
            slots: int | None = config.frames_per_clip
        elif config.audio_segment is None:
            slots = None
        else:
            slots = _segment_slots(store, key, manifest, config, int(teacher.preprocess.sample_rate or 0))
        fingerprint = teacher_fingerprint(teacher, config, slots, device)
        try:
            store.create_teacher(key, teacher.dim, slots, dtype=config.dtype, fingerprint=fingerprint,
                                 overwrite=config.overwrite)  # fmt: skip
        except StoreMismatchError as exc:
            if "frame_sampling" not in str(exc):
                raise
            # The default is recorded as an absent field (see teacher_fingerprint): say so.
            raise StoreMismatchError(f"{exc}\n(frame_sampling <absent> means {FRAME_SAMPLING[0]!r}, the default; "
                                     "pass the store's --frame-sampling to resume it)") from exc
        runners.append(TeacherRunner(key, teacher, device, amp=config.amp, dtype=config.dtype,
                                     slots=slots, segment_seconds=config.audio_segment))  # fmt: skip
    if config.overwrite:
        store.clear_failures(np.arange(store.n))  # the old ledger described the old teachers
    _ensure_coverage_array(store)
    return runners


def _ensure_coverage_array(store: "Store") -> None:
    """Create the per-clip coverage (NaN = not measured) and decoder-error (-1 = no frames read)
    columns unless a shard was first."""
    for path, dtype, fill in ((COVERAGE_PATH, "float32", math.nan), (DECODE_ERRORS_PATH, "int32", -1)):
        if store.has(path):
            continue
        try:
            store.create_array(path, (store.n,), dtype, chunk_rows=store.chunk_rows, fill_value=fill)
        except Exception:  # noqa: BLE001 - a concurrent shard created it between has() and here
            if not store.has(path):
                raise


def _segment_slots(store: "Store", key: str, manifest: "Manifest", config: ExtractConfig, rate: int) -> int:
    """K_a: the most audio segments any clip has (an existing teacher array keeps its own)."""
    if key in store.teacher_keys() and not config.overwrite:
        frames = store.teacher(key).frames
        if frames:
            return int(frames)
    seg = float(config.audio_segment or 1.0)
    lengths = [r.end - r.start if r.start is not None and r.end is not None else None for r in manifest.records]
    unknown = [ClipTask(i, r.path, r.start, r.end, kind="probe") for i, (r, n) in
               enumerate(zip(manifest.records, lengths)) if n is None]  # fmt: skip
    known = [n for n in lengths if n is not None]
    if unknown:
        with DecodePool(DecodeSpec(), config.workers, config.timeout_s, readahead=1024) as pool:
            pool.start(unknown)
            for _ in unknown:
                clip = pool.get()
                if not clip.failures:
                    known.append(clip.window[1] - clip.window[0])
    return max([1] + [int(math.floor(n / seg + 1e-9)) for n in known])


def _decode_spec(runners: Sequence[TeacherRunner], config: ExtractConfig) -> DecodeSpec:
    audio = next((r for r in runners if r.modality == "audio"), None)
    image = next((r for r in runners if r.modality == "image"), None)
    return DecodeSpec(
        sample_rate=None if audio is None else int(audio.teacher.preprocess.sample_rate or 0),
        frames_per_clip=config.frames_per_clip,
        frame_sampling=config.frame_sampling,
        image_size=None if image is None else int(image.teacher.preprocess.image_size or config.image_size),
        min_coverage=config.min_coverage,
        strict=config.strict,
    )


def _tasks(plans: Sequence[ChunkPlan], manifest: "Manifest", modality_of: dict[str, str]) -> list[ClipTask]:
    tasks = []
    for plan in plans:
        wants: dict[int, set[str]] = collections.defaultdict(set)
        for key, rows in plan.todo.items():
            for row in rows:
                wants[int(row)].add(modality_of[key])
        for row in sorted(wants):
            rec = manifest.records[row]
            tasks.append(ClipTask(row, rec.path, rec.start, rec.end,
                                  audio="audio" in wants[row], image="image" in wants[row]))  # fmt: skip
    return tasks


def _decoded_chunks(pool: DecodePool, plans: Sequence[ChunkPlan]) -> Iterator[tuple[ChunkPlan, list[DecodedClip]]]:
    """Group the pool's out-of-order results into complete chunks (in completion order)."""
    by_start = {p.rows.start: p for p in plans}
    need = {p.rows.start: len(p.decode_rows) for p in plans}
    owner = {int(row): p.rows.start for p in plans for row in p.decode_rows}
    got: dict[int, list[DecodedClip]] = collections.defaultdict(list)
    for _ in range(sum(need.values())):
        clip = pool.get()
        start = owner[clip.row]
        got[start].append(clip)
        if len(got[start]) == need[start]:
            yield by_start[start], sorted(got.pop(start), key=lambda c: c.row)


def _infer_chunk(plan: ChunkPlan, clips: list[DecodedClip], runners: Sequence[TeacherRunner],
                 clear: bool = True) -> ChunkJob:
    """Run every teacher over a decoded chunk; ``clear``: retried rows that succeed leave the ledger."""
    by_row = {c.row: c for c in clips}
    outputs, failures = {}, {}
    for runner in runners:
        rows = plan.todo.get(runner.key)
        if rows is None:
            continue
        out = runner.run([by_row[int(r)] for r in rows])
        outputs[runner.key] = out
        for row, failure in out.failures.items():
            _keep_graver(failures, row, failure)
    ran = {r.modality for r in runners if plan.todo.get(r.key) is not None}
    for clip in clips:  # what the clip's decode found for a modality without a teacher here (no video)
        for modality, failure in clip.failures.items():
            if modality not in ran:
                _keep_graver(failures, clip.row, failure)
    cleared = [int(r) for r in plan.retry if int(r) not in failures] if clear else []
    return ChunkJob(plan.rows, outputs, failures, cleared, clips, frozenset(int(r) for r in plan.retry))


def _run(store: "Store", manifest: "Manifest", runners: list[TeacherRunner], config: ExtractConfig,
         shard: tuple[int, int] | None, path: Path, progress: Callable[[ProgressEvent], None] | None) -> ExtractSummary:
    from ccl_cache.store.schema import shard_slices

    chunks = shard_slices(store.n, store.chunk_rows, shard_label(shard))
    plans = plan_chunks(store, [r.key for r in runners], chunks, config.retry_failed)
    total = sum(c.stop - c.start for c in chunks)
    counters = RunCounters(total=total, skipped=total - sum(len(p.decode_rows) for p in plans))
    if progress is not None:
        progress(progress_event(counters))
    log_path = failure_log_path(path)
    if plans:
        spec = _decode_spec(runners, config)
        tasks = _tasks(plans, manifest, {r.key: r.modality for r in runners})
        with StoreWriter(store, manifest, log_path, counters, progress) as writer, \
                DecodePool(spec, config.workers, config.timeout_s, readahead=2 * store.chunk_rows) as pool:
            pool.start(tasks)
            # A ledger entry may concern a teacher this run does not compute: clear entries only
            # when every stored teacher was recomputed for the row.
            clear = set(store.teacher_keys()) <= {r.key for r in runners}
            for plan, clips in _decoded_chunks(pool, plans):
                writer.put(_infer_chunk(plan, clips, runners, clear))
    failed = np.asarray(store.failure_rows(), dtype=np.int64)
    in_shard = sum(int(((failed >= c.start) & (failed < c.stop)).sum()) for c in chunks)
    seconds = time.monotonic() - counters.started
    return ExtractSummary(
        store=str(path), shard=shard_label(shard), teachers=tuple(r.key for r in runners), rows=total,
        processed=counters.processed, skipped=counters.skipped, failed=counters.failed,
        failed_total=in_shard, missing_audio=counters.missing_audio,
        failures_by_reason=dict(counters.by_reason), seconds=seconds,
        clips_per_s=counters.processed / seconds if seconds > 0 else 0.0,
        config_path=str(config_path_for(path, shard)), failure_log=str(log_path),
    )  # fmt: skip


def merge_shards(inputs: Sequence[str | Path], output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Join HDF5 (or Zarr) shard stores of one manifest into ``output``; returns the merge report."""
    from ccl_cache.store import merge_stores

    if not inputs:
        raise ConfigError("merge needs at least one shard store to read")
    for item in inputs:
        if not Path(item).exists():
            raise ConfigError(f"shard store {item} does not exist; check the path (shards are named "
                              "<stem>.shard-I-of-N.h5)")  # fmt: skip
    return merge_stores([Path(p) for p in inputs], Path(output), overwrite=overwrite)
