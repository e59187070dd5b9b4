"""PKT baseline (Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018), in RepDistiller's form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ccl_cache.errors import ConfigError
from ccl_cache.losses.base import LOSSES, FeatureDistillLoss, check_beta, opt
from ccl_cache.losses.functional import pkt


@dataclass(frozen=True)
class PKTOptions:
    beta: float = opt(30000.0, "weight β of the PKT loss (total = CE + β·L_kd)")
    eps: float = opt(1e-7, "ε in the row normalisation and inside the KL logarithm")

    def __post_init__(self) -> None:
        check_beta("pkt", self.beta)
        if self.eps <= 0:
            raise ConfigError(f"loss 'pkt' option eps={self.eps}: expected a small positive number")


@LOSSES.register("pkt")
class PKTLoss(FeatureDistillLoss):
    """KL between the teacher's and the student's cosine-kernel conditional distributions."""

    name: ClassVar[str] = "pkt"
    Options: ClassVar[type] = PKTOptions

    def kd_term(self, modality: str, student: Tensor, teacher: Tensor, index: Tensor | None) -> Tensor:
        return pkt(student, teacher, eps=self.opts.eps)
