"""Distillation losses: CCL (Chen et al., CVPR 2021) and the Table 1 baselines, one registry.

``LOSSES`` maps a name to a :class:`DistillLoss` class; :func:`build_loss` builds one, and
:func:`loss_options` / :func:`parse_loss_options` describe and parse its hyperparameters for the
CLI's ``--loss-opt key=value``. The formulas themselves are in :mod:`ccl_cache.losses.functional`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from torch import Tensor

from ccl_cache.errors import ConfigError
from ccl_cache.losses import baseline, ccl, cmc, cor, crd, fitnet, pkt, rkd  # noqa: F401  (register)
from ccl_cache.losses.base import (
    LOSSES,
    MODALITIES,
    Batch,
    DistillLoss,
    LossOutput,
    OptionInfo,
    StudentOut,
)

__all__ = [
    "LOSSES",
    "MODALITIES",
    "Batch",
    "DistillLoss",
    "LossOutput",
    "OptionInfo",
    "StudentOut",
    "build_loss",
    "loss_needs",
    "loss_options",
    "parse_loss_options",
]


def build_loss(
    name: str,
    *,
    num_classes: int,
    student_dim: int,
    teacher_dims: Mapping[str, int],
    modalities: Sequence[str],
    dataset_size: int,
    labels: Tensor | np.ndarray | None = None,
    **options: Any,
) -> DistillLoss:
    """The registered loss ``name`` with its options (unknown names/keys raise ConfigError)."""
    return LOSSES.get(name)(
        num_classes=num_classes,
        student_dim=student_dim,
        teacher_dims=dict(teacher_dims),
        modalities=_as_tuple(modalities),
        dataset_size=dataset_size,
        labels=labels,
        **options,
    )


def loss_options(name: str) -> list[OptionInfo]:
    """The hyperparameters of loss ``name``: name, type, paper default, choices, help."""
    return LOSSES.get(name).options()


def loss_needs(name: str, modalities: Sequence[str]) -> frozenset[str]:
    """What a batch must carry for loss ``name`` with these modalities (audio, image, index)."""
    return LOSSES.get(name).required(_as_tuple(modalities))


def parse_loss_options(name: str, items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (``--loss-opt``) into typed options of loss ``name``."""
    infos = {info.name: info for info in loss_options(name)}
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--loss-opt {item!r}: expected key=value, e.g. tau_audio=0.5")
        if key not in infos:
            valid = ", ".join(sorted(infos)) or "(none)"
            raise ConfigError(f"loss {name!r} has no option {key!r}; valid options: {valid}")
        parsed[key] = _parse_value(name, infos[key], raw.strip())
    LOSSES.get(name).make_options(**parsed)  # validate ranges and choices now, not at build time
    return parsed


def _as_tuple(modalities: Sequence[str]) -> tuple[str, ...]:
    # A bare "audio" is one modality, not the letters a, u, d, i, o.
    return (modalities,) if isinstance(modalities, str) else tuple(modalities)


def _parse_value(loss: str, info: OptionInfo, raw: str) -> Any:
    try:
        if info.type == "bool":
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if info.type == "int":
            return int(raw)
        if info.type == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"loss {loss!r} option {info.name}={raw!r}: expected type {info.type} (default {info.default!r})"
        ) from None
    if info.choices is not None and raw not in info.choices:
        raise ConfigError(f"loss {loss!r} option {info.name}={raw!r}: choose one of {info.choices}")
    return raw
