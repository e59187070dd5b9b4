"""The Table 1 "baseline": the video student trained with cross-entropy only, no teacher."""

from __future__ import annotations

from typing import ClassVar, Sequence

from ccl_cache.losses.base import LOSSES, Batch, DistillLoss, LossOutput, StudentOut, cross_entropy


@LOSSES.register("baseline")
class BaselineLoss(DistillLoss):
    """Cross-entropy on the student's logits; ignores every teacher (needs nothing)."""

    name: ClassVar[str] = "baseline"
    uses_teachers: ClassVar[bool] = False

    @classmethod
    def required(cls, modalities: Sequence[str]) -> frozenset[str]:
        return frozenset()

    def compute(self, out: StudentOut, batch: Batch) -> LossOutput:
        ce = cross_entropy(out.logits, batch.label)
        return LossOutput(total=ce, parts={"ce": ce.detach()}, extra=None)
