"""The training frame cache per codec (``ccl-cache cache-clips --codec``): disk per clip, training
windows per second per core, quality; against seeking in the original files, in one run.

On generated 10 s 640x360 long-GOP H.264 clips with audio (``bench_decode.make_originals``: a
textured, noisy picture whose bitrate is that of a 360p upload), each cache form is built with
``build_frame_cache`` into its own store and read through the real training path:

* ``windows``: random 16-frame windows through ``FrameReader.random_window`` (the cache, or for
  ``original`` the files: ``media.read_clip`` at the 128x171 base size, what a worker does);
* ``items``: whole training items from ``ClipDataset`` (window + 112² RandomResizedCrop, flip,
  normalise), as one DataLoader worker produces them;
* ``bytes_per_clip``: the cache's arrays on disk per clip (``disk``: the files, whose last
  storage chunk of 1 MiB is allocated whole, a per-cache not per-clip cost; ``payload``: the
  bytes the frames, their index and timestamps hold, what a large cache costs per clip) and the
  original mp4 for comparison;
* ``psnr_db_vs_raw``: every cached frame against the raw cache's (the decoded originals).

Rates are per CPU-second of this process (``time.process_time``, torch at one thread as in a
DataLoader worker), i.e. per core, which holds on a loaded machine; wall rates are printed too.
``projection_200k_clips_TB`` is the disk of each form for VGGSound's ~200k clips. One JSON::

    python benchmarks/bench_frame_cache.py --clips 4 --qualities 50,75,90 > frame_cache.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import add_video_options, print_json_in_workdir
from bench_decode import item_rate, make_originals, psnr, window_rate
from ccl_cache.data import ClipInfo, ClipSpec, FrameCacheIndex, FrameReader
from ccl_cache.extract import FrameCacheConfig, build_frame_cache
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store, open_store

VGGSOUND_CLIPS = 200_000


def make_store(folder: Path, name: str, paths: list[Path]) -> Path:
    manifest = Manifest.from_records(ClipRecord(id=p.stem, path=str(p), label="a") for p in paths)
    store = folder / f"{name}.zarr"
    create_store(store, manifest).close()
    return store


def cache_bytes(store: Path) -> dict[str, float]:
    """Disk bytes of ``/frames`` (files) and the bytes its frames, index and times hold."""
    disk = sum(f.stat().st_size for f in (store / "frames").rglob("*") if f.is_file() and f.name != "zarr.json")
    with open_store(store) as s:
        frames = int(np.asarray(s.array("frames/count")[:]).sum())
        if s.has("frames/encoded_index"):
            index = np.asarray(s.array("frames/encoded_index")[:])
            payload = int(index[:, 2].sum()) + 24 * frames
        else:
            payload = int(np.prod(s.array("frames/data").shape[1:])) * frames
    return {"disk": float(disk), "payload": float(payload + 8 * frames)}


def all_frames(store: Path) -> np.ndarray:
    with open_store(store) as s:
        index = FrameCacheIndex.load(s)
        assert index is not None
        return np.concatenate([index.read(s, row, 0, int(index.count[row]), 1).frames for row in range(s.n)])


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    torch.set_num_threads(1)  # as in a DataLoader worker (ccl_cache.data.loader._worker_init)
    spec = ClipSpec(frames=args.frames, size=112)
    began = time.perf_counter()
    originals = make_originals(folder, args.clips, args.seconds, args.fps, args.gop, (args.height, args.width))
    out: dict[str, Any] = {"benchmark": "frame_cache",
                           "config": {k: v for k, v in vars(args).items() if k != "workdir"},
                           "base_size": list(spec.base_size), "generate_s": round(time.perf_counter() - began, 2)}
    infos = [ClipInfo(str(p), 0.0, float("nan"), 0) for p in originals]
    original_bytes = float(np.mean([p.stat().st_size for p in originals]))
    baseline_store = make_store(folder, "original", originals)
    forms: dict[str, dict[str, Any]] = {"original": {
        "windows": window_rate(FrameReader(baseline_store, infos, spec, None), len(infos), args.windows, 0),
        "items": item_rate(baseline_store, spec, "file", max(4, args.windows // 2), 0),
        "bytes_per_clip": {"disk": original_bytes, "payload": original_bytes}}}

    settings = [("raw", None)] + [("jpeg", int(q)) for q in args.qualities.split(",") if q]
    reference: np.ndarray | None = None
    for codec, quality in settings:
        name = codec if quality is None else f"{codec}_q{quality}"
        store = make_store(folder, name, originals)
        built = time.perf_counter()
        build_frame_cache(store, FrameCacheConfig(size=spec.base_size, workers=0, codec=codec, quality=quality))
        build_s = time.perf_counter() - built
        with open_store(store) as s:
            cache = FrameCacheIndex.load(s)
        form: dict[str, Any] = {
            "codec": codec, "quality": quality, "build_s_per_clip": build_s / len(originals),
            "windows": window_rate(FrameReader(store, infos, spec, cache), len(infos), args.cache_windows, 0),
            "items": item_rate(store, spec, "cache", args.cache_windows // 2, 0),
            "bytes_per_clip": {k: v / len(originals) for k, v in cache_bytes(store).items()},
        }
        frames = all_frames(store)
        form["psnr_db_vs_raw"] = None if reference is None else psnr(reference, frames)
        reference = frames if reference is None else reference  # raw comes first
        forms[name] = form

    base = forms["original"]
    for name, form in forms.items():
        form["ratios_vs_original"] = {
            "windows_per_cpu_s": form["windows"]["windows_per_cpu_s"] / base["windows"]["windows_per_cpu_s"],
            "items_per_cpu_s": form["items"]["items_per_cpu_s"] / base["items"]["items_per_cpu_s"],
            "bytes_per_clip": form["bytes_per_clip"]["payload"] / original_bytes,
        }
        form["projection_200k_clips_TB"] = form["bytes_per_clip"]["payload"] * VGGSOUND_CLIPS / 1e12
    out["forms"] = forms
    out["targets"] = {"bytes_per_clip_vs_original_max": 1.5, "windows_per_cpu_s_vs_original_min": 20.0}
    out["total_s"] = round(time.perf_counter() - began, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_video_options(parser)
    parser.add_argument("--frames", type=int, default=16, help="frames per training window")
    parser.add_argument("--windows", type=int, default=48, help="timed windows from the original files")
    parser.add_argument("--cache-windows", type=int, default=400, help="timed windows from each cache")
    parser.add_argument("--qualities", default="50,75,90", help="JPEG qualities to build (comma-separated)")
    parser.add_argument("--workdir", default=None, help="keep the generated files here (default: a temp dir)")
    args = parser.parse_args(argv)
    print_json_in_workdir(lambda folder: {**run(args, folder), "cpu_count": os.cpu_count()},
                          args.workdir, "bench_frame_cache_")


if __name__ == "__main__":
    main()
