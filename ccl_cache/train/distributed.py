"""Training under torchrun: joining and leaving the job, wrapping the student, syncing head gradients.

Under torchrun (``WORLD_SIZE`` > 1, parsed by :func:`ccl_cache.hardware.launch`) the student is
wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA); each rank keeps its own copy of
the loss heads and memory banks, whose gradients are all-reduced every step (a missing gradient —
e.g. no clip with audio on that rank — counts as zero, so no rank ever waits on a collective
another skips). Contrastive terms use the local batch (no global gather) and memory banks are
updated with each rank's rows only. Rank 0 evaluates and writes every output.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ccl_cache import hardware
from ccl_cache.losses import DistillLoss

DIST_TIMEOUT = timedelta(hours=3)  # rank 0 validates alone each epoch while the others wait at a barrier


def init_distributed(device: str) -> hardware.Launch:
    """Join the torchrun job described by RANK/WORLD_SIZE (no-op for a single process)."""
    info = hardware.launch()
    if info.world <= 1:
        return hardware.Launch()
    if not dist.is_initialized():
        use_nccl = device != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(hardware.local_gpu(info.local_rank))
        dist.init_process_group("nccl" if use_nccl else "gloo", timeout=DIST_TIMEOUT)
    return info


def shutdown_distributed(info: hardware.Launch) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank (the loss heads are outside DDP)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def wrap_distributed(student: nn.Module, loss_fn: DistillLoss, info: hardware.Launch, seed: int) -> nn.Module:
    """DDP around the student; the loss heads start from rank 0's values on every rank.

    After wrapping, each rank reseeds with ``seed + rank`` so per-rank randomness (memory-bank
    negatives) differs between ranks.
    """
    broadcast_module(loss_fn)
    device = next(student.parameters()).device
    model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(seed + info.rank)
    return model


def sync_grads(params: list[nn.Parameter], world: int) -> None:
    """Average gradients over ranks in one collective; a missing gradient counts as zero.

    Every rank calls this with the same parameter list every step, so a rank whose batch
    skipped a head (no clip with audio) still joins the all-reduce: no hang, no NaN.
    """
    if world <= 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset: offset + n].view_as(p).clone()
        offset += n
