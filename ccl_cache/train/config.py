"""What a training run depends on: :class:`TrainConfig`, its resolution and the option helpers.

:class:`TrainConfig` is saved, resolved (device, precision, milestones, run name: see
:func:`resolve_config`), as the run's ``config.yaml``; a resume compares it field by field with the
checkpoint's, except for ``RESUME_FREE``.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ccl_cache import hardware
from ccl_cache.data import DECODES, ClipSpec, default_workers
from ccl_cache.errors import ConfigError
from ccl_cache.losses import LOSSES, MODALITIES
from ccl_cache.resources import check_count_fits
from ccl_cache.students import STUDENTS
from ccl_cache.typecheck import expected_type

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("auto", "cache", "file")
# Fields that may change between a run and its resume: they do not change the trajectory.
# Named bundles of settings (``distill --preset``); options given explicitly win over them.
# "paper": the paper's setting, the TrainConfig defaults (R(2+1)D student, 16x112², SGD 1e-3: a
# GPU job). "small": the demo's setting, which learns within minutes on a CPU (docs/results.md#the-demo).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"student": "small", "student_options": {"width": 16}, "batch_size": 8, "optimizer": "adamw",
              "lr": 3e-3, "frames": 8, "size": 48},
}

RESUME_FREE = frozenset({
    "resume", "workers", "prefetch", "device", "log_every", "save_every", "val_every", "out",
    "teachers_in_ram", "write_embeddings", "tensorboard", "eval_batch_size", "test_max_windows", "source",
    "threads", "compile", "decode",
})
# Fields added after configs were first saved, with the behaviour of the code before them: an old
# config.yaml or checkpoint then still describes, and resumes, exactly the run it made.
LEGACY_VALUES: dict[str, Any] = {"fused_optimizer": False}


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
    ``decode``: where windows of a JPEG frame cache are decoded (:data:`ccl_cache.data.DECODES`):
    ``auto`` on the device with CUDA (batched nvJPEG), else in the loader's workers; ``cpu``
    always in the workers; ``device`` always after the loader, on the training device (the
    CPU decoder in the main process on a CPU run); saved resolved; free to change on resume.
    ``threads``: torch intra-op threads of this process (None: torch's default, one per core).
    Small students on a shared CPU run far faster with 1 (measured: an epoch of the ``small``
    student took 43 s with 2 threads and 6.7 s with 1 on a loaded 2-core machine: the thread pool
    spent its time synchronising). ``compile``: ``torch.compile`` the
    training forward (the first step pays the compilation); free to change on resume. ``fused_optimizer``: the optimiser's fused kernel, one pass
    over every parameter (faster: ``benchmarks/bench_distill_step.py``, its ``optimizer`` entry;
    with fp16 on CUDA the
    GradScaler's inf check then needs no host sync). The fused kernels round differently from
    the per-tensor loop (a float32 ulp here and there), so runs made before the option existed
    are reproduced with ``fused_optimizer=False`` - which is what configs saved without the
    field load as. ``exclude_gaps``: leave out the training clips whose gap score (``ccl-cache
    gaps``, stored in the store) is above this threshold (None: keep them all).
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
    decode: str = "auto"
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
    exclude_gaps: float | None = None

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
            (self.decode in DECODES, f"decode {self.decode!r}: choose one of {DECODES}"),
            ((self.workers is None or self.workers >= 0) and self.prefetch >= 1,
             f"workers={self.workers} (>= 0, or None: min(4, CPU cores)), prefetch={self.prefetch} (>= 1)"),
            (self.val_every >= 1 and self.log_every >= 1 and self.save_every >= 0, "val_every, log_every >= 1; save_every >= 0"),
            (self.val_clips >= 1, f"val_clips={self.val_clips}: need at least 1"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"eval_batch_size={self.eval_batch_size}: need at least 1 (or None: batch_size)"),
            (self.test_max_windows is None or self.test_max_windows >= 1,
             f"test_max_windows={self.test_max_windows}: need at least 1 (or None: every window)"),
            (self.threads is None or self.threads >= 1, f"threads={self.threads}: need at least 1 (or None: torch's default)"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip={self.grad_clip}: a positive norm or None"),
            (self.exclude_gaps is None or math.isfinite(self.exclude_gaps),
             f"exclude_gaps={self.exclude_gaps}: a finite gap score threshold (clips above it are left out of "
             "training; see the scores with `ccl-cache gaps STORE`), or None"),
            (bool(self.teachers) or not LOSSES.get(self.method).uses_teachers,
             f"method {self.method!r} distils from teachers: pass --teachers audio, image or audio,image"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        default_workers(self.workers)  # the loader's bound on its processes, before the data loads
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
        self._check_memory()

    def _check_memory(self) -> None:
        """Refuse a batch of clips (training, evaluation) or a video's validation windows that
        cannot fit in memory even once, before a loader allocates it (see ccl_cache.resources)."""
        frame = 3 * self.size * self.size * 4
        check_count_fits("frames", self.frames, 2 * frame, f"frames of a 2-clip batch at {self.size}x{self.size} "
                         "float32", fix="lower --size")
        clip = self.frames * frame  # one float32 clip tensor (3, T, S, S)
        item = f"clips of {self.frames}x{self.size}x{self.size} float32"
        fix = "lower --frames or --size"
        check_count_fits("batch_size", self.batch_size, clip, item, low=2, fix=fix)
        if self.eval_batch_size is not None:  # windows per evaluation forward (default: batch_size)
            check_count_fits("eval_batch_size", self.eval_batch_size, clip, item, fix=fix)
        check_count_fits("val_clips", self.val_clips, clip, item, fix=fix)  # one video's windows, stacked

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
