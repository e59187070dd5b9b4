"""Training input throughput: decoding the mp4 files vs the store's frame cache vs the model.

Chen et al. (CVPR 2021) train on 16-frame 112² clips; whether training is input-bound depends on
how fast clips arrive compared with how fast the student consumes them. This measures, in one
run and on the same synthetic H.264 videos (one ``ccl-cache synth`` dataset, no teachers):

* ``file``: ``ClipDataset(source="file")`` through the trainer's DataLoader — PyAV seeks and
  decodes each window from its mp4 (the baseline);
* ``cache``: the same dataset reading uint8 frames from ``/frames`` after ``build_frame_cache``
  (its build time is reported too);
* ``model``: optimiser steps per second of a student (``small`` and torchvision's
  ``r2plus1d_18``) on random clips of the same shape, forward + backward + SGD, batch 8.

Everything runs on the CPU. The JSON on stdout gives clips/s for each and ratios against the
file loader measured in the same run (``cache_vs_file`` > 1: the cache is faster; a model's
``model_vs_file`` < 1: decoding keeps up with that model).

    python benchmarks/bench_loader.py --clips 32 --workers 0 2 > loader.json
    python benchmarks/bench_loader.py --quick      # seconds: 8-frame 64² clips, small model only
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from _common import print_json_in_workdir
from ccl_cache.data import ClipDataset, ClipSpec, EpochSampler, make_loader
from ccl_cache.extract import FrameCacheConfig, build_frame_cache
from ccl_cache.losses import Batch, build_loss
from ccl_cache.store import create_store
from ccl_cache.students import build_student
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.train import TrainConfig, build_optimizer, train_step


def make_store(folder: Path, clips: int, video_size: int, duration: float) -> Path:
    """A store over ``clips`` synthetic mp4 files (4 classes), without teachers."""
    per_class = max(1, clips // 4)
    manifest = generate(folder / "videos", SynthConfig(classes=4, clips_per_class=per_class, duration=duration,
                                                        size=video_size, pretrain_clips_per_class=0,
                                                        val_fraction=0.0, test_fraction=0.0), workers=2)
    store = folder / "bench.zarr"
    create_store(store, manifest).close()
    return store


def loader_rate(store: Path, spec: ClipSpec, source: str, workers: int, batch: int, epochs: int) -> dict[str, Any]:
    """Clips/s of the training loader (augmentation included) over ``epochs`` passes."""
    from ccl_cache.store import open_store

    with open_store(store) as s:
        rows = list(range(s.n))
    ds = ClipDataset(store, rows, spec=spec, source=source)
    sampler = EpochSampler(len(ds), seed=0)
    loader = make_loader(ds, batch_sampler=torch.utils.data.BatchSampler(sampler, batch, drop_last=False),
                         workers=workers)
    clips, first, warm = 0, 0.0, 0.0
    started = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for data in loader:
            if not first:  # worker start-up + first batch: reported apart, not in the rate
                first = warm = time.perf_counter() - started
                continue
            clips += len(data["label"])
    seconds = time.perf_counter() - started - warm
    ds.reader.close()
    return {"clips_per_s": clips / seconds, "clips": clips, "seconds": seconds, "first_batch_s": first,
            "workers": workers}


def model_rate(name: str, spec: ClipSpec, batch: int, steps: int, options: dict[str, Any]) -> dict[str, Any]:
    """Clips/s of forward + backward + SGD step of student ``name`` (CE loss), after one warm-up."""
    torch.manual_seed(0)
    student = build_student(name, 4, **options)
    loss_fn = build_loss("baseline", num_classes=4, student_dim=student.embedding_dim, teacher_dims={},
                         modalities=(), dataset_size=batch)
    optimizer, _ = build_optimizer(student, loss_fn, TrainConfig(store="unused"))
    batch_ = Batch(video=torch.randn(batch, 3, spec.frames, spec.size, spec.size),
                   label=torch.arange(batch) % 4, index=torch.arange(batch))
    train_step(student, loss_fn, optimizer, batch_)  # warm-up: allocator, kernel selection
    started = time.perf_counter()
    for _ in range(steps):
        train_step(student, loss_fn, optimizer, batch_)
    seconds = time.perf_counter() - started
    return {"clips_per_s": batch * steps / seconds, "step_s": seconds / steps, "steps": steps,
            "params": sum(p.numel() for p in student.parameters())}


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    spec = ClipSpec(frames=args.frames, size=args.size)
    store = make_store(folder, args.clips, args.video_size, args.duration)
    result: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "workdir"},
                              "threads": torch.get_num_threads(), "file": {}, "cache": {}, "model": {}}
    for w in args.workers:
        result["file"][f"workers_{w}"] = loader_rate(store, spec, "file", w, args.batch, args.epochs)
    began = time.perf_counter()
    summary = build_frame_cache(store, FrameCacheConfig(size=spec.base_size, workers=max(args.workers), codec="raw"))
    result["cache_build"] = {"seconds": time.perf_counter() - began, "frames": summary.frames,
                             "clips_per_s": summary.clips_per_s}
    for w in args.workers:
        result["cache"][f"workers_{w}"] = loader_rate(store, spec, "cache", w, args.batch, args.epochs)
    models = {"small": {}} if args.quick else {"small": {}, "r2plus1d_18": {}}
    for name, options in models.items():
        result["model"][name] = model_rate(name, spec, 8, args.steps, options)
    result["ratios"] = ratios(result)
    return result


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """Each rate over the file loader's rate with the same worker count (models: the best file rate)."""
    out = {}
    for key, file in result["file"].items():
        out[f"cache_vs_file_{key}"] = result["cache"][key]["clips_per_s"] / file["clips_per_s"]
    best_file = max(f["clips_per_s"] for f in result["file"].values())
    for name, model in result["model"].items():
        out[f"model_{name}_vs_file"] = model["clips_per_s"] / best_file
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=32, help="synthetic videos (4 classes)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per video")
    parser.add_argument("--video-size", type=int, default=128, help="side of the encoded videos")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="loader passes over the clips")
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps per model")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--quick", action="store_true", help="8-frame 64² clips, 12 videos, small model only")
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.frames, args.size, args.video_size, args.duration = 12, 8, 64, 64, 1.0
    print_json_in_workdir(lambda folder: run(args, folder), args.workdir, "bench_loader_")


if __name__ == "__main__":
    main()
