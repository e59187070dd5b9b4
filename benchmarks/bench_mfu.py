"""Training throughput and model FLOPs utilisation (MFU) of the distillation step on one device.

The performance issue's GPU target: the R(2+1)D-18 student (torchvision ``r2plus1d_18``) at
16×112², bf16, should train at >= 30 % MFU. This times the trainer's own step
(``ccl_cache.train.train_step``: student forward under autocast, the CCL loss on cached audio and
image embeddings in float32, one backward, the fused optimiser step) on inputs already on the
device, so the figure is the step's ceiling; whether the loader keeps up is
``bench_loader.py``'s question.

Variants, timed in turn on the same model size and batch (``--variants``): ``fp32`` (the
same-run baseline), ``bf16`` (autocast), ``bf16-cl`` (+ ``channels_last_3d``), ``bf16-cl-compile``
(+ ``torch.compile`` of the forward, as ``distill --compile``; its first steps compile and are
not timed), ``bf16-cl-online`` (``bf16-cl`` plus what the paper's released code does instead of
reading the cache: a frozen ResNet-34 image teacher's forward on one frame of the clip per step;
its MFU still counts the student's FLOPs only, so cached ÷ online clips/s is the gain of the
cache on this device). Each variant: ``--warmup`` untimed steps, then ``--steps`` timed ones between two
device synchronisations (none inside: the step itself never waits for the device). On CUDA the
peak memory of each variant is reported too (``torch.cuda.max_memory_allocated``).

MFU = (3 × forward FLOPs per clip × clips per second) / peak. Forward FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on one clip (a multiply-add = 2 FLOPs); forward +
backward is taken as 3× forward. Peak: dense bf16 tensor-core FLOP/s of the GPU, looked up by
name in ``PEAK_BF16_TFLOPS`` (the vendors' datasheet figures without sparsity) or given with
``--peak-tflops``; without either (a CPU, an unknown GPU) MFU is reported as null. The fp32
variant is measured against the same bf16 peak, so its MFU reads as "share of what bf16 could do".

    python benchmarks/bench_mfu.py                       # r2plus1d_18, batch 32, 16x112², all variants
    python benchmarks/bench_mfu.py --student small --frames 8 --size 32 --batch 4 --steps 3 --variants fp32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

import torch

from _step import forward_gflop, make_training_step
from ccl_cache.students import build_student, count_parameters
from ccl_cache.train import Amp, seed_everything

CLASSES = 309  # VGGSound's classes: the classifier's size matters little next to the backbone
VARIANTS = ("fp32", "bf16", "bf16-cl", "bf16-cl-compile", "bf16-cl-online")
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets, matched as
# substrings of torch.cuda.get_device_name(); the first match wins, so specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 6000 Ada", 364.2), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
)


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(peak bf16 TFLOP/s or None, where the figure came from)."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown for CPUs (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"datasheet ({key})"
    return None, f"unknown GPU {name!r} (pass --peak-tflops)"


def time_variant(args: argparse.Namespace, device: torch.device, variant: str) -> dict[str, Any]:
    """Seconds per training step of one variant (the mean over ``--steps``) and clips/s."""
    seed_everything(0, deterministic=False)  # what distill does: cudnn.benchmark on for fixed shapes
    step_fn, _ = make_training_step(args.student, CLASSES, args.batch, args.frames, args.size, device=device,
                                    amp=Amp("bf16" if "bf16" in variant else "off", device.type),
                                    channels_last="-cl" in variant, compile_model="compile" in variant)

    def step() -> None:
        step_fn("online" in variant)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - began
    # Timed between two synchronisations only: one per step would hide the overlap of the host's
    # launches with the device's work that training has.
    began = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - began
    return {"warmup_s": warmup_s, "step_s": seconds / args.steps, "clips_per_s": args.batch * args.steps / seconds,
            "peak_memory_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    fwd = forward_gflop(build_student(args.student, CLASSES), torch.randn(1, 3, args.frames, args.size, args.size))
    result: dict[str, Any] = {
        "benchmark": "mfu", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": vars(args), "student_params": count_parameters(build_student(args.student, CLASSES)),
        "fwd_gflop_per_clip": fwd, "train_gflop_per_clip": 3 * fwd, "peak_bf16_tflops": peak,
        "peak_source": peak_source, "variants": {},
    }
    for variant in args.variants:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            timing = time_variant(args, device, variant)
        achieved = 3 * fwd * 1e9 * timing["clips_per_s"] / 1e12
        timing.update(achieved_tflops=achieved, mfu=None if peak is None else achieved / peak)
        result["variants"][variant] = timing
        print(f"[{variant}] {timing['clips_per_s']:.1f} clips/s, {achieved:.1f} TFLOP/s"
              + ("" if peak is None else f", MFU {100 * achieved / peak:.1f} %"), file=sys.stderr, flush=True)
    variants = result["variants"]
    if "fp32" in variants:
        result["speedup_vs_fp32"] = {v: t["clips_per_s"] / variants["fp32"]["clips_per_s"] for v, t in variants.items()}
    if "bf16-cl" in variants and "bf16-cl-online" in variants:
        result["cached_vs_online_teacher"] = variants["bf16-cl"]["clips_per_s"] / variants["bf16-cl-online"]["clips_per_s"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="r2plus1d_18", help="student architecture (ccl_cache.students)")
    parser.add_argument("--batch", type=int, default=32, help="clips per step")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cudnn tuning)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not known")
    args = parser.parse_args(argv)
    json.dump(run(args), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
