"""Memory banks and the bank-based contrastive losses shared by CRD and CMC.

As in RepDistiller's ``ContrastMemory`` (Tian et al., ICLR 2020): per teacher modality a student
bank and a teacher bank, N × feat_dim each (N = dataset size), initialised uniformly in
±1/sqrt(feat_dim/3). A student anchor is scored against teacher-bank rows and a teacher anchor
against student-bank rows: row 0 is the anchor's own dataset index (the positive), then K
negatives. After the loss is computed the banks take the batch's embeddings with momentum and are
re-normalised. Banks and the normalisation constants Z are buffers, so checkpoints carry them.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccl_cache.errors import ConfigError
from ccl_cache.losses.base import FeatureDistillLoss
from ccl_cache.losses.functional import contrast_nce, l2_normalize, zero_like_graph


class MemoryBank(nn.Module):
    """Student and teacher banks of one modality plus the two fixed normalisers Z.

    ``z[0]`` normalises student-anchor scores (against the teacher bank), ``z[1]`` teacher-anchor
    scores (against the student bank); −1 means "not set yet": the first batch sets it.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        stdv = 1.0 / math.sqrt(dim / 3.0)
        self.register_buffer("student", torch.rand(size, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("teacher", torch.rand(size, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))

    def logits(self, anchors: Tensor, bank: Tensor, rows: Tensor, temperature: float) -> Tensor:
        """⟨bank[rows[b, k]], anchor_b⟩ / τ, shape (B, K+1); the bank side is a constant."""
        weights = bank[rows].detach()
        return torch.einsum("bkd,bd->bk", weights, anchors) / temperature

    @torch.no_grad()
    def update(self, index: Tensor, student: Tensor, teacher: Tensor, momentum: float) -> None:
        """bank[i] ← normalise(momentum · bank[i] + (1 − momentum) · embedding) for the batch rows."""
        for bank, new in ((self.student, student), (self.teacher, teacher)):
            mixed = bank[index] * momentum + new.detach() * (1.0 - momentum)
            bank.index_copy_(0, index, l2_normalize(mixed))


class BankContrastLoss(FeatureDistillLoss):
    """CRD/CMC: linear + L2-norm heads on both sides, two banks per modality, K negatives.

    Subclasses say which rows may serve as negatives (:meth:`negative_candidates_per_anchor`,
    :meth:`negative_keys`, :meth:`draw_negatives`) and which objective scores the (B, K+1) logits.
    """

    needs_labels: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n, o = self.dataset_size, self.opts
        if n <= 1:
            raise ConfigError(f"loss {self.name!r} needs dataset_size > 1 for its memory bank, got {n}")
        if self.needs_labels and self.labels is None:
            raise ConfigError(f"loss {self.name!r} draws negatives from other classes: pass the dataset labels")
        if self.labels is not None and self.labels.shape != (n,):
            raise ConfigError(f"loss {self.name!r}: labels have shape {tuple(self.labels.shape)}, expected ({n},)")
        if self.labels is not None and n and int(self.labels.min()) < 0:
            raise ConfigError(f"loss {self.name!r}: labels must be class ids >= 0, got {int(self.labels.min())}")
        # Not persistent: the labels come from the dataset at construction, not from a checkpoint.
        labels = self.labels if self.labels is not None else torch.zeros(n, dtype=torch.long)
        self.register_buffer("dataset_labels", labels, persistent=False)
        self.nce_k = self._capped_k(o.nce_k)
        self.embed_student = nn.ModuleDict({m: nn.Linear(self.student_dim, o.feat_dim) for m in self.modalities})
        self.embed_teacher = nn.ModuleDict({m: nn.Linear(d, o.feat_dim) for m, d in self.teacher_dims.items()})
        self.banks = nn.ModuleDict({m: MemoryBank(n, o.feat_dim) for m in self.modalities})

    @classmethod
    def required(cls, modalities: Sequence[str]) -> frozenset[str]:
        return super().required(modalities) | {"index"}

    def negative_candidates_per_anchor(self) -> int:
        """The fewest negatives any anchor can draw (bounds K)."""
        raise NotImplementedError

    def negative_keys(self, index: Tensor) -> Tensor:
        """(B, N) random keys in [0, 1); rows that must not be drawn as negatives get −1."""
        raise NotImplementedError

    def objective(self, logits: Tensor, bank: MemoryBank, side: int) -> Tensor:
        """The loss of one side's (B, K+1) logits (column 0 is the positive)."""
        raise NotImplementedError

    def draw_negatives(self, index: Tensor) -> Tensor:
        """(B, K) dataset rows per anchor drawn with replacement (``sampling=replacement``)."""
        raise NotImplementedError

    def sample_negatives(self, index: Tensor) -> Tensor:
        """(B, K) dataset rows per anchor: with replacement (the default), or distinct and
        uniform among its allowed candidates (``sampling=distinct``)."""
        if self.opts.sampling == "replacement":
            return self.draw_negatives(index)
        return self.negative_keys(index).topk(self.nce_k, dim=1).indices

    def kd_term(self, modality: str, student: Tensor, teacher: Tensor, index: Tensor | None) -> Tensor:
        s = l2_normalize(self.embed_student[modality](student))
        t = l2_normalize(self.embed_teacher[modality](teacher))
        if index is None or index.shape[0] == 0:
            return zero_like_graph(s, t)
        self._check_index(index)
        bank = self.banks[modality]
        rows = torch.cat([index[:, None], self.sample_negatives(index)], dim=1)
        tau = self.opts.temperature
        loss = self.objective(bank.logits(s, bank.teacher, rows, tau), bank, 0) + self.objective(
            bank.logits(t, bank.student, rows, tau), bank, 1
        )
        if self.training:
            bank.update(index, s, t, self.opts.momentum)
        return loss

    def nce_objective(self, logits: Tensor, bank: MemoryBank, side: int) -> Tensor:
        """Binary NCE on P = exp(logit)/Z, Z fixed from the first batch as mean(exp) · N."""
        scores = torch.exp(logits)
        # Set once, from the first batch; a where() instead of `if z < 0`, which would make the host
        # wait for the device every step.
        first = scores.detach().mean() * self.dataset_size
        bank.z[side] = torch.where(bank.z[side] < 0, first, bank.z[side])
        # A copy: the buffer is written in place (other side, later batches) after this graph.
        z = bank.z[side].clone()
        return contrast_nce(scores / z, self.dataset_size)

    def softmax_objective(self, logits: Tensor) -> Tensor:
        """Cross-entropy over the K+1 candidates with the positive as the target."""
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))

    def _capped_k(self, k: int) -> int:
        available = self.negative_candidates_per_anchor()
        if available <= 0:
            raise ConfigError(
                f"loss {self.name!r}: no dataset row can serve as a negative (dataset_size="
                f"{self.dataset_size}); it needs at least two classes / clips"
            )
        if k > available and self.opts.sampling == "distinct":
            warnings.warn(
                f"loss {self.name!r}: nce_k={k} exceeds the {available} negatives available per anchor "
                f"in this dataset ({self.dataset_size} rows); using nce_k={available}",
                UserWarning,
                stacklevel=3,
            )
            return available
        return k

    def _check_index(self, index: Tensor) -> None:
        message = (f"loss {self.name!r}: batch.index holds rows outside [0, {self.dataset_size}); the "
                   "loss was built for another dataset size than the one being trained on")
        inside = (index.min() >= 0) & (index.max() < self.dataset_size)
        if index.device.type != "cpu":
            torch._assert_async(inside, message)  # checked on the device: reading it back would sync
        elif not bool(inside):
            raise ConfigError(message)
