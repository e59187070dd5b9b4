"""Image teachers: torchvision ResNets with the classifier removed.

Chen et al. (CVPR 2021) distil from an ImageNet ResNet-34 (512-d pooled feature, frozen, frames
at 112x112). The embedding is the global-average-pooled output of ``layer4`` (512-d for
ResNet-18/34, 2048-d for ResNet-50): ``fc`` is replaced by an identity, so ImageNet weight files
load with their ``fc.*`` entries ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from ccl_cache.errors import TeacherError
from ccl_cache.teachers.base import IMAGE, Teacher, image_preprocess, register_teacher

DEFAULT_IMAGE_SIZE = 112  # the paper's frame size

# arch -> (builder, weights enum, embedding dim)
_RESNETS: dict[str, tuple[Callable[..., nn.Module], type, int]] = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights, 512),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights, 512),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights, 2048),
}


def fetch_state_dict(url: str) -> dict[str, Tensor]:
    """torch.hub download into $TORCH_HOME/hub/checkpoints (a cached file is used offline)."""
    return torch.hub.load_state_dict_from_url(
        url, map_location="cpu", progress=False, check_hash=True, weights_only=True
    )


class ResNetTeacher(Teacher):
    """A torchvision ResNet whose pooled penultimate feature is the embedding."""

    def __init__(self, arch: str, image_size: int = DEFAULT_IMAGE_SIZE) -> None:
        builder, enum, dim = _RESNETS[arch]
        net = builder(weights=None)
        net.fc = nn.Identity()  # the embedding is the pooled feature that fed the classifier
        super().__init__(
            name=arch,
            arch=arch,
            backbone=net,
            dim=dim,
            preprocess=image_preprocess(image_size),
            ignore_prefixes=("fc.",),
        )
        self._enum = enum

    def pretrained_state(self, tag: str) -> tuple[dict[str, Tensor], str]:
        """"imagenet" (= IMAGENET1K_V1, what the paper used) or "imagenet:<ENUM member>"."""
        head, _, member = tag.partition(":")
        if head.lower() != "imagenet":
            return super().pretrained_state(tag)
        member = member or "IMAGENET1K_V1"
        if member not in self._enum.__members__:
            raise TeacherError(
                f"teacher {self.name!r}: unknown ImageNet weights {member!r}; choose one of "
                f"{', '.join(self._enum.__members__)}"
            )
        weights = self._enum[member]
        try:
            state = fetch_state_dict(weights.url)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
            raise TeacherError(_download_help(self.name, weights.url, exc)) from exc
        return state, f"imagenet:{weights}"


def _download_help(name: str, url: str, exc: Exception) -> str:
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return (
        f"teacher {name!r}: could not download the ImageNet weights from {url} "
        f"({type(exc).__name__}: {exc}). Either copy that file to {target} (torchvision's cache, "
        "under $TORCH_HOME/hub/checkpoints/) on a machine with internet, or pass a local weights "
        f"file with --image-weights PATH (build_teacher({name!r}, weights=PATH))"
    )


def _make_factory(arch: str) -> Callable[..., ResNetTeacher]:
    def factory(image_size: int = DEFAULT_IMAGE_SIZE) -> ResNetTeacher:
        return ResNetTeacher(arch, image_size=image_size)

    factory.__name__ = f"build_{arch}"
    factory.__doc__ = f"torchvision {arch}, fc removed, {_RESNETS[arch][2]}-d embedding."
    return factory


for _arch in _RESNETS:
    register_teacher(_arch, IMAGE)(_make_factory(_arch))
