"""FitNet baseline (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ccl_cache.losses.base import LOSSES, FeatureDistillLoss, check_beta, opt
from ccl_cache.losses.functional import fitnet


@dataclass(frozen=True)
class FitNetOptions:
    beta: float = opt(100.0, "weight β of the hint loss (total = CE + β·L_kd)")

    def __post_init__(self) -> None:
        check_beta("fitnet", self.beta)


@LOSSES.register("fitnet")
class FitNetLoss(FeatureDistillLoss):
    """MSE between a trainable linear regression of the student embedding and each teacher's."""

    name: ClassVar[str] = "fitnet"
    Options: ClassVar[type] = FitNetOptions

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.regressors = nn.ModuleDict(
            {m: nn.Linear(self.student_dim, d) for m, d in self.teacher_dims.items()}
        )

    def kd_term(self, modality: str, student: Tensor, teacher: Tensor, index: Tensor | None) -> Tensor:
        return fitnet(student, teacher, self.regressors[modality])
