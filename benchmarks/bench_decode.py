"""Training windows per second per core: seeking in the original files vs the training clip caches.

Chen et al. (CVPR 2021) train on 16 consecutive frames at a random start of each video. Read
from the original files, every window is a seek to the keyframe before the start and a decode
up to the window's end: in long-GOP 360p H.264 (YouTube-like) most decoded frames are thrown
away. This measures, in one process and one run, on the same generated content:

* ``original``: ``FrameReader`` over the original 640x360 long-GOP H.264 files (the baseline),
  i.e. ``media.read_clip`` at the 128x171 base size, exactly what a training worker does;
* ``cache``: the same ``FrameReader`` reading uint8 frames from the store's frame cache
  (``build_frame_cache``, what ``ccl-cache cache-clips`` writes);
* ``reencode``: ``FrameReader`` over a short-GOP low-resolution re-encode of each file
  (172x128 H.264, a keyframe every 16 frames): the other training copy the issue considers;
* ``items``: whole training items from ``ClipDataset`` (window + crop, flip, normalise), from the
  files and from the frame cache, as one DataLoader worker produces them.

Rates are windows per CPU-second of this process (``time.process_time``, all its threads), i.e.
windows/s per core, which stays meaningful on a shared, loaded machine; wall-clock rates are
printed too. Also reported: disk bytes per clip of each copy, the time to build each copy, the
re-encode's PSNR against the cached frames (its quality cost), and audio decode + resample to
16 kHz mono per clip. Prints one JSON document::

    python benchmarks/bench_decode.py --clips 4 --windows 48 > decode.json
"""

from __future__ import annotations

import argparse
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from _common import add_video_options, print_json_in_workdir
from ccl_cache import media
from ccl_cache.data import ClipDataset, ClipInfo, ClipSpec, FrameCacheIndex, FrameReader
from ccl_cache.extract import FrameCacheConfig, build_frame_cache
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store, open_store
from ccl_cache.testing import write_video

# The originals: x264 "veryfast" at crf 23 (a typical upload quality), B-frames on, keyframes
# only every `gop` frames (scenecut off so `gop` alone decides).
ORIGINAL_OPTIONS = {"preset": "veryfast", "crf": "23", "x264-params": "scenecut=0"}
REENCODE_SIZE = (128, 172)  # (H, W): H.264 4:2:0 needs even sides; read back at 128x171
REENCODE_OPTIONS = {"preset": "veryfast", "crf": "18", "x264-params": "scenecut=0"}


def render(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a scrolling textured background, two moving discs and sensor noise.

    Texture and noise keep the bitrate in the range of real 360p uploads (a flat synthetic
    image would decode unrealistically fast).
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 150, (height // 24 + 2, width // 24 + 2, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(coarse, 24, 0), 24, 1)
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    noise = rng.integers(-4, 5, (8, height, width, 3), dtype=np.int16)  # cheap to draw, 8 fields
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        shift = int(2 * t) % 24
        base = texture[:height, shift:shift + width].copy()
        # separable waves: a (1, W) row plus an (H, 1) column, no full-frame transcendentals
        base += (40 * np.sin(xs / 37.0 + t / 9.0))[None, :, None] + (40 * np.cos(ys / 23.0 - t / 13.0))[:, None, None]
        for k, colour in enumerate(((250, 40, 40), (40, 220, 90))):
            cx = (width / 2) + (width / 3) * np.sin(t / (17.0 + 6 * k) + k)
            cy = (height / 2) + (height / 3) * np.cos(t / (11.0 + 5 * k))
            disc = (xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2 < (height / 7) ** 2
            base[disc] = colour
        base += noise[(t * 5 + seed) % 8]
        out[t] = np.clip(base, 0, 255).astype(np.uint8)
    return out


def make_originals(folder: Path, clips: int, seconds: float, fps: int, gop: int, size: tuple[int, int]) -> list[Path]:
    """``clips`` long-GOP H.264 mp4 files with 44.1 kHz stereo AAC, ``size`` = (H, W)."""
    paths = []
    n = int(round(seconds * fps))
    t = np.arange(int(seconds * 44100), dtype=np.float32) / 44100
    for i in range(clips):
        wave = 0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t)
        audio = np.stack([wave, 0.5 * wave]).astype(np.float32)
        paths.append(write_video(folder / f"orig_{i:03d}.mp4", frames=render(i, n, *size), fps=fps, gop=gop,
                                 codec_options=ORIGINAL_OPTIONS, audio=audio, sample_rate=44100))
    return paths


def reencode(src: Path, dst: Path, size: tuple[int, int], gop: int) -> Path:
    """Transcode ``src`` to ``size`` H.264 with a keyframe every ``gop`` frames (no audio)."""
    from av.video.reformatter import VideoReformatter

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or Fraction(25)
        vout = out.add_stream("libx264", rate=rate, options=REENCODE_OPTIONS)
        vout.width, vout.height, vout.pix_fmt = size[1], size[0], "yuv420p"
        vout.codec_context.gop_size = gop
        vout.time_base = vin.time_base
        scaler = VideoReformatter()  # one swscale context for the whole file
        for frame in inp.decode(vin):
            small = scaler.reformat(frame, width=size[1], height=size[0], format="yuv420p")
            small.pts, small.time_base = frame.pts, frame.time_base
            out.mux(vout.encode(small))
        out.mux(vout.encode(None))
    return dst


def make_store(folder: Path, paths: list[Path]) -> Path:
    manifest = Manifest.from_records(ClipRecord(id=p.stem, path=str(p), label="a") for p in paths)
    store = folder / "decode.zarr"
    create_store(store, manifest).close()
    return store


def window_rate(reader: FrameReader, rows: int, windows: int, seed: int) -> dict[str, Any]:
    """Random training windows through ``reader``: windows per CPU-second and per wall-second."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, rows, windows)
    reader.random_window(int(picks[0]), rng)  # warm-up: store handle, probes, codec tables
    cpu, wall = time.process_time(), time.perf_counter()
    frames = 0
    for row in picks:
        frames += len(reader.random_window(int(row), rng).frames)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"windows": windows, "frames_per_window": frames / windows, "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3), "windows_per_cpu_s": windows / max(cpu, 1e-9),
            "windows_per_wall_s": windows / max(wall, 1e-9)}


def item_rate(store: Path, spec: ClipSpec, source: str, items: int, seed: int) -> dict[str, Any]:
    """Training items (window + crop/flip/normalise) from ``ClipDataset``, per CPU-second."""
    with open_store(store) as s:
        rows = list(range(s.n))
    ds = ClipDataset(store, rows, spec=spec, source=source, seed=seed)
    ds[(0, 0)]  # warm-up
    cpu = time.process_time()
    for i in range(items):
        ds[(1 + i // len(rows), i % len(rows))]
    return {"items": items, "items_per_cpu_s": items / max(time.process_time() - cpu, 1e-9)}


def decoded_per_window(spec: ClipSpec, frames: int, gop: int) -> float:
    """Expected frames decoded per window when each window seeks to the keyframe before it."""
    starts = np.arange(max(1, frames - spec.span_frames + 1))
    return float(np.mean(starts - (starts // gop) * gop + spec.span_frames))


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def audio_rate(paths: list[Path]) -> dict[str, float]:
    """Milliseconds (CPU) to decode and resample each clip's audio to 16 kHz mono."""
    cpu = time.process_time()
    for p in paths:
        media.read_audio(p, sample_rate=16000)
    return {"ms_per_clip_cpu": 1000 * (time.process_time() - cpu) / len(paths)}


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    torch.set_num_threads(1)  # as in a DataLoader worker (ccl_cache.data.loader._worker_init)
    spec = ClipSpec(frames=args.frames, size=112)
    began = time.perf_counter()
    originals = make_originals(folder, args.clips, args.seconds, args.fps, args.gop, (args.height, args.width))
    generate_s = time.perf_counter() - began
    n_frames = int(round(args.seconds * args.fps))
    store = make_store(folder, originals)
    infos = [ClipInfo(str(p), 0.0, float("nan"), 0) for p in originals]
    out: dict[str, Any] = {"benchmark": "decode", "config": {k: v for k, v in vars(args).items() if k != "workdir"},
                           "base_size": list(spec.base_size), "generate_s": round(generate_s, 2)}
    out["original"] = window_rate(FrameReader(store, infos, spec, None), len(infos), args.windows, 0)
    out["original"]["decoded_per_window_est"] = decoded_per_window(spec, n_frames, args.gop)

    began = time.perf_counter()
    build_frame_cache(store, FrameCacheConfig(size=spec.base_size, workers=0, codec="raw"))
    cache_build = time.perf_counter() - began
    with open_store(store) as s:
        cache = FrameCacheIndex.load(s)
    out["cache"] = window_rate(FrameReader(store, infos, spec, cache), len(infos), args.windows, 0)
    # What a DataLoader worker delivers: the same windows plus the training augmentation.
    out["items"] = {src: item_rate(store, spec, src, max(4, args.windows // 2), 0) for src in ("file", "cache")}
    out["items"]["cache_vs_file"] = out["items"]["cache"]["items_per_cpu_s"] / out["items"]["file"]["items_per_cpu_s"]

    began = time.perf_counter()
    small = [reencode(p, folder / f"small_{i:03d}.mp4", REENCODE_SIZE, args.reencode_gop)
             for i, p in enumerate(originals)]
    reencode_build = time.perf_counter() - began
    small_infos = [ClipInfo(str(p), 0.0, float("nan"), 0) for p in small]
    out["reencode"] = window_rate(FrameReader(store, small_infos, spec, None), len(small), args.windows, 0)
    out["reencode"]["decoded_per_window_est"] = decoded_per_window(spec, n_frames, args.reencode_gop)

    with open_store(store) as s:  # the first window of clip 0 from both copies, frame by frame
        cached_frames = cache.read(s, 0, 0, spec.frames, 1).frames
    small_frames = media.read_clip(small[0], 0.0, spec.frames, size=spec.base_size).frames
    frames_bytes = sum(f.stat().st_size for f in (store / "frames" / "data").rglob("*") if f.is_file())
    out["disk_MB_per_clip"] = {"original": np.mean([p.stat().st_size for p in originals]) / 1e6,
                               "cache": frames_bytes / len(originals) / 1e6,
                               "reencode": np.mean([p.stat().st_size for p in small]) / 1e6}
    out["original_kbps"] = 8 * out["disk_MB_per_clip"]["original"] * 1e3 / args.seconds
    out["build_s_per_clip"] = {"cache": cache_build / len(originals), "reencode": reencode_build / len(originals)}
    out["quality"] = {"reencode_psnr_db_vs_cache": psnr(cached_frames, small_frames)}
    out["audio_16k"] = audio_rate(originals)
    base = out["original"]["windows_per_cpu_s"]
    out["ratios"] = {f"{k}_vs_original": out[k]["windows_per_cpu_s"] / base for k in ("cache", "reencode")}
    out["ratios"]["cache_vs_reencode"] = out["cache"]["windows_per_cpu_s"] / out["reencode"]["windows_per_cpu_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_video_options(parser)
    parser.add_argument("--reencode-gop", type=int, default=16, help="keyframe interval of the re-encode")
    parser.add_argument("--frames", type=int, default=16, help="frames per training window")
    parser.add_argument("--windows", type=int, default=48, help="timed windows per source")
    parser.add_argument("--workdir", default=None, help="keep the generated files here (default: a temp dir)")
    args = parser.parse_args(argv)
    print_json_in_workdir(lambda folder: {**run(args, folder), "cpu_count": os.cpu_count()},
                          args.workdir, "bench_decode_")


if __name__ == "__main__":
    main()
