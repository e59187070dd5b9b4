"""COR baseline: correlation congruence (Peng et al., "Correlation Congruence for Knowledge
Distillation", ICCV 2019), in the simplified form RepDistiller received from the authors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ccl_cache.errors import ConfigError
from ccl_cache.losses.base import LOSSES, FeatureDistillLoss, check_beta, opt
from ccl_cache.losses.functional import correlation_congruence


@dataclass(frozen=True)
class CorOptions:
    beta: float = opt(0.02, "weight β of the correlation loss (total = CE + β·L_kd)")
    feat_dim: int = opt(128, "output size of the linear embeddings on both sides")

    def __post_init__(self) -> None:
        check_beta("cor", self.beta)
        if self.feat_dim <= 0:
            raise ConfigError(f"loss 'cor' option feat_dim={self.feat_dim}: expected a positive integer")


@LOSSES.register("cor")
class CorLoss(FeatureDistillLoss):
    """Trainable linear embeddings (student and teacher side, per modality) then congruence."""

    name: ClassVar[str] = "cor"
    Options: ClassVar[type] = CorOptions

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        k = self.opts.feat_dim
        self.embed_student = nn.ModuleDict({m: nn.Linear(self.student_dim, k) for m in self.modalities})
        self.embed_teacher = nn.ModuleDict({m: nn.Linear(d, k) for m, d in self.teacher_dims.items()})

    def kd_term(self, modality: str, student: Tensor, teacher: Tensor, index: Tensor | None) -> Tensor:
        return correlation_congruence(self.embed_student[modality](student), self.embed_teacher[modality](teacher))
