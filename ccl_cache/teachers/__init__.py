"""The teachers room: registry, preprocessing, weights and fingerprints.

Built-in teachers (``TEACHERS``): image ``resnet18``/``resnet34`` (the paper's)/``resnet50``
(torchvision, ImageNet), audio ``cnn14``/``cnn14_emb512`` (the paper's; PANNs), and the small
CPU teachers ``small_audio``/``small_image``. Any ``"package.module:factory"`` string names a
user teacher (protocol in :mod:`ccl_cache.teachers.user`).

    teacher = build_teacher("resnet34", weights="imagenet", device="cuda")
    x = teacher.prepare(frames).to("cuda")          # uint8 (K, H, W, 3) -> (K, 3, 112, 112)
    with torch.inference_mode():
        emb = teacher(x)                             # (K, 512)
    store.create_teacher("image/resnet34", teacher.dim, ..., fingerprint=teacher.fingerprint())
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ccl_cache.teachers import image, panns, small  # noqa: F401  (registration side effects)
from ccl_cache.teachers.base import (
    AUDIO,
    IMAGE,
    MODALITIES,
    TEACHERS,
    Preprocess,
    Teacher,
    call_factory,
    register_teacher,
    teacher_modality,
    teacher_names,
)
from ccl_cache.teachers.user import build_user_teacher, is_user_spec
from ccl_cache.teachers.weights import apply_weights, read_state_file


def build_teacher(
    name: str, weights: str | Path | None, device: str | torch.device = "cpu", **options: Any
) -> Teacher:
    """Build teacher ``name`` (registered, or ``"pkg.module:factory"``) in eval mode on ``device``.

    ``weights``: a weights file path, a built-in tag ("imagenet" for the ResNets), or
    None/"none" for random initialisation (warned; fingerprinted as "random").
    ``options`` go to the factory (e.g. ``image_size`` for image teachers, ``dim`` for the
    small ones); unknown options raise ConfigError.
    """
    if is_user_spec(name):
        teacher = build_user_teacher(name, None if weights is None else str(weights), **options)
    else:
        teacher = call_factory(TEACHERS.get(name), options, name)
        apply_weights(teacher, weights)
    teacher.eval()
    return teacher.to(device)


__all__ = [
    "AUDIO",
    "IMAGE",
    "MODALITIES",
    "TEACHERS",
    "Preprocess",
    "Teacher",
    "build_teacher",
    "read_state_file",
    "register_teacher",
    "teacher_modality",
    "teacher_names",
]
