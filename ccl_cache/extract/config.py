"""What an extraction run is asked to do: :class:`ExtractConfig`, its policies' names, the shard it
runs, the torch threads it uses and the config as run (saved beside the store)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ccl_cache import hardware
from ccl_cache.errors import ConfigError
from ccl_cache.resources import check_count_fits
from ccl_cache.store.schema import EMBEDDING_DTYPES, parse_shard
from ccl_cache.workers import check_workers

FRAME_TIMES = "uniform-centres"  # t_k = s + (k + 1/2)(e - s)/K over the (decodable) window
MAX_IMAGE_SIZE = 2048  # beyond it every frame fails in the scaler (a typo, not a teacher input size)
# A batch is one store chunk, decoded, embedded and written whole: Zarr allocates a whole chunk on
# write even in a store of fewer rows, and HDF5 refuses chunks of 4 GiB (8192 rows of 8 frames of
# 2048-d float32 are 512 MiB). Reading random training batches wants small chunks anyway.
MAX_BATCH_SIZE = 8192
# Shorter audio segments are mostly the teacher's zero padding (CNN14 pads inputs to 0.32 s) and
# multiply the store's segment slots (K_a = the longest clip / the segment).
MIN_AUDIO_SEGMENT_S = 0.1
FRAME_DECODE = "shorter-side=image_size"  # decode size before the teacher's centre crop
FRAME_SAMPLING = ("spread", "keyframes")  # which frame stands for each t_k (the first is the default)
# What a clip's audio window holds where the audio stream does not reach it (the audio teacher's
# fingerprint records it): zeros, unless the stream covers less than min_coverage of the window,
# which is then an "audio"-stage "partial-audio" failure (mask False; the image side is unaffected).
AUDIO_PADDING = "zeros; partial-audio below min_coverage"

# Exit statuses of `ccl-cache extract` (documented in its --help).
EXIT_OK, EXIT_FAILED_CLIPS = 0, 1  # usage/config errors exit with 2 (ccl_cache_cli.main)


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
            (self.dtype in EMBEDDING_DTYPES, f"dtype {self.dtype!r}: choose one of {', '.join(EMBEDDING_DTYPES)}"),
            (self.frames_per_clip >= 1, f"frames_per_clip={self.frames_per_clip}: need at least 1"),
            (self.frame_sampling in FRAME_SAMPLING,
             f"frame_sampling={self.frame_sampling!r}: choose one of {', '.join(FRAME_SAMPLING)}"),
            (8 <= self.image_size <= MAX_IMAGE_SIZE,
             f"image_size={self.image_size}: give 8 to {MAX_IMAGE_SIZE} pixels (the shorter side the image teacher "
             "sees; ImageNet teachers are trained at 224, the paper's at 112)"),
            (self.audio_segment is None or self.audio_segment >= MIN_AUDIO_SEGMENT_S,
             f"audio_segment={self.audio_segment}: give at least {MIN_AUDIO_SEGMENT_S} seconds (or none: one "
             "embedding per clip); shorter segments are mostly the teacher's padding"),
            (1 <= self.batch_size <= MAX_BATCH_SIZE,
             f"batch_size={self.batch_size}: give 1 to {MAX_BATCH_SIZE} (a batch is one store chunk, held and "
             "written whole)"),
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
        check_workers(self.workers)  # before the teachers load: the pool would refuse it later
        if self.image_teacher is not None:
            # TeacherRunner prepares every frame of a chunk (float32, image_size²) before its forward passes.
            frame, side = 3 * self.image_size * self.image_size * 4, f"{self.image_size}x{self.image_size}"
            check_count_fits("frames_per_clip", self.frames_per_clip, frame, f"float32 frames of {side}",
                             fix="lower --image-size")
            check_count_fits("batch_size", self.batch_size, self.frames_per_clip * frame,
                             f"clips of {self.frames_per_clip} float32 frames of {side}",
                             fix="lower --frames-per-clip or --image-size")
        hardware.check_device_name(self.device)
        if self.shard is not None:
            parse_shard(self.shard)


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


def inference_threads(config: ExtractConfig, device: str) -> int | None:
    """Torch threads for the teachers (see ``ExtractConfig.threads``); None leaves torch's."""
    if config.threads is not None or not device.startswith("cpu"):
        return config.threads
    cores = hardware.usable_cores()
    return max(1, cores - config.workers)


def resolved_config(config: ExtractConfig, shard: tuple[int, int] | None, device: str) -> ExtractConfig:
    """The config as run: absolute paths, the shard, device and threads actually used (saved as YAML)."""
    return dataclasses.replace(
        config, manifest=os.path.abspath(config.manifest), store=os.path.abspath(config.store),
        root=None if config.root is None else os.path.abspath(config.root), shard=shard_label(shard), device=device,
        threads=inference_threads(config, device),
    )  # fmt: skip
