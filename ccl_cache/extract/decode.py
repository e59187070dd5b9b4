"""Decoding one clip for the teachers, in a worker process: probe, decodable window, audio at the
audio teacher's rate, frames at the image teacher's size; and :class:`DecodePool`, the workers
that do it with a per-clip timeout.

Decode workers import this module (its functions are what they run), so it imports only PyAV,
numpy and light ccl_cache modules (``media``, ``errors``, ``workers``): never torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ccl_cache import media
from ccl_cache.errors import ExtractError, MediaError, NoAudioError
from ccl_cache.workers import TaskFailure, WorkerPool

AUDIO_STREAM = 0  # which audio stream is embedded: the first in file order (deterministic, fingerprinted)


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
    # MediaError.reason, "timeout", "crash", "partial", "partial-audio", "teacher-nonfinite", "teacher-error", "error"
    reason: str
    message: str
    coverage: float | None = None  # of the clip window: decodable span, or audio for "partial-audio"


@dataclass
class DecodedClip:
    """A worker's answer for one clip; ``failures`` maps a modality to why it is unusable."""

    row: int
    window: tuple[float, float] = (0.0, 0.0)  # decodable window [s, e) in file seconds
    duration: float = math.nan
    coverage: float | None = None
    audio_coverage: float | None = None  # fraction of the window the audio stream covers (None: no stream)
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


def _decodable_window(task: ClipTask, info: media.MediaInfo) -> tuple[tuple[float, float], float, float | None]:
    """The window cut to the decodable span of the file, the fraction of the window kept, and the
    fraction of the window that the embedded audio stream covers (None: the file has no audio).

    One demux-only packet scan answers both (:func:`media.scan_packets`). The decodable span is the
    video stream's (the whole file's for audio-only files): a short audio track must not cut the
    picture. The audio's span comes from its packets' timestamps, not from its header, which AVI
    and MPEG-TS often leave without a duration; ``media.read_audio`` fills the rest of the window
    with zeros.
    """
    start, end = _window(task, info)
    if info.duration <= 0:
        return (start, end), 1.0, None
    scan = media.scan_packets(task.path)
    decodable = scan.coverage if scan.video_coverage is None else scan.video_coverage
    kept_end = min(end, decodable * info.duration)
    coverage = max(0.0, kept_end - start) / (end - start)
    if not info.has_audio:
        return (start, kept_end), coverage, None
    span = scan.audio[AUDIO_STREAM] if AUDIO_STREAM < len(scan.audio) else None
    heard = 0.0 if span is None else max(0.0, min(kept_end, span[1]) - max(start, span[0]))
    return (start, kept_end), coverage, min(1.0, heard / (end - start))


def centre_times(start: float, step: float, k: Any) -> np.ndarray:
    """``t_k = start + (k + 1/2)·step``: the centre of the k-th of equal parts of length ``step``.
    The one frame-time rule: extraction's K frames per clip (:func:`frame_times`) and the frame
    cache's frames at its rate (step = 1/rate: the frame shown at t_k is frame k exactly)."""
    return start + (np.asarray(k, dtype=np.float64) + 0.5) * step


def frame_times(window: tuple[float, float], count: int) -> list[float]:
    """K sample times at the centres of K equal parts of the window (the frame policy)."""
    start, end = window
    return centre_times(start, (end - start) / count, np.arange(count)).tolist()


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


def _partial_audio(task: ClipTask, clip: DecodedClip, spec: DecodeSpec) -> Failure:
    """The "audio"-stage failure of a clip whose audio covers less than ``min_coverage`` of its
    window: its embedding would be of more zero padding (``read_audio``) than the policy allows."""
    cover = float(clip.audio_coverage or 0.0)
    message = (f"{task.path}: its audio covers only {cover:.1%} of the clip window starting at {clip.window[0]:.3f} s "
               f"(minimum {spec.min_coverage:.0%}); the rest would be zero padding, so the audio is not embedded "
               "(the image embedding is kept); lower --min-coverage to embed it padded, or fix the file's audio")
    return Failure("audio", "partial-audio", message, cover)


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
        clip.window, clip.coverage, clip.audio_coverage = _decodable_window(task, info)
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
            if clip.audio_coverage is not None and clip.audio_coverage < spec.min_coverage:
                clip.failures["audio"] = _partial_audio(task, clip, spec)
            else:
                _decode_audio(clip, task, spec)
    except MediaError as exc:
        _fail_all(clip, task, Failure("decode", exc.reason, str(exc), clip.coverage))
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not end a long run
        _fail_all(clip, task, Failure("decode", "error", f"{task.path}: {type(exc).__name__}: {exc}", clip.coverage))
    finally:
        clip.seconds = time.perf_counter() - began
    return clip


DecodeFn = Callable[[ClipTask, DecodeSpec], DecodedClip]


def worker_failure_message(path: str, failure: TaskFailure, fix: str | None = None) -> str:
    """What a decode task whose worker died or hung says about its file; ``fix`` follows a timeout."""
    if failure.reason == "crash":
        return f"{path}: the decoder process died on this file"
    return (f"{path}: decoding took longer than {failure.timeout_s:g} s; the file may be damaged or on a stalled "
            "mount" + (f" ({fix})" if fix else ""))


class DecodePool:
    """Decode :class:`ClipTask` s in ``workers`` processes; results come back in any order.

    A :class:`~ccl_cache.workers.WorkerPool`: a clip that overruns ``timeout_s`` has its worker
    killed and replaced and becomes a "timeout" failure; a worker that dies makes its clip a
    "crash" failure. At most ``readahead`` results wait unconsumed, bounding memory.
    ``workers=0`` decodes inline in :meth:`get` (no timeout). ``decode`` is the per-clip function
    (a module-level function, so that workers can import it); :func:`decode_clip` by default.
    """

    def __init__(self, spec: DecodeSpec, workers: int, timeout_s: float, readahead: int = 128,
                 decode: DecodeFn | None = None) -> None:
        self.spec, self.workers, self.timeout_s = spec, workers, timeout_s
        self.decode: DecodeFn = decode or decode_clip
        # One decoder thread per worker: there is one worker per core, more threads only add CPU.
        self._pool: WorkerPool[ClipTask, DecodedClip] = WorkerPool(
            self.decode, workers, args=(spec,), timeout_s=timeout_s, readahead=readahead,
            initializer=media.set_decoder_threads, initargs=(1,), name="decode", job="the extraction",
            inline="workers=0 (--workers 0) decodes in the main process instead", error=ExtractError,
        )  # fmt: skip

    @property
    def replaced(self) -> int:
        """Workers killed (timeout) or lost (crash)."""
        return self._pool.replaced

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, tasks: Sequence[ClipTask]) -> None:
        self._pool.start(tasks)

    def get(self) -> DecodedClip:
        """The next finished clip (blocks)."""
        task, answer = self._pool.get()
        if isinstance(answer, TaskFailure):
            message = worker_failure_message(task.path, answer, "raise --timeout if it is just long")
            return _fail_all(DecodedClip(row=task.row), task, Failure("decode", answer.reason, message))
        return answer

    def close(self) -> None:
        self._pool.close()
