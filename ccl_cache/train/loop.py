"""The run: setup, epochs, validation, checkpoints, then the test, embeddings and summary.

Outputs in ``out``: ``config.yaml`` (resolved), ``checkpoints/{last,best}.pt``,
``metrics.jsonl``, ``summary.json``, optional ``tb/`` (TensorBoard, when installed), and the
student's embedding of every clip of the store under ``/students/<run>/``. Pinned memory,
persistent prefetching workers and optional ``torch.compile`` of the training forward keep the
device fed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ccl_cache import hardware
from ccl_cache.data import (
    ClipDataset, EpochSampler, FrameCacheIndex, collate_clips, make_loader, make_splits, resolve_decode, resolve_teachers,
)
from ccl_cache.errors import CclCacheError, ConfigError, StoreMismatchError
from ccl_cache.fileio import atomic_path, save_config, write_json
from ccl_cache.losses import LOSSES, DistillLoss, build_loss
from ccl_cache.students import build_student, count_parameters
from ccl_cache.train import checkpoint as ckpt
from ccl_cache.train.config import RESUME_FREE, TrainConfig, resolve_config
from ccl_cache.train.distributed import init_distributed, shutdown_distributed, wrap_distributed
from ccl_cache.train.embed import check_student_run_free, embed_store, load_weights
from ccl_cache.train.evaluate import run_windows, test, window_loader
from ccl_cache.train.step import Amp, StepMeter, build_optimizer, seed_everything, to_batch, train_step

log = logging.getLogger(__name__)


# ============================================================================================
# The run


Progress = Callable[[str, Mapping[str, Any]], None]
"""``progress(event, data)``; events: start, steps, epoch, test, embed, done."""


@dataclass
class Run:
    """Everything one training process holds (built by :func:`setup`)."""

    config: TrainConfig
    dist: hardware.Launch
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
    generation: dict[str, Any] = field(default_factory=dict)  # the store's, when the run read it
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
        log.info("epoch %d step %d/%d lr %.3g %.1f clips/s (loader wait %.0f%%) %s", data["epoch"] + 1, data["step"],
                 data["steps"], data["lr"], data["clips_per_s"], 100 * data["loader_wait"], parts)
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


def _data(config: TrainConfig, device: torch.device
          ) -> tuple[Any, dict[str, str], list[str], ClipDataset, dict[str, Any], str]:
    """Splits, teacher keys (those the loss needs), classes, the training dataset, the store's
    generation as read (compared before the embeddings are written back) and where the training
    windows are decoded (``config.decode`` resolved: cpu or device)."""
    from ccl_cache.store import open_store

    required = LOSSES.get(config.method).required(tuple(t.split("/", 1)[0] for t in config.teachers))
    with open_store(config.store, "r") as store:
        store.check_no_writer("distill")  # it would train on arrays being written or replaced
        wanted = [t for t in config.teachers if t.split("/", 1)[0] in required]
        teachers = resolve_teachers(store, wanted)
        splits = make_splits(store, teachers, config.val_fraction, config.seed, config.exclude_gaps)
        classes = store.classes
        generation = store.generation(sorted(teachers.values()))
        decode = resolve_decode(config.decode, device, None if config.source == "file" else FrameCacheIndex.load(store))
    train_set = ClipDataset(config.store, splits.train, teachers=teachers, spec=config.clip_spec, train=True,
                            seed=config.seed, source=config.source, teachers_in_ram=config.teachers_in_ram,
                            decode=decode)
    return splits, teachers, classes, train_set, generation, decode


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


def setup(config: TrainConfig, dist_info: hardware.Launch, progress: Progress | None) -> Run:
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
    splits, teachers, classes, train_set, generation, decode = _data(config, device)
    config = replace(config, decode=decode)  # config.yaml says where the windows were decoded
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
    # Pinned batches (encoded ones too: EncodedClips.pin_memory) and `prefetch` batches per worker
    # in flight keep the device fed; with decode="device" the workers only read and crop-draw.
    loader = make_loader(train_set, batch_sampler=torch.utils.data.BatchSampler(sampler, config.batch_size, drop_last),
                         workers=config.workers, pin_memory=device.type == "cuda", prefetch=config.prefetch,
                         collate=collate_clips)
    loader.generator = torch.Generator().manual_seed(config.seed)  # keep the global RNG untouched
    run = Run(config, dist_info, device, Amp(config.amp, device.type), out, splits, teachers, classes, train_set,
              sampler, loader, student, model, loss_fn, optimizer, scheduler, scaler, ckpt.TrainState(),
              MetricsLog(out / "metrics.jsonl", dist_info.main), progress or _quiet, generation=generation)
    if config.resume and (out / "checkpoints" / "last.pt").exists():
        _resume(run)
    elif dist_info.main:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    if dist_info.main:
        save_config(config, out / "config.yaml")
    run.tb = _tensorboard(config, out, dist_info.main)
    return run


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
        run.tb.add_scalar("train/loader_wait", window["loader_wait"], run.state.global_step)
        run.tb.add_scalar("train/device_decode", window["device_decode"], run.state.global_step)
    run.emit("steps", record)


def train_epoch(run: Run, epoch: int) -> None:
    """One epoch (or its rest, after a mid-epoch resume) of :func:`train_step`."""
    run.student.train()
    run.loss_fn.train()
    run.sampler.set_epoch(epoch, run.state.step_in_epoch * run.config.batch_size)
    steps = run.steps_per_epoch
    meter, cfg = StepMeter(), run.config
    batches = iter(run.loader)
    while True:
        began = time.perf_counter()
        data = next(batches, None)
        waited = time.perf_counter() - began
        if data is None:
            meter.add_wait(waited)
            break
        # decode="device": the batch's frames are decoded on the device here (the main thread's
        # share of the data pipeline, counted as loader wait: the step cannot start before it).
        encoded = not isinstance(data["video"], torch.Tensor)
        data = run.train_set.finish(data, run.device)
        done = time.perf_counter()
        meter.add_wait(done - began, decoding=done - began - waited if encoded else 0.0)
        batch = to_batch(data, run.device, cfg.channels_last)
        result = train_step(run.model, run.loss_fn, run.optimizer, batch, amp=run.amp, scaler=run.scaler,
                            grad_clip=cfg.grad_clip, world=run.dist.world)
        meter.add(result, len(batch.label), batch)
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
        "decode": cfg.decode,
    })
    for epoch in range(run.state.epoch, cfg.epochs):
        train_epoch(run, epoch)
        _end_epoch(run, epoch)


# ============================================================================================
# After training: test, embeddings, summary


def _embed_after_training(run: Run) -> dict[str, Any] | None:
    if not run.config.write_embeddings:
        return None
    attrs = {"method": run.config.method, "student": run.config.student, "checkpoint": "best",
             "epoch": run.state.best_epoch, "frames": run.config.frames, "size": run.config.size,
             "protocol": "non-overlapping windows averaged", "run_dir": str(run.out.resolve())}
    _close_loaders(run)
    try:
        info = embed_store(run.student, run.config, run.config.store, run.device, attrs,
                           expect_generation=run.generation)
    except Exception as exc:  # noqa: BLE001 - the run is trained and tested: report, do not lose it
        # Another writer holds the store, a file damaged since extraction (through loader workers
        # a MediaError arrives as a RuntimeError), a full disk: `ccl-cache embed` redoes this step.
        # Teachers replaced under the run: the run itself is stale, only retraining helps.
        log.error("could not write the student embeddings: %s", exc, exc_info=not isinstance(exc, CclCacheError))
        fix = (f"train again on the new store: ccl-cache distill {run.config.store} ... --out <new folder>"
               if isinstance(exc, StoreMismatchError) else f"ccl-cache embed {run.out} --store {run.config.store}")
        return {"written": False, "error": str(exc), "fix": fix}
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
        "decode": cfg.decode, "world_size": run.dist.world,
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


def iter_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
