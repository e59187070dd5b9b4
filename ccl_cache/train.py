"""The one training loop for every distillation method: data, optimiser, AMP, DDP, checkpoints.

Chen et al., "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (CVPR
2021), and the Table 1 baselines, all train a video student on clips plus cached teacher
embeddings. Whatever the method, one loop runs: the loss comes from ``LOSSES`` and declares
what the batch must carry (``required``: teacher modalities, dataset indices); the dataset loads
exactly that. There is no ``if method == ...`` here.

Gradient routing (METHOD.md): the loop backpropagates ``total + extra`` once. ``total`` is the
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
bfloat16 units (see :func:`resolve_amp`), optional channels_last_3d and ``torch.compile``, no
host synchronisation in the hot loop (loss parts accumulate on the device and are read every
``log_every`` steps), pinned memory and non-blocking copies, persistent prefetching workers.
Under torchrun (``WORLD_SIZE`` > 1) the student is wrapped in DistributedDataParallel (gloo on
CPU, nccl on CUDA); each rank keeps its own copy of the loss heads and memory banks, whose
gradients are all-reduced every step (a missing gradient — e.g. no clip with audio on that
rank — counts as zero, so no rank ever waits on a collective another skips). Contrastive terms
use the local batch (no global gather) and memory banks are updated with each rank's rows only.
Rank 0 evaluates and writes every output.

Outputs in ``out``: ``config.yaml`` (resolved), ``checkpoints/{last,best}.pt``,
``metrics.jsonl``, ``summary.json``, optional ``tb/`` (TensorBoard, when installed), and the
student's embedding of every clip of the store under ``/students/<run>/``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import random
import shutil
import time
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ccl_cache import checkpoint as ckpt
from ccl_cache import hardware
from ccl_cache.data import (
    ClipDataset, ClipSpec, EpochSampler, VideoWindows, collate_windows, default_workers, make_loader, make_splits,
    resolve_teachers,
)
from ccl_cache.errors import CclCacheError, CheckpointError, ConfigError, TrainingError
from ccl_cache.evaluate import clip_top1, video_top1
from ccl_cache.fileio import atomic_path, save_config, write_json
from ccl_cache.losses import LOSSES, MODALITIES, Batch, DistillLoss, LossOutput, build_loss
from ccl_cache.store.failures import usable_rows
from ccl_cache.students import STUDENTS, build_student, count_parameters
from ccl_cache.typecheck import expected_type

log = logging.getLogger(__name__)

Progress = Callable[[str, Mapping[str, Any]], None]
"""``progress(event, data)``; events: start, steps, epoch, test, embed, done."""

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("auto", "cache", "file")
# Fields that may change between a run and its resume: they do not change the trajectory.
RESUME_FREE = frozenset({
    "resume", "workers", "prefetch", "device", "log_every", "save_every", "val_every", "out",
    "teachers_in_ram", "write_embeddings", "tensorboard", "eval_batch_size", "test_max_windows", "source",
    "threads", "compile",
})
# Fields added after configs were first saved, with the behaviour of the code before them: an old
# config.yaml or checkpoint then still describes, and resumes, exactly the run it made.
LEGACY_VALUES: dict[str, Any] = {"fused_optimizer": False}
DIST_TIMEOUT = timedelta(hours=3)  # rank 0 validates alone each epoch while the others wait at a barrier


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved (resolved) as ``config.yaml`` in the run dir.

    Defaults are the released CCL scripts' (SGD lr 1e-3, momentum 0.9, weight decay 5e-4, batch
    16, 300 epochs, MultiStepLR [150, 225] ×0.1 on the student, seed 1, 16 frames at 112²).
    ``teachers``: modalities ("audio", "image") or store keys ("audio/cnn14"). ``val_clips``:
    evenly spaced validation windows per video. ``test_max_windows``: cap on test windows per
    video (None = all non-overlapping windows). ``save_every``: extra mid-epoch checkpoints every
    N steps (0 = at epoch ends only). ``workers``: data loader processes (None:
    ``data.default_workers``, 4 but at most one per usable core; free to change on resume).
    ``threads``: torch intra-op threads of this process (None: torch's default, one per core).
    Small students on a shared CPU run far faster with 1 (measured: an epoch of the ``small``
    student took 43 s with 2 threads and 6.7 s with 1 on a loaded 2-core machine: the thread pool
    spent its time synchronising). ``compile``: ``torch.compile`` the
    training forward (the first step pays the compilation: ~25 s for the ``small`` student on
    CPU); free to change on resume. ``fused_optimizer``: the optimiser's fused kernel, one pass
    over every parameter (on CPU the ``small`` student's AdamW step gets 1.12x faster as a whole:
    ``benchmarks/bench_distill_step.py``, its ``optimizer`` entry; with fp16 on CUDA the
    GradScaler's inf check then needs no host sync). The fused kernels round differently from
    the per-tensor loop (a float32 ulp here and there), so runs made before the option existed
    are reproduced with ``fused_optimizer=False`` - which is what configs saved without the
    field load as.
    """

    store: str
    method: str = "ccl"
    loss_options: dict[str, Any] = field(default_factory=dict)
    teachers: tuple[str, ...] = ("audio", "image")
    student: str = "r21d_ccl"
    student_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "multistep"
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    frames: int = 16
    stride: int = 1
    size: int = 112
    source: str = "auto"
    workers: int | None = None
    prefetch: int = 2
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    seed: int = 1
    deterministic: bool = False
    val_every: int = 1
    val_fraction: float = 0.1
    val_clips: int = 3
    test_max_windows: int | None = None
    eval_batch_size: int | None = None
    out: str = "runs/ccl"
    run_name: str | None = None
    resume: bool = False
    log_every: int = 20
    save_every: int = 0
    threads: int | None = None
    teachers_in_ram: bool | None = None
    write_embeddings: bool = True
    tensorboard: bool = True
    fused_optimizer: bool = True

    def validate(self) -> None:
        """ConfigError naming the first bad value and what to pass instead."""
        hints = typing.get_type_hints(TrainConfig)
        for f in fields(self):
            wanted = expected_type(getattr(self, f.name), hints[f.name])
            if wanted is not None:
                raise ConfigError(f"{f.name}={getattr(self, f.name)!r}: expected {wanted}")
        checks = [
            (self.method in LOSSES, f"method {self.method!r}: choose one of {', '.join(LOSSES.names())}"),
            (self.student in STUDENTS, f"student {self.student!r}: choose one of {', '.join(STUDENTS.names())}"),
            (self.epochs >= 1, f"epochs={self.epochs}: need at least 1"),
            (self.batch_size >= 2, f"batch_size={self.batch_size}: need at least 2 (contrastive terms compare rows)"),
            (self.lr > 0 and self.weight_decay >= 0 and self.momentum >= 0, "lr must be > 0, weight_decay and momentum >= 0"),
            (self.optimizer in OPTIMIZERS, f"optimizer {self.optimizer!r}: choose one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule {self.schedule!r}: choose one of {SCHEDULES}"),
            (self.amp in AMP_MODES, f"amp {self.amp!r}: choose one of {AMP_MODES}"),
            (self.device in DEVICES or self.device.startswith("cuda:"), f"device {self.device!r}: auto, cpu, cuda or cuda:N"),
            (self.source in SOURCES, f"source {self.source!r}: choose one of {SOURCES}"),
            ((self.workers is None or self.workers >= 0) and self.prefetch >= 1,
             f"workers={self.workers} (>= 0, or None: min(4, CPU cores)), prefetch={self.prefetch} (>= 1)"),
            (self.val_every >= 1 and self.log_every >= 1 and self.save_every >= 0, "val_every, log_every >= 1; save_every >= 0"),
            (self.val_clips >= 1, f"val_clips={self.val_clips}: need at least 1"),
            (self.threads is None or self.threads >= 1, f"threads={self.threads}: need at least 1 (or None: torch's default)"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip={self.grad_clip}: a positive norm or None"),
            (bool(self.teachers) or not LOSSES.get(self.method).uses_teachers,
             f"method {self.method!r} distils from teachers: pass --teachers audio, image or audio,image"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        unused = sorted(set(self.loss_options) - set(options_for_teachers(self.loss_options, self.teachers)))
        if unused:
            raise ConfigError(f"loss option {unused[0]} concerns a teacher this run does not use (teachers: "
                              f"{', '.join(self.teachers) or 'none'}); drop it, or add that teacher to --teachers")
        if self.milestones is not None:
            marks = ",".join(map(str, self.milestones))
            if list(self.milestones) != sorted(self.milestones):
                raise ConfigError(f"milestones {marks}: give increasing epochs, e.g. 150,225")
            if self.schedule != "multistep":
                raise ConfigError(f"milestones {marks} apply to --schedule multistep only, not {self.schedule!r}; "
                                  "drop --milestones or pass --schedule multistep")
            # A milestone equal to the epoch count is harmless (the defaults of 1-2 epoch runs
            # make one); later ones would silently never decay the rate.
            if self.milestones and (self.milestones[0] < 1 or self.milestones[-1] > self.epochs):
                raise ConfigError(f"milestones {marks}: the rate decays at the start of these epochs, so give "
                                  f"epochs from 1 to {self.epochs} (--epochs {self.epochs}), or raise --epochs")
        ClipSpec(self.frames, self.stride, self.size)  # validates the clip geometry

    @property
    def clip_spec(self) -> ClipSpec:
        return ClipSpec(frames=self.frames, stride=self.stride, size=self.size)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["teachers"] = list(self.teachers)
        data["milestones"] = None if self.milestones is None else list(self.milestones)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (e.g. a run's ``config.yaml``); unknown keys are an error.

        A field missing from the data (a config saved before the field existed) takes its value in
        ``LEGACY_VALUES`` - what the code did before - if it has one, otherwise its default.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"training config has unknown field(s) {unknown}; expected a subset of {sorted(names)}")
        values = {**LEGACY_VALUES, **data}
        if values.get("teachers") is not None:
            values["teachers"] = tuple(values["teachers"])
        if values.get("milestones") is not None:
            values["milestones"] = tuple(int(m) for m in values["milestones"])
        return cls(**values)


# ============================================================================================
# Resolution: device, precision, schedule, run name


DistInfo = hardware.Launch  # this process's place in a torchrun job


def resolve_amp(amp: str, device: torch.device) -> str:
    """auto → bf16 on CUDA (if supported) else off; fp16 needs CUDA; bf16 needs CUDA or a CPU
    with bfloat16 units (AMX / AVX512-BF16), where it is opt-in: measured on this repo's 2-core
    AMX machine, one ``r21d_ccl`` training step (2 clips of 16×112², 1 thread) took 3.88 s in
    float32 and 1.57 s in bf16, 0.77 s with ``channels_last`` too; the ``small`` student gains
    1.1–1.45×. Elsewhere bf16 would be emulated, slower than float32."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" and hardware.cuda_has_bf16(device) else "off"
    if amp == "bf16" and device.type == "cpu":
        if not hardware.cpu_has_bf16():
            raise ConfigError("amp='bf16' on this CPU would be emulated (no AVX512-BF16/AMX units) and slower "
                              "than float32; pass --amp off")
        return amp
    if amp != "off" and device.type != "cuda":
        raise ConfigError(f"amp={amp!r} needs a CUDA device (this run uses {device}); pass --amp off "
                          "(or bf16 on a CPU with bfloat16 units)")
    return amp


def options_for_teachers(options: Mapping[str, Any], teachers: Sequence[str]) -> dict[str, Any]:
    """``options`` without those of a modality not in ``teachers`` (``tau_image`` for an audio-only run)."""
    return {k: v for k, v in options.items()
            if not any(k.endswith(f"_{m}") and m not in teachers for m in MODALITIES)}


def resolve_config(config: TrainConfig, device: torch.device) -> TrainConfig:
    """Fill the derived values (device, amp, milestones, run name) so config.yaml says them."""
    milestones = config.milestones
    if config.schedule == "multistep" and milestones is None:
        # The released scripts' [150, 225] of 300 epochs, scaled so short runs still decay.
        milestones = tuple(sorted({max(1, round(config.epochs * f)) for f in (0.5, 0.75)}))
    run_name = config.run_name or Path(config.out).resolve().name
    from ccl_cache.store.schema import validate_run

    try:
        validate_run(run_name)
    except Exception as exc:  # the store's own message says which characters are allowed
        raise ConfigError(f"run name {run_name!r} cannot name a store group ({exc}); pass --run-name") from None
    return replace(config, device=str(device), amp=resolve_amp(config.amp, device), milestones=milestones,
                   workers=default_workers(config.workers),
                   run_name=run_name, eval_batch_size=config.eval_batch_size or config.batch_size)


def student_lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Epoch → learning-rate factor of the student group (and of the heads that follow it)."""
    if config.schedule == "cosine":
        return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * min(epoch, config.epochs) / config.epochs))
    if config.schedule == "multistep":
        marks = tuple(config.milestones or ())
        return lambda epoch: config.gamma ** sum(epoch >= m for m in marks)
    return lambda epoch: 1.0


# ============================================================================================
# Components: seeding, optimiser, distributed helpers


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


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun job described by RANK/WORLD_SIZE (no-op for a single process)."""
    info = hardware.launch()
    if info.world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        use_nccl = device != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(hardware.local_gpu(info.local_rank))
        dist.init_process_group("nccl" if use_nccl else "gloo", timeout=DIST_TIMEOUT)
    return info


def shutdown_distributed(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank (the loss heads are outside DDP)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def wrap_distributed(student: nn.Module, loss_fn: DistillLoss, info: DistInfo, seed: int) -> nn.Module:
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


# ============================================================================================
# One step


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


class StepMeter:
    """Loss parts summed on the device; one host sync per :meth:`flush`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.clips, self.started = 0, 0, time.perf_counter()

    def add(self, result: LossOutput, clips: int) -> None:
        values = {"total": result.total.detach(), **result.parts}
        if result.extra is not None:
            values["extra"] = result.extra.detach()
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = value if name not in self.sums else self.sums[name] + value
        self.steps += 1
        self.clips += clips

    def flush(self) -> dict[str, Any]:
        """Mean of each part since the last flush, and clips/s; raises on a non-finite loss."""
        names = list(self.sums)
        means = (torch.stack([self.sums[n] for n in names]) / max(1, self.steps)).tolist() if names else []
        seconds = time.perf_counter() - self.started
        out = {"loss": dict(zip(names, means)), "clips_per_s": self.clips / max(seconds, 1e-9), "window_steps": self.steps}
        self.reset()
        if not all(math.isfinite(v) for v in means):
            raise TrainingError(
                f"the loss became non-finite ({out['loss']}); lower --lr, set --grad-clip, or use --amp off"
            )
        return out


# ============================================================================================
# Evaluation: windows → clip/video top-1 and per-video embeddings


@dataclass
class WindowResult:
    """Per-window logits and per-video (window-averaged) embeddings of an evaluation pass."""

    logits: np.ndarray  # (W, C)
    window_rows: np.ndarray  # (W,) store row of each window
    window_labels: np.ndarray  # (W,)
    rows: np.ndarray  # (V,) store rows
    embedding: np.ndarray  # (V, D)

    def metrics(self) -> dict[str, float]:
        return {"clip_top1": clip_top1(self.logits, self.window_labels),
                "video_top1": video_top1(self.logits, self.window_rows, self.window_labels),
                "videos": int(len(self.rows)), "windows": int(len(self.logits))}


@torch.no_grad()
def run_windows(student: nn.Module, loader: Any, device: torch.device, amp: Amp, chunk: int,
                channels_last: bool = False) -> WindowResult:
    """Evaluate ``student`` (eval mode) on a :class:`VideoWindows` loader, ``chunk`` windows a pass."""
    was_training = student.training
    student.eval()
    logits, emb, wrows, wlabels, rows = [], [], [], [], []
    for data in loader:
        video, owner = data["video"], data["owner"]
        outs = []
        for i in range(0, len(video), chunk):
            part = video[i: i + chunk].to(device, non_blocking=device.type == "cuda")
            if channels_last:
                part = part.contiguous(memory_format=torch.channels_last_3d)
            with amp.autocast(), _cudnn_autotuned(len(part) == chunk):
                out = student(part)
            outs.append((out.logits.float().cpu(), out.embedding.float().cpu()))
        lg, em = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        per_video = torch.zeros(len(data["row"]), em.shape[1]).index_add_(0, owner, em)
        per_video /= torch.bincount(owner, minlength=len(data["row"])).clamp_min(1)[:, None].float()
        logits.append(lg.numpy())
        emb.append(per_video.numpy())
        wrows.append(data["row"][owner].numpy())
        wlabels.append(data["label"][owner].numpy())
        rows.append(data["row"].numpy())
    student.train(was_training)
    return WindowResult(np.concatenate(logits), np.concatenate(wrows), np.concatenate(wlabels),
                        np.concatenate(rows), np.concatenate(emb))


@contextlib.contextmanager
def _cudnn_autotuned(allowed: bool) -> Iterator[None]:
    """cuDNN autotuning (``cudnn.benchmark``, when on) only where ``allowed``.

    A loader batch holds a varying number of windows, so its last chunk takes nearly every size
    below ``chunk`` over an evaluation; autotuning each new size (every conv layer's algorithms,
    timed) would cost more than it saves, so those chunks run on cuDNN's heuristics.
    """
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark
    cudnn.benchmark = saved and allowed
    try:
        yield
    finally:
        cudnn.benchmark = saved


def window_loader(config: TrainConfig, rows: np.ndarray, count: int | None, device: torch.device) -> Any:
    """A loader of :class:`VideoWindows` (``count`` spaced windows, or all) for ``rows``."""
    ds = VideoWindows(config.store, rows, spec=config.clip_spec, count=count,
                      max_windows=config.test_max_windows if count is None else None, source=config.source)
    per_batch = max(1, (config.eval_batch_size or config.batch_size) // (count or 4))
    return make_loader(ds, batch_size=per_batch, workers=config.workers, pin_memory=device.type == "cuda",
                       prefetch=config.prefetch, collate=collate_windows)


# ============================================================================================
# The run


@dataclass
class Run:
    """Everything one training process holds (built by :func:`setup`)."""

    config: TrainConfig
    dist: DistInfo
    device: torch.device
    amp: Amp
    out: Path
    splits: Any
    teachers: dict[str, str]
    classes: list[str]
    train_set: ClipDataset
    sampler: EpochSampler
    loader: Any
    student: nn.Module
    model: nn.Module  # the student, DDP-wrapped under torchrun
    loss_fn: DistillLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    state: ckpt.TrainState
    metrics: "MetricsLog"
    progress: Progress
    tb: Any = None
    started: float = field(default_factory=time.perf_counter)
    val_loader: Any = None

    @property
    def steps_per_epoch(self) -> int:
        """Batches in a full epoch of this rank (the sampler's skip does not count)."""
        per_rank, bs = self.sampler.per_rank(), self.config.batch_size
        return per_rank // bs if per_rank >= bs else 1

    def emit(self, event: str, data: Mapping[str, Any]) -> None:
        if self.dist.main:
            self.progress(event, data)


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (rank 0); a resume drops lines past the checkpoint."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, global_step: int) -> None:
        if not (self.enabled and self.path.exists()):
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            # Lines written after the checkpoint are replayed by the resumed run: drop them.
            if rec.get("global_step", 0) <= global_step and rec.get("kind") != "test":
                keep.append(line)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def _quiet(event: str, data: Mapping[str, Any]) -> None:
    """Default progress: plain log lines."""
    if event == "steps":
        parts = " ".join(f"{k}={v:.4g}" for k, v in data["loss"].items())
        log.info("epoch %d step %d/%d lr %.3g %.1f clips/s %s", data["epoch"] + 1, data["step"], data["steps"],
                 data["lr"], data["clips_per_s"], parts)
    elif event == "epoch" and data.get("val"):
        log.info("epoch %d val clip top-1 %.4f video top-1 %.4f", data["epoch"] + 1,
                 data["val"]["clip_top1"], data["val"]["video_top1"])


def _tensorboard(config: TrainConfig, out: Path, main: bool) -> Any:
    if not (config.tensorboard and main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: TensorBoard is not a dependency
        return None
    return SummaryWriter(str(out / "tb"))


def _data(config: TrainConfig) -> tuple[Any, dict[str, str], list[str], ClipDataset]:
    """Splits, teacher keys (those the loss needs), classes and the training dataset."""
    from ccl_cache.store import open_store

    required = LOSSES.get(config.method).required(tuple(t.split("/", 1)[0] for t in config.teachers))
    with open_store(config.store, "r") as store:
        wanted = [t for t in config.teachers if t.split("/", 1)[0] in required]
        teachers = resolve_teachers(store, wanted)
        splits = make_splits(store, teachers, config.val_fraction, config.seed)
        classes = store.classes
    train_set = ClipDataset(config.store, splits.train, teachers=teachers, spec=config.clip_spec, train=True,
                            seed=config.seed, source=config.source, teachers_in_ram=config.teachers_in_ram)
    return splits, teachers, classes, train_set


def _model(config: TrainConfig, num_classes: int, train_set: ClipDataset, device: torch.device
           ) -> tuple[nn.Module, DistillLoss]:
    student = build_student(config.student, num_classes, **config.student_options).to(device)
    if config.channels_last:
        student = student.to(memory_format=torch.channels_last_3d)
    loss_fn = build_loss(
        config.method, num_classes=num_classes, student_dim=student.embedding_dim,
        teacher_dims=train_set.teacher_dims, modalities=tuple(train_set.tables),
        dataset_size=len(train_set), labels=train_set.labels, **config.loss_options,
    ).to(device)
    return student, loss_fn


def setup(config: TrainConfig, dist_info: DistInfo, progress: Progress | None) -> Run:
    """Resolve the config, build data, model, loss and optimiser, and resume if asked."""
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = hardware.resolve_device(config.device, dist_info)
    if device.type == "cuda":
        # Else the pin-memory thread and the bf16 check act on GPU 0 whatever cuda:N says.
        torch.cuda.set_device(device)
    config = resolve_config(config, device)
    out = Path(config.out)
    if dist_info.main:
        _check_out_dir(out, config.resume)
        if config.write_embeddings:
            check_student_run_free(config.store, str(config.run_name), out)
    seed_everything(config.seed, config.deterministic)
    splits, teachers, classes, train_set = _data(config)
    student, loss_fn = _model(config, len(classes), train_set, device)
    model = wrap_distributed(student, loss_fn, dist_info, config.seed) if dist_info.world > 1 else student
    if config.compile:
        # Only the training forward: evaluation and checkpoints use the plain student (its
        # windows have other shapes, which would only trigger recompiles).
        model = torch.compile(model)
    optimizer, scheduler = build_optimizer(student, loss_fn, config)
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    sampler = EpochSampler(len(train_set), seed=config.seed, rank=dist_info.rank, world=dist_info.world)
    drop_last = sampler.per_rank() >= config.batch_size
    loader = make_loader(train_set, batch_sampler=torch.utils.data.BatchSampler(sampler, config.batch_size, drop_last),
                         workers=config.workers, pin_memory=device.type == "cuda", prefetch=config.prefetch)
    loader.generator = torch.Generator().manual_seed(config.seed)  # keep the global RNG untouched
    run = Run(config, dist_info, device, Amp(config.amp, device.type), out, splits, teachers, classes, train_set,
              sampler, loader, student, model, loss_fn, optimizer, scheduler, scaler, ckpt.TrainState(),
              MetricsLog(out / "metrics.jsonl", dist_info.main), progress or _quiet)
    if config.resume and (out / "checkpoints" / "last.pt").exists():
        _resume(run)
    elif dist_info.main:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    if dist_info.main:
        save_config(config, out / "config.yaml")
    run.tb = _tensorboard(config, out, dist_info.main)
    return run


def check_student_run_free(store: str | Path, run_name: str, run_dir: Path) -> None:
    """Refuse (before any work) to write embeddings under a name that holds another run's.

    Two runs in folders of the same name (``a/ccl`` and ``b/ccl``) would otherwise end with the
    second silently replacing the first's embeddings, which indexes and benchmarks were built on.
    """
    from ccl_cache.store import open_store

    with open_store(store) as opened:
        if run_name not in opened.student_runs():
            return
        owner = opened.student_attrs(run_name).get("run_dir")
    if owner is None or Path(owner) == run_dir.resolve():
        return
    raise ConfigError(f"{store}: student run {run_name!r} holds the embeddings of another run ({owner}); "
                      "pass --run-name with a new name to keep both (or, for distill, --no-embed)")


def _check_out_dir(out: Path, resume: bool) -> None:
    last = out / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise ConfigError(f"{out} already holds a run ({last}); pass --resume to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)


# ============================================================================================
# Checkpoints


def _payload(run: Run) -> dict[str, Any]:
    return {
        "config": run.config.to_dict(),
        "classes": list(run.classes),
        "num_classes": len(run.classes),
        "model": run.student.state_dict(),
        "loss": run.loss_fn.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": ckpt.capture_rng(),
        "state": run.state.to_dict(),
    }


def save(run: Run, best: bool = False) -> None:
    """Write ``last.pt`` (and, first, ``best.pt``) atomically; rank 0 only.

    ``best.pt`` goes first: ``last.pt`` records the best epoch, so installed first it could name
    a best whose weights a kill kept out of ``best.pt`` (missing: every resume failed at the end;
    older: the test used other weights than the summary named). A kill between the two now only
    repeats the epoch, and :func:`finish` reports the best epoch that ``best.pt`` itself records.
    """
    if not run.dist.main:
        return
    directory = run.out / "checkpoints"
    if not best:
        ckpt.save_checkpoint(directory / "last.pt", _payload(run))
        return
    ckpt.save_checkpoint(directory / "best.pt", _payload(run))
    with atomic_path(directory / "last.pt") as tmp:
        shutil.copyfile(directory / "best.pt", tmp)


def _resume(run: Run) -> None:
    path = run.out / "checkpoints" / "last.pt"
    # Onto the CPU: the RNG states must stay there, and load_state_dict copies the rest over.
    data = ckpt.load_checkpoint(path, map_location="cpu")
    saved = TrainConfig.from_dict(data["config"]).to_dict()  # fills fields added since (LEGACY_VALUES)
    ckpt.check_resume_config(path, saved, run.config.to_dict(), RESUME_FREE)
    run.student.load_state_dict(data["model"])
    run.loss_fn.load_state_dict(data["loss"])
    run.optimizer.load_state_dict(data["optimizer"])
    run.scheduler.load_state_dict(data["scheduler"])
    if run.scaler is not None and data["scaler"] is not None:
        run.scaler.load_state_dict(data["scaler"])
    ckpt.restore_rng(data["rng"])
    if run.dist.world > 1:
        torch.manual_seed(run.config.seed + run.dist.rank + data["state"]["global_step"])
    run.state = ckpt.TrainState.from_dict(data["state"])
    run.metrics.truncate_after(run.state.global_step)
    log.info("resumed %s at epoch %d step %d", path, run.state.epoch + 1, run.state.step_in_epoch)


# ============================================================================================
# The loop


def _log_steps(run: Run, meter: StepMeter, epoch: int, steps: int) -> None:
    window = meter.flush()
    record = {"kind": "train", "epoch": epoch, "step": run.state.step_in_epoch, "steps": steps,
              "global_step": run.state.global_step, "lr": run.optimizer.param_groups[0]["lr"], **window}
    run.metrics.write(record)
    if run.tb is not None:
        for name, value in window["loss"].items():
            run.tb.add_scalar(f"train/{name}", value, run.state.global_step)
        run.tb.add_scalar("train/clips_per_s", window["clips_per_s"], run.state.global_step)
    run.emit("steps", record)


def train_epoch(run: Run, epoch: int) -> None:
    """One epoch (or its rest, after a mid-epoch resume) of :func:`train_step`."""
    run.student.train()
    run.loss_fn.train()
    run.sampler.set_epoch(epoch, run.state.step_in_epoch * run.config.batch_size)
    steps = run.steps_per_epoch
    meter, cfg = StepMeter(), run.config
    for data in run.loader:
        batch = to_batch(data, run.device, cfg.channels_last)
        result = train_step(run.model, run.loss_fn, run.optimizer, batch, amp=run.amp, scaler=run.scaler,
                            grad_clip=cfg.grad_clip, world=run.dist.world)
        meter.add(result, len(batch.label))
        run.state.step_in_epoch += 1
        run.state.global_step += 1
        last = run.state.step_in_epoch == steps
        if run.state.global_step % cfg.log_every == 0 or last:
            _log_steps(run, meter, epoch, steps)
        if cfg.save_every and run.state.global_step % cfg.save_every == 0 and not last:
            save(run)


def validate(run: Run, epoch: int) -> dict[str, Any] | None:
    """Clip/video top-1 on ``val_clips`` spaced windows per validation video (rank 0)."""
    if not run.dist.main or len(run.splits.val) == 0:
        return None
    if run.val_loader is None:
        run.val_loader = window_loader(run.config, run.splits.val, run.config.val_clips, run.device)
    result = run_windows(run.student, run.val_loader, run.device, run.amp,
                         run.config.eval_batch_size or run.config.batch_size, run.config.channels_last)
    return result.metrics()


def _end_epoch(run: Run, epoch: int) -> None:
    run.scheduler.step()
    run.state.epoch, run.state.step_in_epoch = epoch + 1, 0
    cfg, val = run.config, None
    if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
        val = validate(run, epoch)
    best = False
    if val is not None:
        run.state.history.append({"epoch": epoch, **val})
        best = val["clip_top1"] > run.state.best_val
        if best:
            run.state.best_val, run.state.best_epoch = val["clip_top1"], epoch
        run.metrics.write({"kind": "val", "epoch": epoch, "global_step": run.state.global_step, **val})
        if run.tb is not None:
            run.tb.add_scalar("val/clip_top1", val["clip_top1"], epoch + 1)
            run.tb.add_scalar("val/video_top1", val["video_top1"], epoch + 1)
    elif len(run.splits.val) == 0:
        best = True  # no validation split: the latest epoch is the one to keep
        run.state.best_epoch = epoch
    if run.dist.world > 1:
        for buffer in run.student.buffers():  # BatchNorm statistics: rank 0's, as evaluated and saved
            dist.broadcast(buffer, src=0)
    save(run, best=best)
    run.emit("epoch", {"epoch": epoch, "epochs": cfg.epochs, "val": val, "best_val": run.state.best_val,
                       "best_epoch": run.state.best_epoch})
    _barrier(run)


def _barrier(run: Run) -> None:
    if run.dist.world > 1:
        dist.barrier()


def fit(run: Run) -> None:
    """Train from the current state to ``epochs``."""
    cfg = run.config
    run.emit("start", {
        "epochs": cfg.epochs, "start_epoch": run.state.epoch, "start_step": run.state.step_in_epoch,
        "steps_per_epoch": run.steps_per_epoch,
        "train": len(run.splits.train), "val": len(run.splits.val), "test": len(run.splits.test),
        "excluded": run.splits.excluded, "device": str(run.device), "amp": cfg.amp, "world": run.dist.world,
    })
    for epoch in range(run.state.epoch, cfg.epochs):
        train_epoch(run, epoch)
        _end_epoch(run, epoch)


# ============================================================================================
# After training: test, embeddings, summary


def load_weights(student: nn.Module, path: Path) -> dict[str, Any]:
    data = ckpt.load_checkpoint(path)  # CPU: only the weights go to the device, by load_state_dict
    student.load_state_dict(data["model"])
    return data


def test(run: Run) -> dict[str, Any] | None:
    """The paper's test protocol with the best checkpoint: video top-1 (softmax averaged over
    non-overlapping windows) and clip top-1 (rank 0)."""
    if len(run.splits.test) == 0:
        return None
    loader = window_loader(run.config, run.splits.test, None, run.device)
    result = run_windows(run.student, loader, run.device, run.amp,
                         run.config.eval_batch_size or run.config.batch_size, run.config.channels_last)
    metrics = {**result.metrics(), "checkpoint": "best", "epoch": run.state.best_epoch}
    run.metrics.write({"kind": "test", "global_step": run.state.global_step, **metrics})
    run.emit("test", metrics)
    return metrics


def embed_store(student: nn.Module, config: TrainConfig, store: str | Path, device: torch.device,
                attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Write the student's embedding of every clip of ``store`` (windows averaged) to
    ``/students/<run>/``; undecodable rows (failure ledger) get NaN (indexes skip them)."""
    from ccl_cache.store import open_store

    with open_store(store, "r") as opened:
        n = opened.n
        ok, _ = usable_rows(opened, {})
    rows = np.flatnonzero(ok)
    cfg = replace(config, store=str(store))
    loader = window_loader(cfg, rows, None, device)
    result = run_windows(student, loader, device, Amp(cfg.amp if device.type == "cuda" else "off", device.type),
                         cfg.eval_batch_size or cfg.batch_size, cfg.channels_last)
    emb = np.full((n, result.embedding.shape[1]), np.nan, dtype=np.float32)
    emb[result.rows] = result.embedding
    # Read handles (this process's and the workers') must be gone before writing: HDF5 locks.
    loader.dataset.reader.close()
    del loader
    gc.collect()
    with open_store(store, "r+") as opened, opened.acquire_lease(command="ccl-cache embed"):
        opened.write_student(str(config.run_name), emb, {**attrs, "rows": int(len(rows)), "missing": int(n - len(rows))})
    return {"store": str(store), "run": config.run_name, "rows": int(len(rows)), "missing": int(n - len(rows)),
            "dim": int(emb.shape[1])}


def _embed_after_training(run: Run) -> dict[str, Any] | None:
    if not run.config.write_embeddings:
        return None
    attrs = {"method": run.config.method, "student": run.config.student, "checkpoint": "best",
             "epoch": run.state.best_epoch, "frames": run.config.frames, "size": run.config.size,
             "protocol": "non-overlapping windows averaged", "run_dir": str(run.out.resolve())}
    _close_loaders(run)
    try:
        info = embed_store(run.student, run.config, run.config.store, run.device, attrs)
    except Exception as exc:  # noqa: BLE001 - the run is trained and tested: report, do not lose it
        # Another writer holds the store, a file damaged since extraction (through loader workers
        # a MediaError arrives as a RuntimeError), a full disk: `ccl-cache embed` redoes this step.
        log.error("could not write the student embeddings: %s", exc, exc_info=not isinstance(exc, CclCacheError))
        return {"written": False, "error": str(exc), "fix": f"ccl-cache embed {run.out} --store {run.config.store}"}
    run.emit("embed", info)
    return {"written": True, **info}


def _close_loaders(run: Run) -> None:
    run.loader = run.val_loader = None
    run.train_set.reader.close()
    gc.collect()


def _summary(run: Run, test_metrics: dict[str, Any] | None, embeddings: dict[str, Any] | None) -> dict[str, Any]:
    cfg = run.config
    ck = run.out / "checkpoints"
    return {
        "run": cfg.run_name, "method": cfg.method, "modalities": list(run.loss_fn.modalities),
        "teachers": run.teachers, "student": cfg.student,
        "params": {"student": count_parameters(run.student), "loss_heads": count_parameters(run.loss_fn)},
        "epochs": cfg.epochs, "global_step": run.state.global_step, "device": str(run.device), "amp": cfg.amp,
        "world_size": run.dist.world,
        "data": {"train": len(run.splits.train), "val": len(run.splits.val), "test": len(run.splits.test),
                 "val_source": run.splits.val_source, "excluded": run.splits.excluded},
        "val": {"best_clip_top1": run.state.best_val if run.state.best_val >= 0 else None,
                "best_epoch": run.state.best_epoch, "history": run.state.history},
        "test": test_metrics,
        "embeddings": embeddings,
        "time_s": time.perf_counter() - run.started,
        "outputs": {"run_dir": str(run.out), "config": str(run.out / "config.yaml"), "last": str(ck / "last.pt"),
                    "best": str(ck / "best.pt"), "metrics": str(run.out / "metrics.jsonl"),
                    "summary": str(run.out / "summary.json")},
    }


def finish(run: Run) -> dict[str, Any]:
    """Test with the best checkpoint, write embeddings and ``summary.json`` (rank 0)."""
    summary: dict[str, Any] = {}
    if run.dist.main:
        best = load_weights(run.student, run.out / "checkpoints" / "best.pt")["state"]
        # The weights' own record: after a kill between best.pt and last.pt, a resumed run that is
        # not bit-reproducible (GPU) may not redo that best, and last.pt never learnt of it.
        run.state.best_val, run.state.best_epoch = best["best_val"], best["best_epoch"]
        test_metrics = test(run)
        embeddings = _embed_after_training(run)
        summary = _summary(run, test_metrics, embeddings)
        write_json(run.out / "summary.json", summary)
        if run.tb is not None:
            run.tb.close()
        run.emit("done", summary)
    # No barrier: the other ranks have nothing left to do, and waiting for rank 0's test and
    # store-wide embedding pass could outlast the process group's timeout (DIST_TIMEOUT).
    return summary


def train(config: TrainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Train a student per ``config`` and return the run summary (empty on ranks other than 0).

    ``progress(event, data)`` receives "start", "steps" (every ``log_every`` steps: loss parts,
    lr, clips/s), "epoch" (validation), "test", "embed" and "done" (the summary).
    """
    dist_info = init_distributed(config.device)
    try:
        with _process_settings_restored():
            run = setup(config, dist_info, progress)
            fit(run)
            return finish(run)
    finally:
        shutdown_distributed(dist_info)


@contextlib.contextmanager
def _process_settings_restored() -> Iterator[None]:
    """Give back the process-wide settings a run changes (seed_everything: deterministic
    algorithms, cuDNN autotuning; torch threads), so that what the same process does next
    (extraction, retrieval, another run) is not silently slower or forced deterministic."""
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.benchmark, cudnn.deterministic, torch.get_num_threads())
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.benchmark, cudnn.deterministic = saved[2], saved[3]
        torch.set_num_threads(saved[4])


def load_student(run_dir: str | Path, checkpoint: str = "best", device: torch.device = torch.device("cpu")
                 ) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """A finished run's student from ``checkpoints/<checkpoint>.pt`` (eval mode, on ``device``),
    the run's resolved :class:`TrainConfig` (``config.yaml``) and the checkpoint payload."""
    import yaml

    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint {checkpoint!r}: choose best or last")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml; pass the --out directory of a `ccl-cache distill` run")
    try:
        saved = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: damaged ({type(exc).__name__}: {str(exc).splitlines()[0]}); restore it "
                              "from a copy or rewrite it from the run's checkpoint (its 'config')") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{cfg_path}: expected the run's settings (a mapping), got {type(saved).__name__}; "
                              "restore it from a copy or rewrite it from the run's checkpoint (its 'config')")
    config = TrainConfig.from_dict(saved)
    data = ckpt.load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")  # CPU; the weights move below
    student = build_student(config.student, int(data["num_classes"]), **config.student_options).to(device)
    student.load_state_dict(data["model"])
    return student.eval(), config, data


def embed_run(run_dir: str | Path, store: str | Path | None = None, checkpoint: str = "best",
              device: str = "auto", workers: int | None = None, run_name: str | None = None) -> dict[str, Any]:
    """(Re)write a trained run's student embeddings of every clip of ``store`` (default: the
    run's own store) from its ``best`` or ``last`` checkpoint, as ``/students/<run_name>``
    (default: the run's name)."""
    run_dir = Path(run_dir)
    dev = hardware.resolve_device(device)
    student, config, data = load_student(run_dir, checkpoint, dev)
    if run_name is not None:
        from ccl_cache.store.schema import validate_run

        validate_run(run_name)
    config = replace(config, device=str(dev), workers=config.workers if workers is None else workers,
                     amp=config.amp if dev.type == "cuda" else "off", run_name=run_name or config.run_name)
    attrs = {"method": config.method, "student": config.student, "checkpoint": checkpoint,
             "epoch": int(data["state"]["best_epoch"] if checkpoint == "best" else data["state"]["epoch"] - 1),
             "frames": config.frames, "size": config.size, "protocol": "non-overlapping windows averaged",
             "run_dir": str(run_dir.resolve())}
    check_student_run_free(store or config.store, str(config.run_name), run_dir)
    return embed_store(student, config, store or config.store, dev, attrs)


def iter_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
