"""The trainer's input path over a JPEG frame cache: windows decoded in the loader's workers
(``distill --decode cpu``) against decoded on the training device after the loader
(``--decode device``: one batched nvJPEG call per batch on CUDA).

One synthetic dataset (``ccl-cache synth`` videos, no teachers), one JPEG frame cache
(``build_frame_cache``), then for each decode setting one short training run of the real trainer
(``ccl_cache.train.train``, the teacher-free ``baseline`` method, so no teacher has to be
extracted) with the same seed, student and batches. From each run's ``metrics.jsonl`` it reports
clips/s, ``loader_wait`` (the share of the steps' wall time spent getting batches ready, device
decoding included) and ``device_decode`` (the share spent decoding on the device), averaged over
the logged windows after the first (which pays for the workers' start and the first kernels).
The ratios compare the two settings measured in the same run. On a CPU machine ``--decode device``
is the same code path with the CPU decoder in the main process (expected slower: the workers
decode in parallel).

    python benchmarks/bench_device_decode.py > device_decode.json          # a GPU: ~1-2 min
    python benchmarks/bench_device_decode.py --quick --device cpu          # seconds: the path on a CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _common import print_json_in_workdir
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.extract import FrameCacheConfig, build_frame_cache
from ccl_cache.store import create_store
from ccl_cache.train import TrainConfig, train


def make_cache(folder: Path, clips: int, seconds: float, video_size: int) -> Path:
    """A store over ``clips`` synthetic videos (4 classes, splits for a test) with a JPEG frame cache."""
    per_class = max(2, clips // 4)
    manifest = generate(folder / "videos", SynthConfig(classes=4, clips_per_class=per_class, duration=seconds,
                                                        size=video_size, pretrain_clips_per_class=0,
                                                        val_fraction=0.0, test_fraction=0.25), workers=2)
    store = folder / "bench.zarr"
    create_store(store, manifest).close()
    build_frame_cache(store, FrameCacheConfig(codec="jpeg", workers=2))
    return store


def run_one(store: Path, out: Path, decode: str, args: argparse.Namespace) -> dict[str, Any]:
    config = TrainConfig(store=str(store), method="baseline", teachers=(), student=args.student,
                         student_options={"width": 16} if args.student == "small" else {}, epochs=args.epochs,
                         batch_size=args.batch, frames=args.frames, size=args.size, source="cache", decode=decode,
                         workers=args.workers, device=args.device, optimizer="adamw", lr=1e-3, log_every=1,
                         out=str(out), tensorboard=False, write_embeddings=False, test_max_windows=1,
                         val_fraction=0.0)
    summary = train(config)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if line["kind"] == "train"][1:] or [lines[0]]
    return {
        "decode": summary["decode"], "device": summary["device"], "steps": len(steps),
        "clips_per_s": statistics.fmean(s["clips_per_s"] for s in steps),
        "loader_wait": statistics.fmean(s["loader_wait"] for s in steps),
        "device_decode": statistics.fmean(s["device_decode"] for s in steps),
    }


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    store = make_cache(folder, args.clips, args.seconds, args.video_size)
    results = {decode: run_one(store, folder / f"run-{decode}", decode, args) for decode in ("cpu", "device")}
    return {
        "benchmark": "device_decode",
        "config": {k: v for k, v in vars(args).items() if k != "workdir"},
        "results": results,
        "ratios": {"device_vs_cpu_clips_per_s": results["device"]["clips_per_s"] / results["cpu"]["clips_per_s"]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=64, help="synthetic videos (4 classes, a quarter for test)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per video")
    parser.add_argument("--video-size", type=int, default=160, help="side of the encoded videos")
    parser.add_argument("--student", default="r21d_ccl", help="a registered student (the paper's by default)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="12 short videos, the small student on 8x48² clips")
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.seconds, args.video_size, args.student = 12, 1.0, 64, "small"
        args.frames, args.size, args.batch, args.epochs, args.workers = 8, 48, 4, 1, 0
    print_json_in_workdir(lambda folder: run(args, folder), args.workdir, "ccl-device-decode-")


if __name__ == "__main__":
    main()
