"""Extraction throughput: end to end vs decode only vs inference only, on synthetic clips.

Two settings by default: 10 s clips at 360x360 (the performance issue's "10 s 360p"; the
synthetic generator makes square frames) and 2 s clips at 112x112, with the small CPU teachers.
The 10 s setting is measured in several variants on the same clips, one after the other: each
frame policy (``--frame-sampling``: ``spread``, the default, frames at the K sample times, as the
baseline; ``keyframes``, keyframes near them, decoding keyframes only), each also with ``--amp``
(bfloat16 autocast where the CPU has bfloat16 units; ``amp_active`` says whether it was used).
Every number is measured in the same run:

* ``decode_clips_per_s``: the decode pool alone (worker processes, no inference);
* ``inference_clips_per_s``: the teachers alone on the already decoded clips (prepare + forward);
* ``e2e_clips_per_s``: ``run_extraction`` into a fresh Zarr store (decode, inference and writes
  overlapping);
* ``overlap_efficiency`` = max(decode time, inference time) / end-to-end time: 1.0 means the
  slower stage alone bounds the pipeline (target >= 0.85). On a CPU-only machine decode workers
  and inference share the cores, so ``serial_ratio`` = (decode + inference) / end-to-end is
  printed too: > 1 means the overlap bought something even where the cores are shared.
* ``*_per_core``: the rates divided by ``os.cpu_count()`` (what run_all.py reports as clips/s/core);
  ``decode_ms_per_clip``: mean wall time of ``decode_clip`` in a worker (probe, coverage scan,
  frames, audio); ``vs_spread_e2e``: end-to-end rate of the variant over plain ``spread`` (float32)
  of the same setting.

Prints one JSON document. Usage: ``python benchmarks/bench_extract.py [--quick] [--workers 2]
[--only 10s-360p]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from ccl_cache import extract as ex
from ccl_cache import hardware
from ccl_cache.extract.run import _decode_spec
from ccl_cache.manifest import load_manifest

# torch, the teachers and the generator are imported inside the functions: decode workers import
# this script when they start (multiprocessing), and a light top level keeps that fast.


def settings(quick: bool, clips_per_class: int | None = None) -> list[dict[str, Any]]:
    scale = 0.5 if quick else 1.0
    return [
        {"name": "10s-360p", "classes": 2, "clips_per_class": clips_per_class or max(2, int(6 * scale)),
         "duration": 10.0, "size": 360,
         "variants": [("spread", False), ("spread", True), ("keyframes", False), ("keyframes", True)]},
        {"name": "2s-112p", "classes": 4, "clips_per_class": max(4, int(16 * scale)), "duration": 2.0, "size": 112,
         "variants": [("spread", False)]},
    ]


def make_weights(folder: Path, image_size: int) -> tuple[Path, Path]:
    import torch

    from ccl_cache.teachers import build_teacher

    paths = []
    for name in ("small_audio", "small_image"):
        torch.manual_seed(0)
        options = {"image_size": image_size} if name == "small_image" else {}
        path = folder / f"{name}.pt"
        torch.save(build_teacher(name, None, **options).backbone.state_dict(), path)
        paths.append(path)
    return paths[0], paths[1]


def decode_only(config: ex.ExtractConfig, runners: list[ex.TeacherRunner]) -> tuple[float, list[ex.DecodedClip]]:
    manifest = load_manifest(config.manifest, check_files=False)
    tasks = [ex.ClipTask(i, r.path, r.start, r.end, audio=True, image=True) for i, r in enumerate(manifest.records)]
    began = time.perf_counter()
    with ex.DecodePool(_decode_spec(runners, config), config.workers, config.timeout_s,
                       readahead=len(tasks)) as pool:  # fmt: skip
        pool.start(tasks)
        clips = [pool.get() for _ in tasks]
    return time.perf_counter() - began, sorted(clips, key=lambda c: c.row)


def inference_only(clips: list[ex.DecodedClip], runners: list[ex.TeacherRunner], batch: int) -> float:
    began = time.perf_counter()
    for start in range(0, len(clips), batch):
        for runner in runners:
            runner.run(clips[start : start + batch])
    return time.perf_counter() - began


def bench_setting(spec: dict[str, Any], workers: int, root: Path) -> list[dict[str, Any]]:
    """One result per variant (frame policy, amp) of ``spec``, all on the same generated clips."""
    from ccl_cache.experiments.synth import SynthConfig, generate

    folder = root / spec["name"]
    made = time.perf_counter()
    generate(folder / "synth", SynthConfig(classes=spec["classes"], clips_per_class=spec["clips_per_class"],
                                           duration=spec["duration"], size=spec["size"], pretrain_clips_per_class=0,
                                           val_fraction=0.0, test_fraction=0.0), workers=workers)  # fmt: skip
    made = time.perf_counter() - made
    audio_w, image_w = make_weights(folder, 112)
    results = []
    for policy, amp in spec["variants"]:
        config = ex.ExtractConfig(
            manifest=str(folder / "synth" / "manifest.csv"), store=str(folder / f"bench-{policy}-{amp}.zarr"),
            audio_teacher="small_audio", audio_weights=str(audio_w), image_teacher="small_image",
            image_weights=str(image_w), image_size=112, frames_per_clip=8, frame_sampling=policy, batch_size=16,
            workers=workers, device="cpu", dtype="float16", amp=amp,
        )  # fmt: skip
        results.append(bench_policy(spec, config, workers, made))
    spread = results[0]  # the plain spread variant comes first
    for r in results[1:]:
        r["vs_spread_e2e"] = round(r["e2e_clips_per_s"] / spread["e2e_clips_per_s"], 2)
    return results


def bench_policy(spec: dict[str, Any], config: ex.ExtractConfig, workers: int, made: float) -> dict[str, Any]:
    teachers = ex.build_teachers(config, "cpu")
    runners = [ex.TeacherRunner(f"{m}/{t.name}", t, "cpu", amp=config.amp, dtype=config.dtype,
                                slots=config.frames_per_clip if m == "image" else None) for m, t in teachers.items()]
    decode_s, clips = decode_only(config, runners)
    infer_s = inference_only(clips, runners, config.batch_size)
    summary = ex.run_extraction(config)
    e2e_s = summary.seconds
    n = len(clips)
    cores = os.cpu_count() or 1
    return {
        "setting": spec["name"], "frame_sampling": config.frame_sampling, "amp": config.amp,
        "amp_active": config.amp and hardware.cpu_has_bf16(), "clips": n,
        "clip_seconds": spec["duration"], "frame_size": spec["size"], "workers": workers, "generate_s": round(made, 2),
        "decode_clips_per_s": round(n / decode_s, 2), "inference_clips_per_s": round(n / infer_s, 2),
        "e2e_clips_per_s": round(n / e2e_s, 2), "decode_clips_per_s_per_core": round(n / decode_s / cores, 2),
        "e2e_clips_per_s_per_core": round(n / e2e_s / cores, 2),
        "decode_ms_per_clip": round(1000 * sum(c.seconds for c in clips) / n, 1),
        "decode_s": round(decode_s, 3), "inference_s": round(infer_s, 3),
        "e2e_s": round(e2e_s, 3), "overlap_efficiency": round(max(decode_s, infer_s) / e2e_s, 3),
        "serial_ratio": round((decode_s + infer_s) / e2e_s, 3), "failed": summary.failed,
        "distinct_frames_per_clip": round(sum(len(set(c.frame_times.tolist())) for c in clips
                                              if c.frame_times is not None) / n, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer clips per setting")
    parser.add_argument("--only", choices=[s["name"] for s in settings(False)], default=None)
    parser.add_argument("--clips-per-class", type=int, default=None,
                        help="10 s setting: clips per class (2 classes; default 6). More clips amortise the "
                             "start of the decode workers and the teachers, as a long extraction does")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        for spec in settings(args.quick, args.clips_per_class):
            if args.only in (None, spec["name"]):
                results.extend(bench_setting(spec, args.workers, Path(tmp)))
    import torch

    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu"}
    print(json.dumps({"benchmark": "extract", **info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
