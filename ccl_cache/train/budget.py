"""The plan of a training run, before it starts: clips, the teacher arrays in RAM (or read
lazily from the store when they would not fit), the disk the run writes (its two checkpoints
and the student's embedding of every clip, written into the store), and the time of its
training steps from a short timed probe (:func:`probe_training`: a few steps of the real student,
loss and data path on the run's device)."""

from __future__ import annotations

import gc
import time
from pathlib import Path
import numpy as np
import torch

from ccl_cache.data import available_memory, make_splits, resolve_teachers
from ccl_cache.data.teacher_table import _RAM_SHARE
from ccl_cache.losses import LOSSES
from ccl_cache.plan import Clock, Plan, Probe, free_disk_at, with_probe
from ccl_cache.students import EMBEDDING_DIM, build_student, count_parameters
from ccl_cache.train.config import TrainConfig

OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}  # state tensors per parameter: momentum; first and second moments
# Training steps the probe runs, and how many of them warm up untimed (allocations, kernel selection
# and cuDNN autotuning, the optimiser's state, the store's handles): in a fresh process the second
# step on the CPU still took several times a steady one. 0 steps: not timed (--no-probe).
PROBE_STEPS = 4
PROBE_WARMUP = 2


def training_plan(config: TrainConfig, probe_steps: int = PROBE_STEPS, clock: Clock = time.perf_counter) -> Plan:
    """What ``config``'s run will take; reads the store's metadata and builds the student once on the
    CPU to count its parameters (the method's own heads are not counted); when it fits and
    ``probe_steps`` > 0, times that many training steps (:func:`probe_training`) with ``clock``."""
    from ccl_cache.store import open_store

    required = LOSSES.get(config.method).required(tuple(t.split("/", 1)[0] for t in config.teachers))
    with open_store(config.store, "r") as store:
        teachers = resolve_teachers(store, [t for t in config.teachers if t.split("/", 1)[0] in required])
        splits = make_splits(store, teachers, config.val_fraction, config.seed, config.exclude_gaps)
        n, classes = store.n, len(store.classes)
        ram = {}
        for key in teachers.values():
            arrays = store.teacher(key)
            slots = int(np.prod(arrays.embedding.shape[1:-1])) if arrays.embedding.ndim > 2 else 1
            ram[f"{key} (float32)"] = 4 * int(np.prod(arrays.embedding.shape)) + n * slots * (16 + 1)
    student = build_student(config.student, classes, **config.student_options)
    weights = 4 * count_parameters(student) * (1 + OPTIMIZER_SLOTS.get(config.optimizer, 2))
    disk = {"checkpoints (last, best)": 2 * weights}
    if config.write_embeddings:
        disk["student embeddings in the store"] = 4 * n * EMBEDDING_DIM
    budget = int(_RAM_SHARE * available_memory())
    notes = [f"train {len(splits.train)}, val {len(splits.val)} ({splits.val_source}), test {len(splits.test)} clips",
             "time: the progress line shows clips/s and the loader wait from the first steps on"]
    forced = config.teachers_in_ram is True
    if sum(ram.values()) > budget and not forced:
        notes.append("the teacher arrays do not fit in half the available memory: they are read lazily from the "
                     "store (slower per item, no more RAM)")
        ram = {}
    if not probe_steps:
        notes.append("time: not probed (--no-probe)")
    plan = Plan(
        command="distill", path=str(Path(config.out)), clips=len(splits.train) + len(splits.val) + len(splits.test),
        disk=disk, ram=ram, free_disk=free_disk_at(config.out), available_ram=available_memory(),
        ram_budget=budget if ram else None, notes=tuple(notes),
        disk_fix="write to another --out, or --no-embed (the student embeddings go into the store)",
        ram_fix="leave teachers_in_ram unset: arrays that do not fit are then read lazily from the store",
    )
    if not probe_steps:
        return plan
    return with_probe(plan, lambda: probe_training(config, splits.train, teachers, classes, probe_steps, clock),
                      "time: not estimated")


def probe_training(config: TrainConfig, train_rows: np.ndarray, teachers: dict[str, str], classes: int,
                   steps: int = PROBE_STEPS, clock: Clock = time.perf_counter) -> Probe:
    """The time of the run's training steps, from ``steps`` steps of batch_size clips of the first
    training rows, as the trainer takes them: the loader's work (reading, decoding and cropping the
    windows, the teacher lookups: the workers' share) in this process, then on the run's device
    the batch finished (``decode="device"``) and one training step of the real student and loss.
    The first ``PROBE_WARMUP`` steps warm up (fewer when ``steps`` is small: one step at least is
    timed); the others are timed. The teacher embeddings are read from the store
    (not loaded whole), ``torch.compile`` is left out, the weights and the store stay as they were."""
    from ccl_cache import hardware
    from ccl_cache.data import ClipDataset, FrameCacheIndex, collate_clips, resolve_decode
    from ccl_cache.store import open_store
    from ccl_cache.train.config import resolve_config
    from ccl_cache.train.loop import _model
    from ccl_cache.train.step import Amp, build_optimizer, to_batch, train_step

    device = hardware.resolve_device(config.device)
    cfg = resolve_config(config, device)
    with open_store(cfg.store, "r") as store:
        cache = None if cfg.source == "file" else FrameCacheIndex.load(store)
    decode = resolve_decode(cfg.decode, device, cache)
    warmup = min(PROBE_WARMUP, max(1, steps) - 1)  # at least one step timed
    batch = cfg.batch_size
    rows = np.resize(np.asarray(train_rows, np.int64), max(steps, 1) * batch)  # wraps round a tiny split
    dataset = ClipDataset(cfg.store, rows, teachers=teachers, spec=cfg.clip_spec, train=True, seed=cfg.seed,
                          source=cfg.source, teachers_in_ram=False, decode=decode)
    rng_state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)  # as the run will (train.loop.setup): it changes a step's time a lot
    try:
        student, loss_fn = _model(cfg, classes, dataset, device)
        optimizer, _ = build_optimizer(student, loss_fn, cfg)
        amp = Amp(cfg.amp, device.type)
        scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        timed = {"loader": 0.0, "device decode": 0.0, "step": 0.0}
        for step in range(max(steps, 1)):
            marks = [clock()]
            data = collate_clips(dataset.__getitems__([(0, i) for i in range(step * batch, (step + 1) * batch)]))
            marks.append(clock())
            data = dataset.finish(data, device)
            marks.append(clock())
            result = train_step(student, loss_fn, optimizer, to_batch(data, device, cfg.channels_last), amp=amp,
                                scaler=scaler, grad_clip=cfg.grad_clip)
            float(result.total.detach())  # the device's work done before the clock reads
            marks.append(clock())
            if step >= warmup:
                for name, a, b in zip(timed, marks, marks[1:]):
                    timed[name] += b - a
    finally:
        dataset.reader.close()  # no handle left open on the store (HDF5 locks) for the run itself
        torch.random.set_rng_state(rng_state)
        torch.set_num_threads(threads)
        del dataset
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    n = max(1, steps) - warmup
    per_step = {name: seconds / n for name, seconds in timed.items() if name != "device decode" or decode == "device"}
    per_epoch = len(train_rows) // batch if len(train_rows) >= batch else 1
    return Probe("step", n, per_step, ("loader",), int(cfg.workers or 0), per_epoch * cfg.epochs,
                 leaves_out="validation, the test and the embedding pass; torch.compile's compilation")
