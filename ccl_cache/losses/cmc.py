"""CMC baseline: contrastive multiview coding (Tian, Krishnan, Isola, ECCV 2020) used for
distillation, with the same memory banks as CRD and negatives uniform over the dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ccl_cache.losses.base import LOSSES, opt
from ccl_cache.losses.crd import BankOptions
from ccl_cache.losses.memory import BankContrastLoss, MemoryBank


@dataclass(frozen=True)
class CMCOptions(BankOptions):
    objective: Literal["nce", "softmax"] = opt(
        "nce", "'nce': binary NCE with fixed Z (as CRD); 'softmax': cross-entropy over the K+1 candidates"
    )


@LOSSES.register("cmc")
class CMCLoss(BankContrastLoss):
    """Symmetric bank contrast with K negatives drawn uniformly over all N clips, with
    replacement, as CMC's AliasMethod sampler does (``sampling=distinct``: K distinct clips among
    the other N − 1, K capped to them).

    Class labels play no part (CMC is unsupervised); the β default (0.8) is CRD's, as docs/method.md#cmc
    gives no β for CMC.
    """

    name: ClassVar[str] = "cmc"
    Options: ClassVar[type] = CMCOptions

    def negative_candidates_per_anchor(self) -> int:
        return self.dataset_size - 1

    def negative_keys(self, index: Tensor) -> Tensor:
        keys = torch.rand(index.shape[0], self.dataset_size, device=index.device)
        return keys.scatter(1, index[:, None], -1.0)

    def draw_negatives(self, index: Tensor) -> Tensor:
        return torch.randint(0, self.dataset_size, (index.shape[0], self.nce_k), device=index.device)

    def objective(self, logits: Tensor, bank: MemoryBank, side: int) -> Tensor:
        if self.opts.objective == "softmax":
            return self.softmax_objective(logits)
        return self.nce_objective(logits, bank, side)
