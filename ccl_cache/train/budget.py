"""The plan of a training run, before it starts: clips, the teacher arrays in RAM (or read
lazily from the store when they would not fit), and the disk the run writes (its two checkpoints
and the student's embedding of every clip, written into the store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccl_cache.data import available_memory, make_splits, resolve_teachers
from ccl_cache.data.teacher_table import _RAM_SHARE
from ccl_cache.losses import LOSSES
from ccl_cache.plan import Plan, free_disk_at
from ccl_cache.students import EMBEDDING_DIM, build_student, count_parameters
from ccl_cache.train.config import TrainConfig

OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}  # state tensors per parameter: momentum; first and second moments


def training_plan(config: TrainConfig) -> Plan:
    """What ``config``'s run will take; reads the store's metadata and builds the student once on the
    CPU to count its parameters (the method's own heads are not counted)."""
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
    return Plan(
        command="distill", path=str(Path(config.out)), clips=len(splits.train) + len(splits.val) + len(splits.test),
        disk=disk, ram=ram, free_disk=free_disk_at(config.out), available_ram=available_memory(),
        ram_budget=budget if ram else None, notes=tuple(notes),
        disk_fix="write to another --out, or --no-embed (the student embeddings go into the store)",
        ram_fix="leave teachers_in_ram unset: arrays that do not fit are then read lazily from the store",
    )
