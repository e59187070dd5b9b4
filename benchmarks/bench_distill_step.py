"""A distillation step with cached teacher embeddings vs the paper's online image teacher; and
train-time embedding lookups vs a plain in-RAM numpy gather.

Step: the released code of Chen et al. (CVPR 2021) runs its image teacher (torchvision
ResNet-34, frozen, eval mode) on one frame of the augmented student clip every step — the same
random frame index for the whole batch — while ccl-cache reads that embedding from the store.
Both variants here train the same student with the same CCL loss (image modality) on the same
batch on the same device; the only difference is where ``batch.teachers["image"]`` comes from:

* ``cached``: gathered from an in-RAM embedding table (what the data loader hands over);
* ``online``: ``resnet34(video[:, :, t])`` under ``torch.no_grad()`` inside the step.

The two variants alternate step by step (A B A B ...), so drifting load on a shared machine hits
both alike. Per-step CPU time of this process (``time.process_time``) and wall time are reported;
``speedup`` = online / cached CPU time. Teacher weights are random (timing only). With
``--cpu-bf16`` the cached step is also timed in float32 against bfloat16 autocast +
``channels_last_3d`` (``cpu_bf16``; skipped on CPUs without bfloat16 units). ``optimizer``: the
cached step with the per-tensor optimiser loop vs the fused kernel (``TrainConfig.fused_optimizer``),
for SGD and AdamW, interleaved the same way.

Lookups: per training item, ``ClipDataset`` asks each ``TeacherTable`` (loaded from a real
store, in RAM) for the embedding aligned with the item's window (clip level for audio; a frame
inside the window for image). Measured as rows/s through ``TeacherTable.lookup`` (one item at a
time, as ``__getitem__`` does) and ``TeacherTable.lookup_batch`` (one DataLoader batch, as
``ClipDataset.__getitems__`` does), against ``emb[rows]`` / ``emb[rows, slots]`` on a numpy
array of the same data; ``lookup_batch_lazy`` is the fallback for tables too big for RAM
(embedding rows read from the store per batch). Prints one JSON document::

    python benchmarks/bench_distill_step.py --student r21d_ccl --batch 4 --steps 3 > step.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from _common import print_json_in_workdir
from _step import TEACHER_DIM, forward_gflop, image_teacher, make_training_step
from ccl_cache import hardware
from ccl_cache.data import TeacherTable
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store, open_store
from ccl_cache.students import build_student
from ccl_cache.train import Amp, TrainConfig

CLASSES = 8
DIM = TEACHER_DIM


# --------------------------------------------------------------------------------------------
# The step


def make_step(args: argparse.Namespace, amp: Amp = Amp(), channels_last: bool = False,
              config: TrainConfig = TrainConfig(store="unused")) -> tuple[Callable[[bool], None], dict[str, Any]]:
    """A closure running one training step (online teacher or cached embeddings) and model info."""
    return make_training_step(args.student, CLASSES, args.batch, args.frames, args.size, modalities=("image",),
                              amp=amp, channels_last=channels_last, config=config)


def step_times(step: Callable[[bool], None], steps: int) -> dict[str, Any]:
    """Interleaved cached/online steps after one warm-up of each; CPU and wall seconds per step."""
    step(False), step(True)
    cpu = {False: 0.0, True: 0.0}
    wall = {False: 0.0, True: 0.0}
    for _ in range(steps):
        for online in (False, True):
            c, w = time.process_time(), time.perf_counter()
            step(online)
            cpu[online] += time.process_time() - c
            wall[online] += time.perf_counter() - w
    out = {name: {"cpu_s_per_step": cpu[flag] / steps, "wall_s_per_step": wall[flag] / steps}
           for name, flag in (("cached", False), ("online", True))}
    out["speedup"] = cpu[True] / max(cpu[False], 1e-9)
    out["speedup_wall"] = wall[True] / max(wall[False], 1e-9)
    return out


def cpu_bf16_times(args: argparse.Namespace) -> dict[str, Any]:
    """The cached step in float32 vs bfloat16 autocast + channels_last_3d (``distill --amp bf16
    --channels-last`` on a CPU with bfloat16 units), interleaved like :func:`step_times`."""
    if not hardware.cpu_has_bf16():
        return {"skipped": "this CPU has no bfloat16 units (distill refuses --amp bf16 here)"}
    plain, _ = make_step(args)
    fast, _ = make_step(args, Amp("bf16", "cpu"), channels_last=True)
    times = step_times(lambda bf16: (fast if bf16 else plain)(False), args.steps)  # "online" = bf16 here
    fp32, bf16 = times["cached"]["cpu_s_per_step"], times["online"]["cpu_s_per_step"]
    return {"fp32_cpu_s_per_step": fp32, "bf16_channels_last_cpu_s_per_step": bf16, "speedup": fp32 / bf16}


def optimizer_times(args: argparse.Namespace) -> dict[str, Any]:
    """The cached step with the per-tensor optimiser loop vs the fused kernel, per optimiser."""
    out: dict[str, Any] = {}
    for name in ("sgd", "adamw"):
        loop, _ = make_step(args, config=TrainConfig(store="unused", optimizer=name, fused_optimizer=False))
        fused, _ = make_step(args, config=TrainConfig(store="unused", optimizer=name, fused_optimizer=True))
        times = step_times(lambda use_fused: (fused if use_fused else loop)(False), args.steps)  # "online" = fused
        out[name] = {"loop_cpu_s_per_step": times["cached"]["cpu_s_per_step"],
                     "fused_cpu_s_per_step": times["online"]["cpu_s_per_step"],
                     "speedup": 1 / max(times["speedup"], 1e-9)}
    return out


def teacher_share(args: argparse.Namespace) -> dict[str, float]:
    """Forward FLOPs of the teacher (one frame per clip) and the student (whole clip), per clip."""
    student = forward_gflop(build_student(args.student, CLASSES), torch.randn(1, 3, args.frames, args.size, args.size))
    teacher = forward_gflop(image_teacher(args.size), torch.randn(1, 3, args.size, args.size))
    # fwd + bwd of the student ~ 3x its forward; the teacher only runs forward
    return {"student_fwd_gflop_per_clip": student, "teacher_fwd_gflop_per_clip": teacher,
            "flop_bound_speedup": (3 * student + teacher) / (3 * student)}


# --------------------------------------------------------------------------------------------
# Lookups


def make_tables(folder: Path, rows: int, frames: int, seconds: float) -> tuple[Path, dict[str, np.ndarray]]:
    """A store with a clip-level audio teacher and a frame-level image teacher (uniform frames)."""
    manifest = Manifest.from_records(ClipRecord(id=f"c{i}", path=f"/v/{i}.mp4", label="a") for i in range(rows))
    path = folder / "lookup.zarr"
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((rows, DIM), dtype=np.float32).astype(np.float16)
    image = rng.standard_normal((rows, frames, DIM), dtype=np.float32).astype(np.float16)
    centres = (np.arange(frames) + 0.5) * seconds / frames
    times = np.broadcast_to(np.stack([centres, centres], -1), (rows, frames, 2)).copy()
    store = create_store(path, manifest, chunk_rows=1024)
    store.create_teacher("audio/bench", DIM, None, "float16", {"arch": "bench"})
    store.create_teacher("image/bench", DIM, frames, "float16", {"arch": "bench"})
    for part in store.shard_slices():
        n = part.stop - part.start
        store.write_rows("audio/bench", part, audio[part], np.tile([[0.0, seconds]], (n, 1)), np.ones(n, bool))
        store.write_rows("image/bench", part, image[part], times[part], np.ones((n, frames), bool))
    store.close()
    return path, {"audio": audio.astype(np.float32), "image": image.astype(np.float32)}


def lookup_rates(store_path: Path, plain: dict[str, np.ndarray], batch: int, batches: int,
                 seconds: float, span: float) -> dict[str, Any]:
    """Rows/s of the dataset's lookup paths and of a numpy gather, per modality."""
    rng = np.random.default_rng(1)
    rows = rng.integers(0, len(plain["audio"]), (batches, batch))
    starts = rng.uniform(0, seconds - span, (batches, batch))
    windows = np.stack([starts, starts + span], -1)  # (batches, batch, 2) file seconds
    draws = rng.random((batches, batch))  # the items' uniform draws (training: a random frame)
    out: dict[str, Any] = {}
    with open_store(store_path) as store:
        for modality, key in (("audio", "audio/bench"), ("image", "image/bench")):
            table = TeacherTable.load(store, key, in_ram=True)
            emb = plain[modality]
            slots = rng.integers(0, emb.shape[1], (batches, batch)) if emb.ndim == 3 else None
            gather = (lambda i: emb[rows[i]]) if slots is None else (lambda i: emb[rows[i], slots[i]])
            per_item = lambda i: [table.lookup(int(r), (w[0], w[1]), rng)  # noqa: E731
                                  for r, w in zip(rows[i], windows[i])]
            batched = lambda i: table.lookup_batch(rows[i], windows[i], draws[i])  # noqa: E731
            lazy_table = TeacherTable.load(store, key, in_ram=False)  # the fallback when RAM is short
            lazy = lambda i: lazy_table.lookup_batch(rows[i], windows[i], draws[i], store)  # noqa: E731
            rates = {name: _rows_per_cpu_s(fn, batches, batch)
                     for name, fn in (("numpy_gather", gather), ("lookup", per_item), ("lookup_batch", batched),
                                      ("lookup_batch_lazy", lazy))}
            rates["lookup_vs_gather"] = rates["lookup"] / rates["numpy_gather"]
            rates["lookup_batch_vs_gather"] = rates["lookup_batch"] / rates["numpy_gather"]
            rates["lookup_batch_lazy_vs_gather"] = rates["lookup_batch_lazy"] / rates["numpy_gather"]
            out[modality] = rates
    return out


def _rows_per_cpu_s(fn: Callable[[int], Any], batches: int, batch: int) -> float:
    fn(0)  # warm-up
    began = time.process_time()
    for i in range(batches):
        fn(i)
    return batches * batch / max(time.process_time() - began, 1e-9)


# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    step, info = make_step(args)
    result: dict[str, Any] = {"benchmark": "distill_step", "config": {k: v for k, v in vars(args).items()
                                                                       if k != "workdir"}, **info}
    result["step"] = step_times(step, args.steps)
    result["step"].update(teacher_share(args))
    result["optimizer"] = optimizer_times(args)
    if args.cpu_bf16:
        result["cpu_bf16"] = cpu_bf16_times(args)
    store, plain = make_tables(folder, args.rows, args.table_frames, 10.0)
    span = args.frames / 25.0  # a training window's duration at 25 fps
    result["lookups"] = {f"batch_{b}": lookup_rates(store, plain, b, args.lookup_batches, 10.0, span)
                         for b in args.lookup_batch}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="r21d_ccl", help="student architecture (ccl_cache.students)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: per-core figures, steadiest on a shared machine)")
    parser.add_argument("--rows", type=int, default=10000, help="rows of the lookup store")
    parser.add_argument("--table-frames", type=int, default=8, help="cached image frames per clip")
    parser.add_argument("--lookup-batch", type=int, nargs="+", default=[16, 256], help="rows per lookup batch")
    parser.add_argument("--lookup-batches", type=int, default=20)
    parser.add_argument("--workdir", default=None, help="keep the lookup store here (default: a temp dir)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="also time the cached step in float32 vs bf16 autocast + channels_last_3d (CPU)")
    args = parser.parse_args(argv)
    print_json_in_workdir(lambda folder: run(args, folder), args.workdir, "bench_step_")


if __name__ == "__main__":
    main()
