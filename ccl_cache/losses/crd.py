"""CRD baseline: contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ccl_cache.errors import ConfigError
from ccl_cache.losses.base import LOSSES, check_beta, opt
from ccl_cache.losses.memory import BankContrastLoss, MemoryBank


@dataclass(frozen=True)
class BankOptions:
    """Memory-bank contrast settings shared by CRD and CMC (RepDistiller defaults)."""

    beta: float = opt(0.8, "weight β of the contrastive loss (total = CE + β·L_kd)")
    nce_k: int = opt(16384, "negatives per anchor (with sampling=distinct: capped, with a warning, to what the "
                            "dataset holds)")
    temperature: float = opt(0.07, "temperature τ of the bank scores")
    momentum: float = opt(0.5, "memory-bank momentum")
    feat_dim: int = opt(128, "size of the L2-normalised linear embeddings and of the bank rows")
    sampling: Literal["replacement", "distinct"] = opt(
        "replacement", "'replacement': K negatives drawn with replacement, as RepDistiller/CMC do (K may exceed the "
        "candidates); 'distinct': without replacement, K capped to the candidates")

    def __post_init__(self) -> None:
        check_beta("crd/cmc", self.beta)
        if self.nce_k <= 0 or self.feat_dim <= 0:
            raise ConfigError(f"nce_k={self.nce_k} and feat_dim={self.feat_dim} must be positive integers")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature}: expected a positive number")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum={self.momentum}: expected a value in [0, 1)")
        if self.sampling not in ("replacement", "distinct"):
            raise ConfigError(f"sampling={self.sampling!r}: expected 'replacement' or 'distinct'")


@LOSSES.register("crd")
class CRDLoss(BankContrastLoss):
    """Symmetric binary NCE against memory banks; negatives are clips of other classes.

    Negatives are drawn among the dataset rows whose label (from ``labels`` given at
    construction) differs from the anchor's ("exact" mode of RepDistiller): with replacement by
    default, as RepDistiller does, so K = 16384 stands on any dataset; with ``sampling=distinct``
    without replacement, K capped to the rows of other classes left for the largest class. Z is
    fixed at the first batch.
    """

    name: ClassVar[str] = "crd"
    Options: ClassVar[type] = BankOptions
    needs_labels: ClassVar[bool] = True

    def negative_candidates_per_anchor(self) -> int:
        largest_class = int(torch.bincount(self.dataset_labels).max())
        return self.dataset_size - largest_class

    def negative_keys(self, index: Tensor) -> Tensor:
        keys = torch.rand(index.shape[0], self.dataset_size, device=index.device)
        return keys.masked_fill(self._same_class(index), -1.0)

    def draw_negatives(self, index: Tensor) -> Tensor:
        allowed = (~self._same_class(index)).float()
        return torch.multinomial(allowed, self.nce_k, replacement=True)

    def _same_class(self, index: Tensor) -> Tensor:
        return self.dataset_labels[None, :] == self.dataset_labels[index][:, None]

    def objective(self, logits: Tensor, bank: MemoryBank, side: int) -> Tensor:
        return self.nce_objective(logits, bank, side)
