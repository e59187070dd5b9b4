"""A synthetic audio-visual dataset of real mp4 files (H.264 + AAC) with known ground truth.

It stands in for UCF51 / ActivityNet / VGGSound in tests and demos of the distillation pipeline
(Chen et al., CVPR 2021): a video student should beat an image teacher and an audio teacher only
by using what neither teacher sees. Each class ``c`` is carried by three cues, under noise and
random jitter:

* appearance - the shape and colour of an object on a noisy textured background. Classes come in
  appearance pairs ``{2k, 2k+1}`` that share shape and colour, so one frame cannot tell them apart;
* motion - how the object moves (``MOTIONS[c % 6]``: translation, vertical up/down, orbit,
  horizontal or vertical shaking), from a random start position so that a single frame shows no
  trace of it. Pair members always differ in motion. No motion is the mirror image of another,
  so horizontal-flip augmentation keeps every class intact;
* sound - a tone (pitch and beep rhythm) shared within sound pairs ``{2k-1, 2k}`` (class 0 alone),
  which overlap the appearance pairs by one, so sound alone is ambiguous for other pairs.

An image teacher therefore tops out near 50-60 % top-1, an audio teacher likewise, while
appearance + motion (a video model) determines every class.

Two switches change that design. ``shared_cues=False`` gives every class its own appearance and
its own sound, so each teacher can know every class - the paper's setting, where teachers trained
on far more data (ImageNet, AudioSet) carry the classes' semantics. ``appearance_cue="shape"``
draws each clip's colour at random, so only the object's shape tells appearances apart: harder to
learn from a few labelled clips than a colour. (Class names keep the design colour either way.)

The *semantic gap* of the paper is simulated by ``gap``: that fraction of the student's clips
(splits train/val/test) carry the sound of another sound pair or a class-agnostic "music" melody;
``no_audio`` clips are written without an audio stream. The ``pretrain`` split (the teachers'
training data, in the role of AudioSet/ImageNet, disjoint from the student's clips) is always
clean. Counts are exact: ``round(rate * student clips)``.

Outputs in ``out_dir``: ``videos/<youtube_id>_<start:06d>.mp4``, ``manifest.csv`` (generic CSV with
splits pretrain/train/val/test), ``vggsound.csv`` (the same files as a VGGSound listing) and
``synth.json`` (resolved config, class design and per-clip ground truth). Same seed, same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable

import av
import numpy as np

from ccl_cache.errors import ConfigError, MediaError
from ccl_cache.fileio import atomic_write_text, write_json
from ccl_cache.manifest import ClipRecord, Manifest, write_csv
from ccl_cache.resources import check_count_fits
from ccl_cache.workers import TaskFailure, WorkerPool, check_workers

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "cross", "bar")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35), "green": (40, 200, 60), "blue": (45, 85, 240), "yellow": (235, 215, 40),
    "magenta": (215, 45, 215), "cyan": (40, 210, 220), "orange": (245, 135, 25), "white": (245, 245, 245),
}
MOTIONS: tuple[str, ...] = ("right", "down", "up", "orbit", "shake_h", "shake_v")
PITCHES_HZ: tuple[float, ...] = tuple(round(330.0 * 2 ** (i / 2.5), 1) for i in range(8))
RHYTHMS_HZ: tuple[float, ...] = (0.0, 2.0, 4.0, 6.0)  # 0 = continuous tone
MUSIC_NOTES_HZ: tuple[float, ...] = (294.0, 370.0, 494.0, 659.0)  # between the class pitches
MAX_CLASSES = 60
# The plan and synth.json hold every clip in memory (about 1 KB each) and each clip is a file:
# 100k per class (6 million clips at 60 classes) is far beyond a synthetic test set.
MAX_CLIPS_PER_CLASS = 100_000
# Rendering a clip holds about this many bytes per pixel of its frames at once (the float32 RGB
# frames, their noise and the sum: 3 x 12 bytes); a clip that cannot fit is refused up front.
RENDER_BYTES_PER_PIXEL = 36
# "shape": each clip's colour is drawn at random, so one frame tells its appearance pair only by the
# object's shape - harder to learn from a few labelled clips than a colour, which is what a teacher
# trained on many more clips can then pass on (the paper's setting: ImageNet/AudioSet teachers).
APPEARANCE_CUES: tuple[str, ...] = ("shape+colour", "shape")
SPLITS: tuple[str, ...] = ("pretrain", "train", "val", "test")
# mbtree off: with it, this libx264 build's first encode in a process can differ from later ones
# (seen on repeated runs), which would break "same seed, same bytes". The cost is a few % size.
_VIDEO_OPTIONS = {"preset": "veryfast", "crf": "23", "x264-params": "mbtree=0"}


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Rates are fractions of the student's clips (train + val + test).

    ``noise``: video gets Gaussian pixel noise of std ``noise * 100`` grey levels, audio white
    noise of std ``noise`` times the tone amplitude. ``gap_music``: share of the gap clips whose
    sound is the class-agnostic music (the rest get another class's sound).
    """

    classes: int = 10
    clips_per_class: int = 20
    duration: float = 2.0
    size: int = 112
    fps: int = 25
    sample_rate: int = 16000
    gap: float = 0.0
    gap_music: float = 0.5
    no_audio: float = 0.0
    noise: float = 0.15
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    pretrain_clips_per_class: int = 10
    shared_cues: bool = True
    appearance_cue: str = "shape+colour"
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"SynthConfig.{name}={getattr(self, name)!r}: expected {expected}")

        need(2 <= self.classes <= MAX_CLASSES, "classes", f"an integer from 2 to {MAX_CLASSES}")
        need(1 <= self.clips_per_class <= MAX_CLIPS_PER_CLASS, "clips_per_class", f"1 to {MAX_CLIPS_PER_CLASS}")
        need(0 <= self.pretrain_clips_per_class <= MAX_CLIPS_PER_CLASS, "pretrain_clips_per_class",
             f"0 to {MAX_CLIPS_PER_CLASS}")
        need(0.2 <= self.duration <= 60, "duration", "0.2 to 60 seconds")
        need(32 <= self.size <= 2048 and self.size % 2 == 0, "size", "an even number of pixels from 32 to 2048 (yuv420p)")
        need(1 <= self.fps <= 120, "fps", "1 to 120 frames per second")
        # The highest pitch's second harmonic must stay well below Nyquist (x 1.2 margin).
        lowest_rate = math.ceil(2 * 2 * 1.2 * max(PITCHES_HZ))
        need(self.sample_rate >= lowest_rate, "sample_rate", f">= {lowest_rate} Hz")
        for name in ("gap", "gap_music", "no_audio", "val_fraction", "test_fraction"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "a fraction between 0 and 1")
        need(self.gap + self.no_audio <= 1.0, "gap", "gap + no_audio <= 1 (a clip cannot be both)")
        need(0.0 <= self.noise <= 1.0, "noise", "a level between 0 and 1")
        need(self.appearance_cue in APPEARANCE_CUES, "appearance_cue", f"one of {', '.join(APPEARANCE_CUES)}")
        looks = appearance_group(self.classes - 1, self.shared_cues) + 1
        max_looks = len(SHAPES) if self.appearance_cue == "shape" else len(SHAPES) * len(COLOURS)
        need(looks <= max_looks, "classes", f"at most {max_looks} distinct appearances ({self.classes} classes need "
             f"{looks} with shared_cues={self.shared_cues}, appearance_cue={self.appearance_cue!r})")
        need(sound_group(self.classes - 1, self.shared_cues) < len(PITCHES_HZ) * len(RHYTHMS_HZ), "classes",
             f"at most {len(PITCHES_HZ) * len(RHYTHMS_HZ)} distinct sounds (use shared_cues=True for more classes)")
        need(self.split_counts()["train"] >= 1, "test_fraction",
             "val_fraction + test_fraction small enough to leave >= 1 train clip per class")
        frames = round(self.duration * self.fps)
        check_count_fits("SynthConfig.duration x SynthConfig.fps", frames, RENDER_BYTES_PER_PIXEL * self.size**2,
                         f"frames of {self.size}x{self.size} rendered at once (float32, with noise)",
                         fix="lower SynthConfig.size")

    def split_counts(self) -> dict[str, int]:
        """Clips per class in each split (exact, rounded once per class)."""
        test = round(self.test_fraction * self.clips_per_class)
        val = round(self.val_fraction * self.clips_per_class)
        return {"pretrain": self.pretrain_clips_per_class, "train": self.clips_per_class - val - test,
                "val": val, "test": test}


# --------------------------------------------------------------------------------------------
# Class design


def appearance_group(c: int, shared: bool = True) -> int:
    """Classes {2k, 2k+1} share an appearance (``shared``); otherwise each class has its own."""
    return c // 2 if shared else c


def appearance(c: int, shared: bool = True) -> tuple[str, str]:
    """(shape, colour) of class ``c``; groups (:func:`appearance_group`) differ in both from their neighbours."""
    g = appearance_group(c, shared)
    return SHAPES[(g + g // len(COLOURS)) % len(SHAPES)], list(COLOURS)[g % len(COLOURS)]


def sound_group(c: int, shared: bool = True) -> int:
    """Classes {2k-1, 2k} share a sound (class 0 alone) when ``shared``: sound and appearance pairs
    interleave. Otherwise each class has its own sound."""
    return (c + 1) // 2 if shared else c


def sound(c: int, shared: bool = True) -> tuple[float, float]:
    """(pitch Hz, beep rhythm Hz, 0 = continuous) of class ``c``; unique per sound group < 32."""
    s = sound_group(c, shared)
    return PITCHES_HZ[s % len(PITCHES_HZ)], RHYTHMS_HZ[(s + s // len(PITCHES_HZ)) % len(RHYTHMS_HZ)]


def class_names(n: int, shared: bool = True) -> list[str]:
    """Class names, sorted in design order (so label id == design index)."""
    return [f"c{c:02d}_{appearance(c, shared)[1]}_{appearance(c, shared)[0]}_{MOTIONS[c % len(MOTIONS)]}"
            for c in range(n)]


def class_design(n: int, shared: bool = True) -> list[dict[str, Any]]:
    """The cues of each class (written to synth.json)."""
    return [
        {"id": c, "name": name, "shape": appearance(c, shared)[0], "colour": appearance(c, shared)[1],
         "motion": MOTIONS[c % len(MOTIONS)], "appearance_group": appearance_group(c, shared),
         "sound_group": sound_group(c, shared), "pitch_hz": sound(c, shared)[0], "rhythm_hz": sound(c, shared)[1]}
        for c, name in enumerate(class_names(n, shared))
    ]


# --------------------------------------------------------------------------------------------
# Rendering (vectorised numpy) and encoding (PyAV)


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to write one clip; content comes from (seed, index)."""

    index: int
    path: str
    video_class: int
    audio: str  # "class" | "music" | "none"
    audio_class: int | None
    config: SynthConfig


def _trajectory(motion: str, t: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Object centre (x, y) per frame; positions wrap around the frame (a torus)."""
    x0, y0 = rng.uniform(0, size, 2)
    if motion in ("right", "down", "up"):
        speed = size * rng.uniform(0.35, 0.55)
        dx, dy = {"right": (1, 0), "down": (0, 1), "up": (0, -1)}[motion]
        return x0 + dx * speed * t, y0 + dy * speed * t, {"speed_px_s": speed}
    if motion == "orbit":
        radius, rev = size * rng.uniform(0.15, 0.22), rng.uniform(0.6, 0.9)
        phase = rng.uniform(0, 2 * np.pi)
        angle = phase + 2 * np.pi * rev * t
        return x0 + radius * np.cos(angle), y0 + radius * np.sin(angle), {"radius_px": radius, "rev_s": rev}
    amplitude, freq = size * rng.uniform(0.12, 0.18), rng.uniform(2.5, 3.5)
    wobble = amplitude * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    if motion == "shake_h":
        return x0 + wobble, np.full_like(t, y0), {"amplitude_px": amplitude, "freq_hz": freq}
    return np.full_like(t, x0), y0 + wobble, {"amplitude_px": amplitude, "freq_hz": freq}


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` of radius ``r`` given offsets from its centre."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy < r * r
    if shape == "square":
        return np.maximum(ax, ay) < 0.85 * r
    if shape == "triangle":  # pointing up: widens from the apex at -r to the base at +0.7r
        return (dy < 0.7 * r) & (ax < 0.6 * (dy + r))
    if shape == "diamond":
        return ax + ay < 1.15 * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < r * r) & (d2 > (0.55 * r) ** 2)
    if shape == "cross":
        return ((ax < 0.3 * r) & (ay < r)) | ((ay < 0.3 * r) & (ax < r))
    return (ax < r) & (ay < 0.4 * r)  # bar


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Static smooth random texture, muted so the object's colour stands out. (H, W, 3) float32."""
    cells = max(2, size // 8)
    low = rng.uniform(70, 150, (cells, cells, 3)).astype(np.float32)
    up = np.repeat(np.repeat(low, -(-size // cells), axis=0), -(-size // cells), axis=1)[:size, :size]
    # A 3x3 box blur over the blocky texture (rolls: vectorised, wraps like the object).
    return sum(np.roll(up, (i, j), axis=(0, 1)) for i in (-2, 0, 2) for j in (-2, 0, 2)) / 9.0


def render_video(c: int, cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Frames (T, H, W, 3) uint8 of class ``c`` and the cue parameters drawn for them."""
    n, size = round(cfg.duration * cfg.fps), cfg.size
    t = np.arange(n, dtype=np.float64) / cfg.fps
    shape, colour_name = appearance(c, cfg.shared_cues)
    if cfg.appearance_cue == "shape":
        colour_name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    motion = MOTIONS[c % len(MOTIONS)]
    radius = size * rng.uniform(0.10, 0.14)
    colour = np.clip(np.array(COLOURS[colour_name]) + rng.uniform(-20, 20, 3), 0, 255).astype(np.float32)
    cx, cy, motion_params = _trajectory(motion, t, size, rng)
    grid = np.arange(size, dtype=np.float32)
    half = size / 2.0
    dx = (grid[None, None, :] - cx[:, None, None].astype(np.float32) + half) % size - half  # (T,1,W)
    dy = (grid[None, :, None] - cy[:, None, None].astype(np.float32) + half) % size - half  # (T,H,1)
    mask = _shape_mask(shape, dx, dy, radius)  # broadcast to (T,H,W)
    frames = np.where(mask[..., None], colour, _background(size, rng)[None])
    frames += rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(cfg.noise * 100.0)
    params = {"shape": shape, "colour": [round(float(v), 1) for v in colour], "radius_px": radius,
              "motion": motion, "start_xy": [float(cx[0] % size), float(cy[0] % size)], **motion_params}
    return np.clip(frames, 0, 255).astype(np.uint8), params


def _tone(t: np.ndarray, pitch: float, rhythm: float, rng: np.random.Generator) -> np.ndarray:
    """A tone with a second harmonic, gated into beeps of ``rhythm`` Hz (0 = continuous)."""
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * pitch * t + phase) + 0.3 * np.sin(4 * np.pi * pitch * t + phase)
    if rhythm > 0:
        wave *= ((t * rhythm + rng.uniform(0, 1)) % 1.0) < 0.5
    return wave


def _music(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The class-agnostic melody: a 4-note arpeggio, 0.25 s per note, random start in the cycle."""
    step = (np.floor(t / 0.25).astype(np.int64) + rng.integers(0, len(MUSIC_NOTES_HZ))) % len(MUSIC_NOTES_HZ)
    pitch = np.asarray(MUSIC_NOTES_HZ)[step]
    return np.sin(2 * np.pi * pitch * t) + 0.5 * np.sin(2 * np.pi * 1.5 * pitch * t)


def render_audio(job: _Job, rng: np.random.Generator) -> tuple[np.ndarray | None, dict]:
    """Mono float32 samples in [-1, 1] (None when the clip has no audio) and their parameters."""
    if job.audio == "none":
        return None, {"audio": "none"}
    cfg = job.config
    t = np.arange(round(cfg.duration * cfg.sample_rate), dtype=np.float64) / cfg.sample_rate
    amplitude = rng.uniform(0.25, 0.4)
    if job.audio == "music":
        wave, params = _music(t, rng), {"audio": "music"}
    else:
        pitch, rhythm = sound(job.audio_class, cfg.shared_cues)
        pitch *= rng.uniform(0.98, 1.02)  # jitter well inside the 32 % pitch spacing
        wave = _tone(t, pitch, rhythm, rng)
        params = {"audio": "class", "pitch_hz": pitch, "rhythm_hz": rhythm}
    wave = amplitude * wave / max(np.abs(wave).max(), 1e-6)
    wave += rng.standard_normal(t.shape) * (cfg.noise * amplitude)
    return np.clip(wave, -1.0, 1.0).astype(np.float32), {**params, "amplitude": amplitude}


def _encode(path: str, frames: np.ndarray, wave: np.ndarray | None, cfg: SynthConfig) -> None:
    """Write H.264 (yuv420p, ``cfg.fps``) + AAC mono to ``path`` as mp4."""
    with av.open(path, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=cfg.fps, options=dict(_VIDEO_OPTIONS, g=str(cfg.fps)))
        video.width, video.height, video.pix_fmt = cfg.size, cfg.size, "yuv420p"
        video.codec_context.thread_count = 1  # the workers are the parallelism
        audio = None
        if wave is not None:
            audio = container.add_stream("aac", rate=cfg.sample_rate, layout="mono")
            audio.bit_rate = 64000
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, cfg.fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            frame = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = cfg.sample_rate, 0, Fraction(1, cfg.sample_rate)
            container.mux(audio.encode(frame))  # the encoder cuts it into AAC-sized frames
            container.mux(audio.encode(None))


def write_clip(job: _Job) -> dict[str, Any]:
    """Render and encode one clip (runs in a worker); returns its cue parameters or an error."""
    rng = np.random.default_rng([job.config.seed, job.index])
    frames, video_params = render_video(job.video_class, job.config, rng)
    wave, audio_params = render_audio(job, rng)
    tmp = f"{job.path}.{os.getpid()}.part"
    try:
        _encode(tmp, frames, wave, job.config)
        os.replace(tmp, job.path)
    except (av.FFmpegError, OSError) as exc:
        # Returned, not raised: MediaError does not survive pickling across processes.
        return {"error": f"cannot encode ({exc})"}
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"video": _rounded(video_params), "sound": _rounded(audio_params)}


def _rounded(params: dict[str, Any]) -> dict[str, Any]:
    """Ground-truth numbers to 4 decimals: readable synth.json, nothing lost that matters."""
    def r(v: Any) -> Any:
        if isinstance(v, list):
            return [r(x) for x in v]
        return round(float(v), 4) if isinstance(v, (float, np.floating)) else v

    return {k: r(v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# Planning and writing the dataset


@dataclass(frozen=True)
class _Plan:
    """One clip as planned in the parent process (identities, split, audio assignment)."""

    index: int
    youtube_id: str
    start_seconds: int
    split: str
    video_class: int
    audio: str  # "class" | "music" | "none"
    audio_class: int | None

    @property
    def file(self) -> str:
        return f"{self.youtube_id}_{self.start_seconds:06d}.mp4"

    @property
    def id(self) -> str:
        return Path(self.file).stem


def _gap_class(c: int, n: int, shared: bool, rng: np.random.Generator) -> int:
    """Another class whose sound differs from class ``c``'s (a true mismatch)."""
    others = [k for k in range(n) if sound_group(k, shared) != sound_group(c, shared)]
    return int(others[rng.integers(0, len(others))])


def _audio_assignment(cfg: SynthConfig, classes: list[int], rng: np.random.Generator) -> list[tuple[str, int | None]]:
    """(audio kind, audio class) for each student clip; gap and no-audio counts are exact."""
    n = len(classes)
    order = rng.permutation(n)
    n_none, n_gap = round(cfg.no_audio * n), round(cfg.gap * n)
    n_music = round(cfg.gap_music * n_gap)
    out: list[tuple[str, int | None]] = [("class", c) for c in classes]
    for rank, i in enumerate(order[: n_none + n_gap]):
        if rank < n_none:
            out[i] = ("none", None)
        elif rank < n_none + n_music:
            out[i] = ("music", None)
        else:
            out[i] = ("class", _gap_class(classes[i], cfg.classes, cfg.shared_cues, rng))
    return out


def plan(cfg: SynthConfig) -> list[_Plan]:
    """Every clip of the dataset in manifest order: splits pretrain, train, val, test; by class."""
    rng = np.random.default_rng([cfg.seed, 2**32 - 1])  # a stream apart from the clips' streams
    counts = cfg.split_counts()
    slots = [(split, c) for split in SPLITS for c in range(cfg.classes) for _ in range(counts[split])]
    student = [i for i, (split, _) in enumerate(slots) if split != "pretrain"]
    audio: list[tuple[str, int | None]] = [("class", c) for _, c in slots]
    for i, assigned in zip(student, _audio_assignment(cfg, [slots[i][1] for i in student], rng)):
        audio[i] = assigned
    starts = rng.integers(0, 300, len(slots))  # VGGSound-style start_seconds of the "source" video
    return [
        _Plan(i, f"synth{i:06d}", int(starts[i]), split, c, audio[i][0], audio[i][1])
        for i, (split, c) in enumerate(slots)
    ]


_OWNED = ("manifest.csv", "vggsound.csv", "synth.json")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite``; then remove only files we write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; pass a folder for the synthetic dataset")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out_dir} is not empty; choose a new folder or pass overwrite=True (--overwrite)")
        for name in _OWNED:
            (out_dir / name).unlink(missing_ok=True)
        videos = out_dir / "videos"
        if videos.is_dir():  # only our own naming: never delete files we did not write
            for old in videos.glob("synth*_*.mp4"):
                old.unlink()
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)


def _run_jobs(jobs: list[_Job], workers: int, progress: Callable[[int, int], None] | None) -> list[dict]:
    """Write every clip, in worker processes when ``workers > 1``; results in job order."""
    results: list[dict] = [{} for _ in jobs]
    total = len(jobs)
    # Worker processes (forkserver): safe next to threads (torch, BLAS) in the parent; they import
    # only numpy, av and this module.
    processes = min(workers, total) if workers > 1 and total > 1 else 0
    with WorkerPool(write_clip, processes, name="synth", job="the generation",
                    inline="workers=1 (--workers 1) writes the clips in this process instead") as pool:
        pool.start(jobs)
        for count, (job, result) in enumerate(pool, start=1):
            if isinstance(result, TaskFailure):  # no deadline here: only a worker that died
                result = {"error": "the encoder process died while writing this clip"}
            if "error" in result:
                raise MediaError(job.path, "encode", result["error"])
            results[job.index] = result
            if progress is not None:
                progress(count, total)
    return results


def _vggsound_text(plans: Iterable[_Plan], names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for p in plans:
        writer.writerow([p.youtube_id, p.start_seconds, names[p.video_class], p.split])
    return buffer.getvalue()


def _truth(cfg: SynthConfig, plans: list[_Plan], results: list[dict], names: list[str]) -> dict[str, Any]:
    """The synth.json content: config, design, per-clip ground truth and counts."""
    clips = []
    for p, result in zip(plans, results):
        audio_class = names[p.audio_class] if p.audio_class is not None else ("music" if p.audio == "music" else None)
        clips.append({
            "id": p.id, "file": f"videos/{p.file}", "youtube_id": p.youtube_id, "start_seconds": p.start_seconds,
            "split": p.split, "video_class": names[p.video_class], "audio_class": audio_class,
            "has_audio": p.audio != "none",
            "gap": p.audio == "music" or (p.audio == "class" and p.audio_class != p.video_class),
            "cues": result,
        })
    student = [c for c in clips if c["split"] != "pretrain"]
    counts = {
        "clips": len(clips), "by_split": {s: sum(c["split"] == s for c in clips) for s in SPLITS},
        "gap": sum(c["gap"] for c in student), "no_audio": sum(not c["has_audio"] for c in clips),
        "music": sum(c["audio_class"] == "music" for c in clips),
    }
    return {"format": "ccl-cache-synth", "version": 1, "config": asdict(cfg), "classes": class_design(cfg.classes, cfg.shared_cues),
            "counts": counts, "clips": clips}


def generate(
    out_dir: str | Path, config: SynthConfig = SynthConfig(), workers: int = 2,
    progress: Callable[[int, int], None] | None = None, overwrite: bool = False,
) -> Manifest:
    """Write the synthetic dataset into ``out_dir`` and return its manifest (absolute paths).

    ``progress(done, total)`` is called after each clip. With ``workers > 1`` clips are written by
    worker processes (``ccl_cache.workers``), so a script calling this must guard its entry point with
    ``if __name__ == "__main__":``. Refuses a non-empty ``out_dir`` unless ``overwrite``.
    """
    check_workers(workers)  # before the folder is touched
    out = Path(os.path.abspath(out_dir))
    _prepare_out_dir(out, overwrite)
    names = class_names(config.classes, config.shared_cues)
    plans = plan(config)
    jobs = [_Job(p.index, str(out / "videos" / p.file), p.video_class, p.audio, p.audio_class, config) for p in plans]
    results = _run_jobs(jobs, workers, progress)
    records = [ClipRecord(p.id, str(out / "videos" / p.file), names[p.video_class], p.split) for p in plans]
    manifest = Manifest.from_records(records, names)
    write_csv(manifest, out / "manifest.csv")
    atomic_write_text(out / "vggsound.csv", _vggsound_text(plans, names))
    write_json(out / "synth.json", _truth(config, plans, results, names))
    return manifest


def load_truth(out_dir: str | Path) -> dict[str, Any]:
    """The parsed ``synth.json`` of a generated dataset (config, classes, clips, counts)."""
    path = Path(out_dir) / "synth.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the synthetic dataset's ground truth ({exc}); "
                          "generate the dataset with `ccl-cache synth` first") from None
    if data.get("format") != "ccl-cache-synth":
        raise ConfigError(f"{path}: not a ccl-cache synth.json (format={data.get('format')!r})")
    return data
