"""RKD baseline (Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ccl_cache.errors import ConfigError
from ccl_cache.losses.base import LOSSES, FeatureDistillLoss, check_beta, opt
from ccl_cache.losses.functional import rkd


@dataclass(frozen=True)
class RKDOptions:
    beta: float = opt(1.0, "weight β of the RKD loss (total = CE + β·L_kd)")
    distance_weight: float = opt(25.0, "weight of the distance-wise term")
    angle_weight: float = opt(50.0, "weight of the angle-wise term")

    def __post_init__(self) -> None:
        check_beta("rkd", self.beta)
        if self.distance_weight < 0 or self.angle_weight < 0:
            raise ConfigError("loss 'rkd': distance_weight and angle_weight must be non-negative")


@LOSSES.register("rkd")
class RKDLoss(FeatureDistillLoss):
    """Match the student's pairwise distances and triplet angles to the teacher's (no heads)."""

    name: ClassVar[str] = "rkd"
    Options: ClassVar[type] = RKDOptions

    def kd_term(self, modality: str, student: Tensor, teacher: Tensor, index: Tensor | None) -> Tensor:
        return rkd(student, teacher, self.opts.distance_weight, self.opts.angle_weight)
