"""Clip geometry and augmentation: what one training item looks like (:class:`ClipSpec`) and the
paper's training crop/flip (:func:`augment`) and evaluation centre crop (:func:`center`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from ccl_cache.errors import ConfigError

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


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
    """uint8 (T, 3, H, W) → contiguous float (3, T, H, W) with Kinetics mean/std, on ``video``'s device.

    The layout change happens on uint8 (a quarter of the bytes) and the maths is two in-place
    passes, faster than float-converting the channels-last resize output first.
    """
    scale, shift = (_SCALE, _SHIFT) if video.device.type == "cpu" else \
        (_SCALE.to(video.device, non_blocking=True), _SHIFT.to(video.device, non_blocking=True))
    return video.permute(1, 0, 2, 3).contiguous().float().mul_(scale).add_(shift)


@dataclass(frozen=True)
class Crop:
    """One clip's training augmentation: the RandomResizedCrop box and the flip decision."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def draw_crop(height: int, width: int, spec: ClipSpec, rng: np.random.Generator) -> Crop:
    """The augmentation of one clip of ``height``×``width`` frames, drawn from ``rng`` (the crop,
    then the flip), wherever the frames are decoded."""
    top, left, h, w = crop_params(height, width, spec.scale, spec.ratio, rng)
    return Crop(top, left, h, w, bool(spec.flip and rng.random() < 0.5))


def apply_crop(frames: torch.Tensor, crop: Crop, spec: ClipSpec) -> torch.Tensor:
    """uint8 (T, H, W, 3) frames, on any device → float (3, T, S, S) cropped, flipped, normalised."""
    video = frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
    video = TF.resized_crop(video, crop.top, crop.left, crop.height, crop.width, [spec.size, spec.size],
                            antialias=True)
    if crop.flip:
        video = video.flip(-1)
    return normalize(video)


def augment(frames: torch.Tensor, spec: ClipSpec, rng: np.random.Generator) -> torch.Tensor:
    """Training transform of uint8 (T, H, W, 3) frames → float (3, T, S, S).

    One crop and one flip decision for the whole clip, so motion stays coherent; the resize runs
    on uint8 (torchvision's fast path) before the float conversion.
    """
    return apply_crop(frames, draw_crop(frames.shape[1], frames.shape[2], spec, rng), spec)


def center(frames: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """Evaluation transform: shorter side to the base height, centre crop S×S → (3, T, S, S)."""
    video = frames.permute(0, 3, 1, 2)
    base_h = spec.base_size[0]
    h, w = video.shape[-2:]
    if min(h, w) != base_h:
        video = TF.resize(video, [base_h], antialias=True)
    return normalize(TF.center_crop(video, [spec.size, spec.size]))
