"""One training step for every distillation method, and what it needs: optimiser, schedule, AMP.

Gradient routing (docs/method.md#gradient-routing): the loop backpropagates ``total + extra`` once. ``total`` is the
student's loss (it also reaches the loss's heads); ``extra`` is built by the method on detached
student outputs, so it reaches only the heads. One optimiser holds the student group plus the
loss's ``param_groups()``. For CCL the learning-rate schedule applies to the student group only,
as the paper's code steps MultiStepLR on the student optimiser only (one SGD with per-group
momentum buffers is update-for-update the same as the code's separate SGD optimisers); the
baselines' heads decay with the student, as in RepDistiller's single optimiser
(``DistillLoss.heads_follow_schedule``).

Schedules: ``multistep`` decays ×``gamma`` at ``milestones`` (epochs); when not given they are
the released scripts' [150, 225] of 300 epochs scaled to ``epochs`` (50 % and 75 %), so short
runs decay too. ``cosine`` anneals per epoch to 0; ``constant`` keeps ``lr``.

Scale: AMP with bf16 (or fp16 + GradScaler) autocast on CUDA, bf16 on request on CPUs with
bfloat16 units (see :func:`ccl_cache.train.config.resolve_amp`), optional channels_last_3d, no
host synchronisation in the hot loop (loss parts accumulate on the device and are read every
``log_every`` steps: :class:`StepMeter`), non-blocking copies from pinned memory.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ccl_cache.errors import TrainingError
from ccl_cache.losses import Batch, DistillLoss, LossOutput
from ccl_cache.train.config import TrainConfig
from ccl_cache.train.distributed import sync_grads


def student_lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Epoch → learning-rate factor of the student group (and of the heads that follow it)."""
    if config.schedule == "cosine":
        return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * min(epoch, config.epochs) / config.epochs))
    if config.schedule == "multistep":
        marks = tuple(config.milestones or ())
        return lambda epoch: config.gamma ** sum(epoch >= m for m in marks)
    return lambda epoch: 1.0


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels (3D pooling backward) have no deterministic version.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.benchmark = True


def build_optimizer(student: nn.Module, loss_fn: DistillLoss, config: TrainConfig
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """One optimiser: group 0 the student (scheduled), then the loss's heads: scheduled with the
    student when the method says so (``heads_follow_schedule``, the baselines), else constant (CCL)."""
    groups = [{"params": [p for p in student.parameters() if p.requires_grad], "name": "student"}]
    groups += [dict(g) for g in loss_fn.param_groups()]
    params = [p for g in groups for p in g["params"]]
    # Fused kernels exist for floating-point parameters on CPU and CUDA; elsewhere torch's default.
    fused = config.fused_optimizer and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    kernel: dict[str, Any] = {"fused": True} if fused else {}
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                                      weight_decay=config.weight_decay, **kernel)
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, **kernel)
    scheduled = student_lr_factor(config)
    heads = scheduled if loss_fn.heads_follow_schedule else (lambda epoch: 1.0)
    lambdas = [scheduled] + [heads] * (len(groups) - 1)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


@dataclass(frozen=True)
class Amp:
    """Autocast settings: ``mode`` off | bf16 | fp16 on ``device_type``."""

    mode: str = "off"
    device_type: str = "cpu"

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mode)

    def autocast(self) -> Any:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.mode != "off")


def to_batch(data: Mapping[str, Any], device: torch.device, channels_last: bool = False) -> Batch:
    """A loader dict → :class:`Batch` on ``device`` (non-blocking copies from pinned memory).

    ``Batch.to`` reads the present rows of each modality off the host masks on the way, so that
    the losses select rows by index and the step never waits for the device (``Batch.present``).
    """
    batch = Batch(video=data["video"], label=data["label"], index=data["index"],
                  teachers=dict(data.get("teachers", {})), masks=dict(data.get("masks", {})))
    batch = batch.to(device, non_blocking=device.type == "cuda")
    if channels_last:
        batch.video = batch.video.contiguous(memory_format=torch.channels_last_3d)
    return batch


def train_step(student: nn.Module, loss_fn: DistillLoss, optimizer: torch.optim.Optimizer, batch: Batch, *,
               amp: Amp = Amp(), scaler: torch.amp.GradScaler | None = None, grad_clip: float | None = None,
               world: int = 1) -> LossOutput:
    """Forward, one backward of ``total + extra``, head-gradient sync, clip, optimiser step.

    ``student`` may be DDP-wrapped (its gradients are averaged during backward); the loss's
    head gradients are averaged here. Returns the loss output (values stay on the device).
    """
    with amp.autocast():
        out = student(batch.video)
    result = loss_fn(out, batch)  # float32 maths outside autocast (DistillLoss.forward)
    objective = result.total if result.extra is None else result.total + result.extra
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(objective).backward()
    else:
        objective.backward()
    sync_grads([p for p in loss_fn.parameters() if p.requires_grad], world)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return result


def inputs_finite(batch: Batch) -> dict[str, torch.Tensor]:
    """Per teacher input of ``batch`` ("teacher <m>"), a device bool: its embeddings are all finite
    (absent rows do not count). The video is not checked: it is decoded uint8 frames, normalised,
    finite by construction. No host sync: the trainer reads them only once the loss is non-finite."""
    out: dict[str, torch.Tensor] = {}
    for m, emb in batch.teachers.items():
        finite = torch.isfinite(emb).reshape(emb.shape[0], -1).all(dim=1)
        mask = batch.masks.get(m)
        out[f"teacher {m}"] = (finite | ~mask.bool()).all() if mask is not None else finite.all()
    return out


class StepMeter:
    """Loss parts summed on the device; one host sync per :meth:`flush`.

    Given the batches (:meth:`add`), it also tracks on the device whether their inputs were all
    finite, so a non-finite loss is blamed on the right thing: the data, or the training.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.finite: dict[str, torch.Tensor] = {}
        self.steps, self.clips, self.started = 0, 0, time.perf_counter()
        self.waited = 0.0  # seconds the loop spent waiting for the loader's next batch
        self.decoding = 0.0  # of which decoding it on the device (decode="device")

    def add_wait(self, seconds: float, decoding: float = 0.0) -> None:
        """Time spent getting a batch ready (a starved device shows here, not in clips/s alone);
        ``decoding``: the part of it spent decoding the batch on the device."""
        self.waited += seconds
        self.decoding += decoding

    def add(self, result: LossOutput, clips: int, batch: Batch | None = None) -> None:
        values = {"total": result.total.detach(), **result.parts}
        if result.extra is not None:
            values["extra"] = result.extra.detach()
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = value if name not in self.sums else self.sums[name] + value
        if batch is not None:
            for name, ok in inputs_finite(batch).items():
                self.finite[name] = ok if name not in self.finite else self.finite[name] & ok
        self.steps += 1
        self.clips += clips

    def flush(self) -> dict[str, Any]:
        """Mean of each part since the last flush, clips/s, ``loader_wait`` (the share of the
        window's wall time, i.e. of its steps' time, spent waiting for batches, their decoding on the
        device included: near 0 when the loader keeps up, near 1 when the device starves) and
        ``device_decode`` (the share spent decoding on the device); raises on a non-finite loss."""
        names = list(self.sums)
        means = (torch.stack([self.sums[n] for n in names]) / max(1, self.steps)).tolist() if names else []
        seconds = time.perf_counter() - self.started  # after the sync above: the device's work is done
        out = {"loss": dict(zip(names, means)), "clips_per_s": self.clips / max(seconds, 1e-9), "window_steps": self.steps,
               "loader_wait": min(1.0, self.waited / max(seconds, 1e-9)),
               "device_decode": min(1.0, self.decoding / max(seconds, 1e-9))}
        if all(math.isfinite(v) for v in means):
            self.reset()
            return out
        finite = {name: bool(ok) for name, ok in self.finite.items()}  # the one sync, on the way out
        steps = self.steps
        self.reset()
        raise TrainingError(_nonfinite_message(out["loss"], finite, steps))


def _nonfinite_message(loss: dict[str, float], finite: dict[str, bool], steps: int) -> str:
    """Whose fault a non-finite loss is: inputs holding NaN/inf (the data), or finite inputs (the training)."""
    broken = [name for name, ok in finite.items() if not ok]
    if broken:
        return (f"the loss became non-finite ({loss}) on inputs that were not finite: {', '.join(broken)} held NaN/inf "
                f"in the last {steps} step(s); the data is at fault, not the learning rate: check the store with "
                "`ccl-cache info STORE` (its NaN/inf column) and re-extract what it names")
    checked = (f" although the teacher inputs of the last {steps} step(s) were finite ({', '.join(finite)}): "
               "the training diverged" if finite else "")
    return f"the loss became non-finite ({loss}){checked}; lower --lr, set --grad-clip, or use --amp off"
