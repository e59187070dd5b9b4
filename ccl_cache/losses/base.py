"""The one loss signature every distillation method implements (docs/api.md, "ccl_cache.losses").

A method is a :class:`DistillLoss` subclass in its own file, registered in :data:`LOSSES`. Its
hyperparameters are the fields of a frozen dataclass ``Options`` (paper defaults), so the CLI can
list them and accept ``--loss-opt key=value`` without knowing the method. The trainer calls
``loss(student_out, batch)`` and backpropagates ``total + extra``; it never branches on the name.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccl_cache.errors import ConfigError
from ccl_cache.registry import Registry

MODALITIES: tuple[str, ...] = ("audio", "image")
"""Teacher modalities a loss can distil from, in the canonical order used for every loop."""


@dataclass
class Batch:
    """One training batch as the trainer hands it to a loss.

    ``teachers[m]`` is the cached teacher embedding (B, D_m) float32, a constant; ``masks[m]`` is
    (B,) bool, False where that modality is missing for the row (a clip without audio). A modality
    absent from ``masks`` counts as present on every row. ``present[m]``: the indices of the rows
    where ``m`` is present, or None for every row, worked out from the mask while it was still
    on the host (:meth:`to` and the trainer do this): selecting rows by index costs the device
    nothing, selecting them by a device bool mask makes the host wait for the count.
    """

    video: Tensor | None
    label: Tensor
    index: Tensor | None = None
    teachers: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    present: dict[str, Tensor | None] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor moved to ``device`` (and ``present`` filled from host masks)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        present = {**present_rows_of(self.masks), **self.present}
        return Batch(
            video=move(self.video),
            label=self.label.to(device, non_blocking=non_blocking),
            index=move(self.index),
            teachers={k: v.to(device, non_blocking=non_blocking) for k, v in self.teachers.items()},
            masks={k: v.to(device, non_blocking=non_blocking) for k, v in self.masks.items()},
            present={k: move(v) for k, v in present.items()},
        )


def present_rows_of(masks: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
    """``Batch.present`` of the masks that live on the host (free there); device masks are skipped."""
    out: dict[str, Tensor | None] = {}
    for m, mask in masks.items():
        if mask.device.type == "cpu":
            mask = mask.bool()
            out[m] = None if bool(mask.all()) else mask.nonzero().squeeze(1)
    return out


@dataclass
class StudentOut:
    """What a student returns: class logits (B, C) and the pooled embedding (B, D)."""

    logits: Tensor
    embedding: Tensor


@dataclass
class LossOutput:
    """A loss's answer.

    ``total`` is the student's loss (includes cross-entropy); ``parts`` are detached scalars for
    logging; ``extra`` is the sum of the method's own head losses that must not reach the student
    (None when the method has none). The trainer backpropagates ``total + extra`` once.
    """

    total: Tensor
    parts: dict[str, Tensor]
    extra: Tensor | None = None


@dataclass(frozen=True)
class OptionInfo:
    """One hyperparameter of a method, as the CLI shows it."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class NoOptions:
    """A method without hyperparameters."""


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help line (read by :meth:`DistillLoss.options`)."""
    return field(default=default, metadata={"help": help})


class DistillLoss(nn.Module):
    """Base class of every distillation method: validation, float32 maths, options.

    Subclasses set ``Options`` (a frozen dataclass of hyperparameters with paper defaults),
    override :meth:`required` (what the batch must carry) and :meth:`compute`.
    """

    name: ClassVar[str] = "?"
    Options: ClassVar[type] = NoOptions
    uses_teachers: ClassVar[bool] = True
    # Whether the learning-rate schedule decays the method's heads with the student. RepDistiller
    # (the Table 1 baselines' reference) trains them in the student's optimiser, so they decay
    # together; the CCL code gives its compositions their own optimisers at a constant rate.
    heads_follow_schedule: ClassVar[bool] = True

    def __init__(
        self,
        *,
        num_classes: int,
        student_dim: int,
        teacher_dims: Mapping[str, int],
        modalities: Sequence[str],
        dataset_size: int,
        labels: Tensor | np.ndarray | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.num_classes = _positive_int(num_classes, "num_classes")
        self.student_dim = _positive_int(student_dim, "student_dim")
        self.dataset_size = int(dataset_size)
        self.modalities = self._check_modalities(modalities, teacher_dims)
        self.teacher_dims = {m: _positive_int(teacher_dims[m], f"teacher_dims[{m!r}]") for m in self.modalities}
        self.labels = _as_label_tensor(labels)
        self.opts = self.make_options(**options)

    # ----------------------------------------------------------------- options
    @classmethod
    def make_options(cls, **options: Any) -> Any:
        """The method's frozen options, or a ConfigError naming an unknown or bad key."""
        known = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            valid = ", ".join(sorted(known)) or "(none)"
            raise ConfigError(f"loss {cls.name!r} has no option {unknown[0]!r}; valid options: {valid}")
        hints = typing.get_type_hints(cls.Options)
        values = {key: _check_value(cls.name, key, value, hints[key]) for key, value in options.items()}
        return cls.Options(**values)

    @classmethod
    def options(cls) -> list[OptionInfo]:
        """Every hyperparameter with its type, paper default, choices and help line."""
        hints = typing.get_type_hints(cls.Options)
        infos = []
        for f in dataclasses.fields(cls.Options):
            hint = hints[f.name]
            choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
            type_name = "choice" if choices else getattr(hint, "__name__", str(hint))
            infos.append(OptionInfo(f.name, type_name, f.default, f.metadata.get("help", ""), choices))
        return infos

    # ----------------------------------------------------------------- needs
    @classmethod
    def required(cls, modalities: Sequence[str]) -> frozenset[str]:
        """What the batch must carry for these modalities (subset of audio, image, index)."""
        return frozenset(m for m in MODALITIES if m in modalities)

    @property
    def needs(self) -> frozenset[str]:
        return self.required(self.modalities)

    # ----------------------------------------------------------------- forward
    def forward(self, out: StudentOut, batch: Batch) -> LossOutput:
        """Validate the inputs, then compute the method's loss in float32 outside autocast."""
        self._check_batch(out, batch)
        out = StudentOut(logits=out.logits.float(), embedding=out.embedding.float())
        device_type = out.logits.device.type
        # Why: the contrastive terms use log(p + 1e-10) and exp(s / 0.07); half precision
        # under-/overflows there, so the loss maths always runs in float32.
        with torch.autocast(device_type=device_type, enabled=False):
            return self.compute(out, batch)

    def compute(self, out: StudentOut, batch: Batch) -> LossOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups for the method's own trainable heads; [] when it has none."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "name": f"{self.name}_heads"}] if params else []

    # ----------------------------------------------------------------- helpers
    def teacher_rows(self, batch: Batch, modality: str) -> tuple[Tensor, Tensor]:
        """(teacher embedding as a float32 constant, bool row mask) for one modality."""
        teacher = batch.teachers[modality].detach().float()
        mask = batch.masks.get(modality)
        if mask is None:
            mask = torch.ones(teacher.shape[0], dtype=torch.bool, device=teacher.device)
        return teacher, mask.to(device=teacher.device, dtype=torch.bool)

    @staticmethod
    def present_rows(batch: Batch, modality: str) -> Tensor | slice:
        """What selects the rows where ``modality`` is present: ``x[rows]`` equals ``x[mask]``.

        ``batch.present`` when the trainer filled it (no device sync), else every row when there
        is no mask, else the mask's nonzero indices (on CUDA this waits for the device).
        """
        if modality in batch.present:
            rows = batch.present[modality]
            return slice(None) if rows is None else rows
        mask = batch.masks.get(modality)
        return slice(None) if mask is None else mask.bool().nonzero().squeeze(1)

    def _check_modalities(self, modalities: Sequence[str], teacher_dims: Mapping[str, int]) -> tuple[str, ...]:
        if isinstance(modalities, str):  # "audio" would otherwise iterate as letters
            modalities = (modalities,)
        bad = [m for m in modalities if m not in MODALITIES]
        if bad:
            raise ConfigError(f"loss {self.name!r}: unknown modality {bad[0]!r}; expected a subset of {MODALITIES}")
        if not self.uses_teachers:
            return ()  # e.g. the CE-only baseline: the run's modalities are irrelevant to it
        chosen = tuple(m for m in MODALITIES if m in modalities)
        if not chosen:
            raise ConfigError(f"loss {self.name!r} distils from a teacher: pass modalities 'audio', 'image' or both")
        missing = [m for m in chosen if m not in teacher_dims]
        if missing:
            raise ConfigError(
                f"loss {self.name!r}: teacher_dims has no entry for {missing[0]!r}; "
                f"pass the {missing[0]} teacher's embedding dimension"
            )
        return chosen

    def _check_batch(self, out: StudentOut, batch: Batch) -> None:
        b = out.logits.shape[0]
        _expect_shape(out.logits, (b, self.num_classes), "student logits")
        _expect_shape(out.embedding, (b, self.student_dim), "student embedding")
        _expect_shape(batch.label, (b,), "batch.label")
        for m in self.needs & set(MODALITIES):
            if m not in batch.teachers:
                raise ConfigError(
                    f"loss {self.name!r} needs {m} teacher embeddings but the batch has none "
                    f"(teachers: {sorted(batch.teachers)}); load the store's {m} teacher in the dataset"
                )
            _expect_shape(batch.teachers[m], (b, self.teacher_dims[m]), f"batch.teachers[{m!r}]")
            if m in batch.masks:
                _expect_shape(batch.masks[m], (b,), f"batch.masks[{m!r}]")
        if "index" in self.needs:
            if batch.index is None:
                raise ConfigError(f"loss {self.name!r} needs dataset row indices: the batch has index=None")
            _expect_shape(batch.index, (b,), "batch.index")


LOSSES: Registry[type[DistillLoss]] = Registry("loss")


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy that is an exact, graph-connected 0 on an empty selection (not NaN)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels)


def _as_label_tensor(labels: Tensor | np.ndarray | None) -> Tensor | None:
    """Dataset labels as a CPU int64 tensor (modules move their own copies to the device)."""
    if labels is None:
        return None
    if isinstance(labels, Tensor):
        return labels.detach().to("cpu", torch.long)
    return torch.as_tensor(np.asarray(labels), dtype=torch.long)


def _positive_int(value: int, what: str) -> int:
    if int(value) <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _expect_shape(t: Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != shape:
        raise ConfigError(f"{what} has shape {tuple(t.shape)}, expected {shape}")


def _check_value(loss: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the option's type (ints are accepted for floats)."""
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"loss {loss!r} option {key}={value!r}: choose one of {typing.get_args(hint)}")
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise ConfigError(f"loss {loss!r} option {key}={value!r}: expected type {hint.__name__}")
    return float(value) if hint is float else value


class FeatureDistillLoss(DistillLoss):
    """Table 1 baselines: total = CE + β Σ_m L_kd(m), each term over the rows where m is present.

    Subclasses implement :meth:`kd_term`; their ``Options`` carry ``beta``. The heads of these
    methods sit on the student's side, so the kd term trains student and heads together
    (that is the method): everything goes into ``total`` and ``extra`` is None.
    """

    def compute(self, out: StudentOut, batch: Batch) -> LossOutput:
        ce = cross_entropy(out.logits, batch.label)
        total, parts = ce, {"ce": ce.detach()}
        for m in self.modalities:
            teacher, _ = self.teacher_rows(batch, m)
            rows = self.present_rows(batch, m)
            index = None if batch.index is None else batch.index[rows]
            kd = self.kd_term(m, out.embedding[rows], teacher[rows], index)
            total = total + self.opts.beta * kd
            parts[f"kd_{m}"] = kd.detach()
        return LossOutput(total=total, parts=parts, extra=None)

    def kd_term(self, modality: str, student: Tensor, teacher: Tensor, index: Tensor | None) -> Tensor:
        """The unweighted distillation loss of one modality on its present rows."""
        raise NotImplementedError(f"{type(self).__name__} must implement kd_term()")


def check_beta(loss: str, beta: float) -> None:
    """Refuse a negative loss weight (a typo that would make the student un-learn the teacher)."""
    if beta < 0:
        raise ConfigError(f"loss {loss!r} option beta={beta}: expected a non-negative weight")
