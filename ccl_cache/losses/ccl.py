"""Compositional contrastive learning (CCL): Chen, Xian, Koepke, Shan, Akata, "Distilling
Audio-Visual Knowledge by Compositional Contrastive Learning", CVPR 2021 (docs/method.md#ccl-loss).

Per teacher modality m (rows M where m is present, τ_m), in the released code's form:
  L_v = CE(z_v, y) + N_s(v_M, x_mv) + N_s(v_M, x_m) + J(z_v,M, z_mv)            (student)
  L_m = CE(z_mv, y_M) + N_s(v_M, x_mv) + N_s(x_mv, x_m) + J(z_v,M, z_mv)          (composition)
With audio and image, L_v = CE + ω Σ_m (contrastive_m + J_m); each L_m unscaled.
Routing for the trainer's single backward of ``total + extra``: ``total`` = L_v reaches the
student and the compositions; ``extra`` = Σ_m L_m evaluated on the detached student embedding
and logits, so it reaches only the compositions. Net effect: student ← ∇L_v, composition_m ←
∇(L_m + L_v) (docs/method.md#gradient-routing). Option ``composition_grad="own"`` gives composition_m ← ∇L_m only.

``variant="paper"`` (Algorithm A of the paper): student loss CE + λ N(v, x_m) + (1 − λ) N(v, x_mv)
+ J(z_v, z_mv), one direction, with x_mv and z_mv detached on the student side; the composition
learns from CE(z_mv, y_M) alone (``extra``), computed on the detached student embedding.

Ablations: ``compose=False`` drops the composition (distillation term N_s(v, x_m), or N(v, x_m)
for the paper variant, and no J); ``jsd=False`` drops J from every loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn
from torch.func import functional_call

from ccl_cache.errors import ConfigError
from ccl_cache.losses.base import LOSSES, Batch, DistillLoss, LossOutput, StudentOut, cross_entropy, opt
from ccl_cache.losses.functional import Composition, multiclass_nce, symmetric_kl, symmetric_nce


@dataclass(frozen=True)
class CCLOptions:
    """Hyperparameters of CCL; defaults are the released code's."""

    variant: Literal["code", "paper"] = opt("code", "'code' (released code, default) or 'paper' (Algorithm A)")
    lam: float = opt(0.5, "paper variant: weight λ of N(v, x_m); 1 − λ weighs N(v, x_mv)")
    tau_audio: float = opt(0.5, "NCE temperature for the audio terms")
    tau_image: float = opt(0.1, "NCE temperature for the image terms")
    jsd_weight: float = opt(0.5, "weight w inside the symmetric-KL ('JSD') term")
    omega: float = opt(0.5, "weight ω of each modality's distillation terms when audio and image are both used")
    compose: bool = opt(True, "ablation: False removes the composition module (no x_mv, no JSD)")
    jsd: bool = opt(True, "ablation: False removes the symmetric-KL term")
    composition_grad: Literal["joint", "own"] = opt(
        "joint", "'joint': composition ← ∇(L_m + L_v) (docs/method.md#gradient-routing); 'own': composition ← ∇L_m only"
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"ccl option lam={self.lam}: expected a value in [0, 1]")
        for key in ("tau_audio", "tau_image"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"ccl option {key}={getattr(self, key)}: expected a positive temperature")
        for key in ("jsd_weight", "omega"):
            if getattr(self, key) < 0:
                raise ConfigError(f"ccl option {key}={getattr(self, key)}: expected a non-negative weight")


@dataclass
class _Terms:
    """One modality's contribution: the student-side term, the composition's own loss, logs."""

    student: Tensor
    own: Tensor | None
    parts: dict[str, Tensor]


@LOSSES.register("ccl")
class CCLLoss(DistillLoss):
    """CCL (Chen et al., CVPR 2021): one composition module per teacher modality."""

    name: ClassVar[str] = "ccl"
    Options: ClassVar[type] = CCLOptions
    heads_follow_schedule: ClassVar[bool] = False  # docs/method.md#optimisation: MultiStepLR on the student optimiser only

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ds = self.student_dim
        if self.opts.compose:
            self.compositions = nn.ModuleDict(
                {m: Composition(self.teacher_dims[m], ds, self.num_classes) for m in self.modalities}
            )
        else:
            # Without composition the teacher still has to be compared with the student by cosine:
            # identity when the dimensions agree (the paper), a trainable map otherwise.
            self.projections = nn.ModuleDict(
                {m: nn.Identity() if d == ds else nn.Linear(d, ds) for m, d in self.teacher_dims.items()}
            )

    def param_groups(self) -> list[dict[str, Any]]:
        heads = self.compositions if self.opts.compose else self.projections
        prefix = "composition" if self.opts.compose else "projection"
        groups = []
        for m, module in heads.items():
            params = list(module.parameters())
            if params:
                groups.append({"params": params, "name": f"{prefix}_{m}"})
        return groups

    def compute(self, out: StudentOut, batch: Batch) -> LossOutput:
        ce = cross_entropy(out.logits, batch.label)
        weight = self.opts.omega if len(self.modalities) > 1 else 1.0
        total, extra, parts = ce, None, {"ce": ce.detach()}
        for m in self.modalities:
            teacher, mask = self.teacher_rows(batch, m)
            rows = self.present_rows(batch, m)
            terms = self.modality_terms(
                m, out.embedding[rows], out.logits[rows], batch.label[rows], teacher[rows]
            )
            total = total + weight * terms.student
            if terms.own is not None:
                extra = terms.own if extra is None else extra + terms.own
            parts.update(terms.parts)
            parts[f"rows_{m}"] = mask.sum().detach().float()
        return LossOutput(total=total, parts=parts, extra=extra)

    def modality_terms(self, m: str, v: Tensor, z: Tensor, y: Tensor, teacher: Tensor) -> _Terms:
        """The terms for modality ``m`` on its present rows (v, z: student; teacher: constant)."""
        tau = self.opts.tau_audio if m == "audio" else self.opts.tau_image
        if not self.opts.compose:
            return self._no_composition(m, v, y, teacher, tau)
        if self.opts.variant == "paper":
            return self._paper(m, v, z, y, teacher, tau)
        return self._code(m, v, z, y, teacher, tau)

    def _code(self, m: str, v: Tensor, z: Tensor, y: Tensor, teacher: Tensor, tau: float) -> _Terms:
        comp = self.compositions[m]
        z_mv, x_mv, x_m = self._student_side_composition(comp, teacher, v)
        contrast = symmetric_nce(v, x_mv, y, tau) + symmetric_nce(v, x_m, y, tau)
        student = contrast + (self._jsd(z, z_mv) if self.opts.jsd else 0.0)
        # The composition's own loss L_m, on the detached student: reaches the composition only.
        v_d, z_d = v.detach(), z.detach()
        z_own, x_own = comp(teacher, v_d)
        x_m_own = comp.project_teacher(teacher)
        own = cross_entropy(z_own, y) + symmetric_nce(v_d, x_own, y, tau) + symmetric_nce(x_own, x_m_own, y, tau)
        parts = {f"ct_{m}": contrast.detach()}
        if self.opts.jsd:
            jsd_own = self._jsd(z_d, z_own)  # same value as the student-side J
            own = own + jsd_own
            parts[f"jsd_{m}"] = jsd_own.detach()
        parts[f"comp_{m}"] = own.detach()
        return _Terms(student=student, own=own, parts=parts)

    def _paper(self, m: str, v: Tensor, z: Tensor, y: Tensor, teacher: Tensor, tau: float) -> _Terms:
        comp = self.compositions[m]
        z_mv, x_mv = comp(teacher, v.detach())
        x_m = comp.project_teacher(teacher).detach()
        lam = self.opts.lam
        contrast = lam * multiclass_nce(v, x_m, y, tau) + (1.0 - lam) * multiclass_nce(v, x_mv.detach(), y, tau)
        student = contrast
        parts = {f"ct_{m}": contrast.detach()}
        if self.opts.jsd:
            jsd = self._jsd(z, z_mv.detach())
            student = student + jsd
            parts[f"jsd_{m}"] = jsd.detach()
        own = cross_entropy(z_mv, y)
        parts[f"comp_{m}"] = own.detach()
        return _Terms(student=student, own=own, parts=parts)

    def _no_composition(self, m: str, v: Tensor, y: Tensor, teacher: Tensor, tau: float) -> _Terms:
        x_m = self.projections[m](teacher)
        if self.opts.variant == "paper":
            contrast = multiclass_nce(v, x_m, y, tau)
        else:
            contrast = symmetric_nce(v, x_m, y, tau)
        return _Terms(student=contrast, own=None, parts={f"ct_{m}": contrast.detach()})

    def _student_side_composition(self, comp: Composition, teacher: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_mv, x_mv, x_m) for L_v; with ``composition_grad="own"`` L_v sees frozen weights."""
        if self.opts.composition_grad == "joint":
            z_mv, x_mv = comp(teacher, v)
            return z_mv, x_mv, comp.project_teacher(teacher)
        # Detached weights: L_v still reaches the student through the composition's input,
        # but leaves the composition's parameters alone.
        frozen = {name: p.detach() for name, p in comp.named_parameters()}
        z_mv, x_mv = functional_call(comp, frozen, (teacher, v))
        frozen_project = {k.removeprefix("project."): p for k, p in frozen.items() if k.startswith("project.")}
        x_m = functional_call(comp.project, frozen_project, (teacher,))
        return z_mv, x_mv, x_m

    def _jsd(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return symmetric_kl(z_a, z_b, weight=self.opts.jsd_weight)
