"""What every teacher is: a frozen-able network, its preprocessing, and a fingerprint.

A teacher turns one modality of a clip into embeddings that the student later learns from
(Chen et al., "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning",
CVPR 2021: the audio teacher is PANNs CNN14, the image teacher an ImageNet ResNet-34).
Extraction runs it once per clip and the store keeps its :meth:`Teacher.fingerprint`, so that a
resumed extraction with other weights or other preprocessing is refused instead of mixed in.

The weights a file or download provides are always the state dict of ``Teacher.backbone``:
classification heads and fixed front-end buffers found in released checkpoints are listed in
``ignore_prefixes`` and skipped on load.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccl_cache.errors import ConfigError, TeacherError
from ccl_cache.fileio import to_plain
from ccl_cache.registry import Registry

AUDIO = "audio"
IMAGE = "image"
MODALITIES = (AUDIO, IMAGE)

# torchvision's ImageNet statistics (RGB, on [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How raw media become a teacher's input; part of the fingerprint.

    audio: ``sample_rate`` of the mono waveform the teacher expects.
    image: frames are resized (shorter side to ``image_size``, bilinear, antialiased),
    centre-cropped to ``image_size`` x ``image_size``, scaled to [0, 1] and normalised with
    ``mean``/``std`` per RGB channel. ``extra`` records the remaining settings (front-end
    parameters, resize rule) as JSON-friendly values.
    """

    modality: str
    sample_rate: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise TeacherError(f"Preprocess.modality={self.modality!r}; expected one of {MODALITIES}")
        if self.modality == AUDIO and not (self.sample_rate and self.sample_rate > 0):
            raise TeacherError(f"audio Preprocess needs a positive sample_rate, got {self.sample_rate!r}")
        if self.modality == IMAGE:
            if not (self.image_size and self.image_size > 0):
                raise TeacherError(f"image Preprocess needs a positive image_size, got {self.image_size!r}")
            for label, value in (("mean", self.mean), ("std", self.std)):
                if value is None or len(value) != 3:
                    raise TeacherError(f"image Preprocess.{label}={value!r}; expected 3 values (R, G, B)")


class Teacher(nn.Module):
    """A teacher network: ``backbone`` (whose state dict weight files hold) + preprocessing.

    Subclasses override :meth:`forward` when the backbone is not the whole computation (the
    audio teachers put a fixed log-mel front end before it). ``weights`` is ``"random"``, the
    sha256 of the weights file, ``"imagenet:<enum>"`` or, for user factories that bring their
    own weights, ``"factory:<spec>"``.
    """

    def __init__(
        self,
        *,
        name: str,
        arch: str,
        backbone: nn.Module,
        dim: int,
        preprocess: Preprocess,
        ignore_prefixes: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.name = name
        self.arch = arch
        self.modality = preprocess.modality
        self.dim = int(dim)
        self.preprocess = preprocess
        self.backbone = backbone
        self.weights = "random"
        self.ignore_prefixes = tuple(ignore_prefixes)

    def forward(self, x: Tensor) -> Tensor:
        """audio: (B, S) waveform at ``preprocess.sample_rate``; image: (B, 3, H, W) normalised."""
        return self.backbone(x)

    def prepare(self, raw: np.ndarray | Tensor) -> Tensor:
        """audio: (S,) float waveform -> (S,) float32 tensor; image: uint8 (K, H, W, 3) -> (K, 3, S, S)."""
        if self.modality == AUDIO:
            return prepare_audio(raw, self.name)
        return prepare_image(raw, self.preprocess, self.name)

    def fingerprint(self) -> dict[str, Any]:
        """JSON-ready identity of what this teacher computes; the store refuses mismatches."""
        return to_plain(
            {
                "name": self.name,
                "arch": self.arch,
                "modality": self.modality,
                "dim": self.dim,
                "weights": self.weights,
                "preprocess": dataclasses.asdict(self.preprocess),
            }
        )

    def pretrained_state(self, tag: str) -> tuple[dict[str, Tensor], str]:
        """Built-in weights named ``tag`` -> (backbone state dict, weights label). None by default."""
        raise TeacherError(
            f"teacher {self.name!r} has no built-in weights {tag!r}; pass a path to a weights file "
            "(a state dict or a `ccl-cache teach` checkpoint) or 'none' (a built-in teacher then stays random, a "
            "'module:factory' teacher keeps its factory's own weights)"
        )

    def check_state(self, state: dict[str, Tensor], source: str) -> None:
        """Hook: refuse a weights file whose fixed parts (e.g. a mel filterbank) differ from ours."""


FactoryT = Callable[..., Teacher]
TEACHERS: Registry[FactoryT] = Registry("teacher")
"""Name -> factory(**options) building a randomly initialised teacher; weights come after."""

_MODALITY_OF: dict[str, str] = {}


def register_teacher(name: str, modality: str) -> Callable[[FactoryT], FactoryT]:
    """Register a teacher factory under ``name`` and remember its modality (for CLI choices)."""
    if modality not in MODALITIES:
        raise TeacherError(f"teacher {name!r}: modality {modality!r} is not one of {MODALITIES}")

    def add(factory: FactoryT) -> FactoryT:
        TEACHERS.register(name)(factory)
        _MODALITY_OF[name] = modality
        return factory

    return add


def teacher_names(modality: str | None = None) -> list[str]:
    """Registered teacher names, optionally only those of one modality."""
    return [n for n in TEACHERS.names() if modality is None or _MODALITY_OF[n] == modality]


def teacher_modality(name: str) -> str:
    """Modality of a registered teacher (raises ConfigError for an unknown name)."""
    TEACHERS.get(name)
    return _MODALITY_OF[name]


def call_factory(factory: Callable[..., Any], options: dict[str, Any], who: str) -> Any:
    """Call ``factory(**options)``, turning unknown or missing options into a ConfigError."""
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(
            f"teacher {who!r} does not take options {sorted(options)} ({exc}); it accepts "
            f"{inspect.signature(factory)}"
        ) from None
    except ValueError:  # no introspectable signature (some builtins): let the call decide
        pass
    return factory(**options)


def prepare_audio(raw: np.ndarray | Tensor, who: str = "audio teacher") -> Tensor:
    """Mono float waveform (S,) -> contiguous float32 tensor (S,); refuses other shapes."""
    wave = torch.as_tensor(raw)
    if wave.ndim != 1 or not torch.is_floating_point(wave):
        raise TeacherError(
            f"{who}: expected a mono float waveform of shape (S,), got {tuple(wave.shape)} "
            f"{wave.dtype}; decode with ccl_cache.media.read_audio (mono float32)"
        )
    if wave.numel() == 0:
        raise TeacherError(f"{who}: the waveform is empty; the clip window holds no audio")
    return wave.to(torch.float32).contiguous()


def prepare_image(raw: np.ndarray | Tensor, pre: Preprocess, who: str = "image teacher") -> Tensor:
    """uint8 RGB frames (K, H, W, 3) -> (K, 3, S, S) float32: shorter side to S, centre crop, normalise."""
    frames = torch.as_tensor(raw)
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise TeacherError(
            f"{who}: expected uint8 RGB frames of shape (K, H, W, 3), got {tuple(frames.shape)} "
            f"{frames.dtype}; decode with ccl_cache.media.read_frames"
        )
    size = int(pre.image_size)  # type: ignore[arg-type]
    x = frames.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    # max() guards rounding: the centre crop must never run out of pixels.
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def image_preprocess(image_size: int) -> Preprocess:
    """The ImageNet-style preprocessing used by every built-in image teacher."""
    return Preprocess(
        modality=IMAGE,
        image_size=int(image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={"resize": "shorter-side bilinear antialias", "crop": "center", "scale": "1/255"},
    )


def pad_to_min(wave: Tensor, min_samples: int) -> Tensor:
    """Zero-pad (B, S) at the end to ``min_samples``: the CNNs pool time by 2^k and need frames."""
    short = min_samples - wave.shape[-1]
    return F.pad(wave, (0, short)) if short > 0 else wave
