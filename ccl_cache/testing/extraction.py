"""Test helpers for extraction runs with the small CPU teachers (imports torch; not re-exported).

Tests and benchmarks need teachers whose every build is the same network: seeded random
backbones saved to weight files, and the ``ccl-cache extract`` arguments that load them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ccl_cache.teachers import build_teacher


def save_small_teachers(folder: Path, audio_seed: int, image_seed: int, image_size: int = 32) -> tuple[Path, Path]:
    """Write seeded random ``small_audio`` and ``small_image`` backbones to ``folder``; return their paths."""
    paths = []
    for name, seed, options in (("small_audio", audio_seed, {}), ("small_image", image_seed, {"image_size": image_size})):
        torch.manual_seed(seed)
        teacher = build_teacher(name, None, **options)
        path = folder / f"{name}.pt"
        torch.save(teacher.backbone.state_dict(), path)
        paths.append(path)
    return paths[0], paths[1]


def small_extract_args(audio_weights: Path, image_weights: Path, *, frames_per_clip: int, batch_size: int,
                       image_size: int = 32, json: bool = False) -> list[str]:
    """``ccl-cache extract`` options for both small teachers, float32 on one CPU worker (deterministic)."""
    args = ["--audio-teacher", "small_audio", "--audio-weights", str(audio_weights),
            "--image-teacher", "small_image", "--image-weights", str(image_weights),
            "--image-size", str(image_size), "--frames-per-clip", str(frames_per_clip),
            "--batch-size", str(batch_size), "--workers", "1", "--device", "cpu", "--dtype", "float32", "--quiet"]
    return [*args, "--json"] if json else args
