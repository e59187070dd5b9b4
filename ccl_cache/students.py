"""Video student networks: one registry, one output type.

Every student maps a clip batch ``video`` (B, 3, T, H, W) float to
:class:`ccl_cache.losses.StudentOut` ``(logits (B, C), embedding (B, 512))``, where the embedding
is the globally pooled feature after the network's last ReLU and before the classifier: the
feature that compositional contrastive learning (Chen et al., "Distilling Audio-Visual Knowledge
by Compositional Contrastive Learning", CVPR 2021) and the Table 1 baselines act on, and the one
that is indexed for retrieval. Because it follows a ReLU it is non-negative.

Registered students (:data:`STUDENTS`, options in brackets):

- ``"r2plus1d_18"``, ``"r3d_18"``, ``"mc3_18"``: torchvision's video ResNets (two blocks per
  stage), random init by default [``weights=None|"kinetics"``].
- ``"r21d_ccl"``: the R(2+1)D the authors' code (yanbeic/CCL, ``models/r21d.py``, depth 18)
  actually trained: one block per stage, a 3×7×7 factorised stem, and the (2+1)D middle-plane
  rule of Tran et al. (CVPR 2018, §3.5) for every convolution, 1×1×1 shortcuts included
  [``layers=(1, 1, 1, 1)``].
- ``"small"``: a five-layer 3D CNN for CPU runs (tests, the demo) [``width=32``].

Forward passes contain no Python-side shape branching, so they trace, compile and run under
``torch.autocast`` and ``torch.channels_last_3d`` unchanged.
"""

from __future__ import annotations

import inspect
import urllib.error
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ccl_cache.errors import ConfigError
from ccl_cache.losses import StudentOut
from ccl_cache.registry import Registry
from ccl_cache.typecheck import expected_type

EMBEDDING_DIM = 512
"""Every registered student has a 512-d embedding, the size the paper's composition uses."""

StudentFactory = Callable[..., nn.Module]
STUDENTS: Registry[StudentFactory] = Registry("student")


class VideoStudent(nn.Module):
    """A feature extractor ``features: video -> (B, D)`` followed by a linear classifier ``fc``.

    ``embedding_dim`` tells the trainer and the losses the student's feature size.
    """

    def __init__(self, features: nn.Module, num_classes: int, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Linear(embedding_dim, num_classes)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes

    def forward(self, video: torch.Tensor) -> StudentOut:
        embedding = self.features(video)
        return StudentOut(logits=self.fc(embedding), embedding=embedding)


def build_student(name: str, num_classes: int, **opts: Any) -> VideoStudent:
    """Build the registered student ``name`` with a fresh ``num_classes``-way classifier.

    Unknown names and options raise :class:`~ccl_cache.errors.ConfigError` listing the choices.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    factory = STUDENTS.get(name)
    params = inspect.signature(factory).parameters
    for key, value in opts.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        wanted = None if default in (inspect.Parameter.empty, None) else expected_type(value, type(default))
        if wanted is not None:  # e.g. width=abc from --student-opt
            raise ConfigError(f"student {name!r} option {key}={value!r}: expected {wanted} (default {default!r})")
    try:
        return factory(num_classes, **opts)
    except TypeError as exc:
        # A misspelt option is a user error, not a crash: say which options exist.
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(f"student {name!r} does not take option(s) {sorted(opts)}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (what papers report as a model's size)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# torchvision video ResNets


def _torchvision_backbone(arch: str, weights: str | None) -> nn.Module:
    """torchvision's ``arch`` with its classifier removed (returns the pooled 512-d feature)."""
    from torchvision.models import video as tv_video

    if weights not in (None, "none", "kinetics"):
        raise ConfigError(f"weights for {arch} must be None or 'kinetics', got {weights!r}")
    enum = None
    if weights == "kinetics":
        enum_cls = {"r2plus1d_18": tv_video.R2Plus1D_18_Weights, "r3d_18": tv_video.R3D_18_Weights,
                    "mc3_18": tv_video.MC3_18_Weights}[arch]
        enum = enum_cls.KINETICS400_V1
    try:
        model = getattr(tv_video, arch)(weights=enum)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"could not load torchvision's {arch} KINETICS400_V1 weights ({exc}); this needs the "
            "internet once, or the file already in $TORCH_HOME/hub/checkpoints. Download it on a "
            "connected machine and copy it there, or build the student with weights=None"
        ) from exc
    # The backbone's own forward then ends at avgpool + flatten: the post-ReLU pooled feature.
    model.fc = nn.Identity()
    return model


def _register_torchvision(arch: str) -> None:
    def factory(num_classes: int, weights: str | None = None) -> VideoStudent:
        return VideoStudent(_torchvision_backbone(arch, weights), num_classes)

    factory.__doc__ = f"torchvision's {arch} (two blocks per stage); weights None or 'kinetics'."
    STUDENTS.register(arch)(factory)


for _arch in ("r2plus1d_18", "r3d_18", "mc3_18"):
    _register_torchvision(_arch)


# --------------------------------------------------------------------------------------------
# The CCL code's R(2+1)D (yanbeic/CCL models/r21d.py, model_depth 18 -> layer sizes 1,1,1,1)


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    t, h, w = value
    return (t, h, w)


def mid_planes(in_planes: int, out_planes: int, kernel: tuple[int, int, int]) -> int:
    """Channels between the spatial and the temporal convolution of a (2+1)D convolution.

    Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition" (CVPR
    2018) §3.5: chosen so the factorised pair has about as many parameters as the full
    ``t×d×d`` 3D convolution: ``floor(t·d²·N_in·N_out / (d²·N_in + t·N_out))``.
    """
    t, h, w = kernel
    return (t * h * w * in_planes * out_planes) // (h * w * in_planes + t * out_planes)


class Conv2Plus1d(nn.Sequential):
    """Spatial ``1×k×k`` conv → BN → ReLU → temporal ``k×1×1`` conv (no bias, no final BN)."""

    def __init__(self, in_planes: int, out_planes: int, kernel: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0) -> None:
        k, s, p = _triple(kernel), _triple(stride), _triple(padding)
        mid = mid_planes(in_planes, out_planes, k)
        super().__init__(
            nn.Conv3d(in_planes, mid, (1, k[1], k[2]), (1, s[1], s[2]), (0, p[1], p[2]), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_planes, (k[0], 1, 1), (s[0], 1, 1), (p[0], 0, 0), bias=False),
        )


class ResBlock2Plus1d(nn.Module):
    """Residual block of two 3×3×3 (2+1)D convs; a downsampling block strides 2 in T, H and W
    and projects its shortcut with a strided 1×1×1 (2+1)D conv + BN, as the CCL code does."""

    def __init__(self, in_planes: int, out_planes: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.residual = nn.Sequential(
            Conv2Plus1d(in_planes, out_planes, 3, stride, 1),
            nn.BatchNorm3d(out_planes),
            nn.ReLU(inplace=True),
            Conv2Plus1d(out_planes, out_planes, 3, 1, 1),
            nn.BatchNorm3d(out_planes),
        )
        # Identity when the shapes already agree, so forward needs no branch.
        self.shortcut: nn.Module = (
            nn.Sequential(Conv2Plus1d(in_planes, out_planes, 1, 2, 0), nn.BatchNorm3d(out_planes))
            if downsample else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x) + self.residual(x))


def r21d_ccl_features(layers: Sequence[int] = (1, 1, 1, 1)) -> nn.Sequential:
    """The CCL code's R2Plus1DNet trunk up to the 512-d pooled feature."""
    if len(layers) != 4 or any(int(n) < 1 for n in layers):
        raise ConfigError(f"r21d_ccl layers must be four positive block counts, got {tuple(layers)!r}")
    widths = (64, 64, 128, 256, 512)
    modules: list[nn.Module] = [
        Conv2Plus1d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3)),
        nn.BatchNorm3d(64),
        nn.ReLU(inplace=True),
    ]
    for stage, blocks in enumerate(layers):
        in_planes, out_planes = widths[stage], widths[stage + 1]
        stage_blocks = [ResBlock2Plus1d(in_planes, out_planes, downsample=stage > 0)]
        stage_blocks += [ResBlock2Plus1d(out_planes, out_planes, False) for _ in range(int(blocks) - 1)]
        modules.append(nn.Sequential(*stage_blocks))
    modules += [nn.AdaptiveAvgPool3d(1), nn.Flatten(1)]
    return nn.Sequential(*modules)


@STUDENTS.register("r21d_ccl")
def r21d_ccl(num_classes: int, layers: Sequence[int] = (1, 1, 1, 1)) -> VideoStudent:
    """The paper's "R(2+1)D-18" as the released code builds it (one block per stage)."""
    return VideoStudent(r21d_ccl_features(layers), num_classes)


# --------------------------------------------------------------------------------------------
# A small student for CPU runs


def _conv_bn_relu(in_planes: int, out_planes: int, kernel: Sequence[int], stride: Sequence[int]) -> list[nn.Module]:
    padding = tuple(k // 2 for k in kernel)
    return [
        nn.Conv3d(in_planes, out_planes, tuple(kernel), tuple(stride), padding, bias=False),
        nn.BatchNorm3d(out_planes),
        nn.ReLU(inplace=True),
    ]


@STUDENTS.register("small")
def small(num_classes: int, width: int = 32) -> VideoStudent:
    """Five-layer 3D CNN (~0.5 GMAC per 16×64×64 clip at width 32) with a 512-d embedding.

    Early layers stride only in space so short clips (T = 4..16) keep temporal resolution; the
    last 1×1×1 conv lifts to 512 channels so compositions match the paper's 512-d setting.
    """
    if width < 1:
        raise ConfigError(f"small student width must be positive, got {width}")
    w = int(width)
    layers = (
        _conv_bn_relu(3, w, (3, 5, 5), (1, 2, 2))
        + _conv_bn_relu(w, 2 * w, (3, 3, 3), (1, 2, 2))
        + _conv_bn_relu(2 * w, 4 * w, (3, 3, 3), (2, 2, 2))
        + _conv_bn_relu(4 * w, 8 * w, (3, 3, 3), (2, 2, 2))
        + _conv_bn_relu(8 * w, EMBEDDING_DIM, (1, 1, 1), (1, 1, 1))
    )
    return VideoStudent(nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten(1)), num_classes)
