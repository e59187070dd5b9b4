"""The trainer's distillation step on a fixed batch, shared by ``bench_distill_step.py`` (CPU
time, cached vs online teacher, optimiser kernels) and ``bench_mfu.py`` (device throughput and MFU).

Both time ``ccl_cache.train.train_step`` itself; the only thing a benchmark chooses per call is
where ``batch.teachers["image"]`` comes from:

* cached (``step(False)``): a gather from an in-RAM embedding table on the device, what the data
  loader hands over;
* online (``step(True)``): what the released code of Chen et al. (CVPR 2021) does instead, a
  frozen ResNet-34 forward (eval mode, no grad, under the step's autocast) on one frame of the
  clip, the same random frame index for the whole batch.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from ccl_cache.losses import Batch, build_loss
from ccl_cache.students import build_student, count_parameters
from ccl_cache.teachers import build_teacher
from ccl_cache.train import Amp, TrainConfig, build_optimizer, train_step

TEACHER_DIM = 512  # the paper's teachers (CNN14-emb512, ResNet-34) embed in 512 dimensions
TABLE_ROWS = 1024


def forward_gflop(model: nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOPs of ``model`` on ``x`` (a multiply-add = 2 FLOPs), counted by
    ``FlopCounterMode``; the count depends on the shapes only, so the CPU in float32 will do."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() / 1e9


def image_teacher(size: int) -> nn.Module:
    """The paper's frozen image teacher with random weights (timing and FLOPs only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no weights given": deliberate here
        return build_teacher("resnet34", None, image_size=size).eval()


def make_training_step(student_name: str, classes: int, batch: int, frames: int, size: int, *,
                       device: torch.device = torch.device("cpu"), modalities: tuple[str, ...] = ("audio", "image"),
                       amp: Amp = Amp(), channels_last: bool = False, compile_model: bool = False,
                       config: TrainConfig = TrainConfig(store="unused"),
                       ) -> tuple[Callable[[bool], None], dict[str, int]]:
    """``(step, info)``: ``step(online)`` runs one training step (see the module docstring);
    ``info`` holds the parameter counts. Every eighth clip has no audio (as in VGGSound), so the
    losses' masked path is timed too. ``compile_model``: ``torch.compile`` of the student's
    forward, as ``distill --compile``."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    student = build_student(student_name, classes).to(device)
    teacher = image_teacher(size).to(device)
    if channels_last:
        student = student.to(memory_format=torch.channels_last_3d)
        teacher = teacher.to(memory_format=torch.channels_last)
    labels = torch.arange(batch) % classes
    loss_fn = build_loss("ccl", num_classes=classes, student_dim=student.embedding_dim,
                         teacher_dims={m: TEACHER_DIM for m in modalities}, modalities=modalities,
                         dataset_size=batch, labels=labels).to(device)
    optimizer, _ = build_optimizer(student, loss_fn, config)
    model = torch.compile(student) if compile_model else student
    video = torch.randn(batch, 3, frames, size, size, generator=gen).to(device)
    if channels_last:
        video = video.contiguous(memory_format=torch.channels_last_3d)
    tables = {m: torch.randn(TABLE_ROWS, TEACHER_DIM, generator=gen).to(device) for m in modalities}
    rows = torch.randint(0, TABLE_ROWS, (batch,), generator=gen).to(device)
    has_audio = torch.ones(batch, dtype=torch.bool)
    has_audio[::8] = False
    masks = {m: (has_audio if m == "audio" else torch.ones(batch, dtype=torch.bool)).to(device) for m in modalities}
    labels, index = labels.to(device), torch.arange(batch, device=device)

    def step(online: bool) -> None:
        teachers = {m: table[rows] for m, table in tables.items()}
        if online:
            frame = int(torch.randint(0, frames, (1,), generator=gen))  # host RNG: no device sync
            with torch.no_grad(), amp.autocast():
                teachers["image"] = teacher(video[:, :, frame]).float()
        train_step(model, loss_fn, optimizer, Batch(video=video, label=labels, index=index, teachers=teachers,
                                                    masks=masks), amp=amp)

    return step, {"student_params": count_parameters(student), "teacher_params": count_parameters(teacher)}
