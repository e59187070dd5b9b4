"""A tiny real store for the training tests: synthetic mp4s → small teachers → Zarr/HDF5 store.

3 classes × 6 clips of 1 s at 64² (splits: 3 train, 1 val, 2 test per class; one clip in five
without audio), teachers ``small_audio`` and ``small_image`` with seeded random weights
(4 cached frames per clip). About 5 s on 2 CPU cores. Imported by test_train*.py and test_ddp.py.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable

from ccl_cache import extract as ex
from ccl_cache.manifest import Manifest
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.train import TrainConfig
from ccl_cache.testing.extraction import save_small_teachers


def make_store(folder: Path, suffix: str = ".zarr", damage: Callable[[Manifest], None] | None = None) -> Path:
    """Generate the dataset in ``folder`` and extract it into ``folder/store<suffix>``;
    ``damage(manifest)`` may replace some of its files first."""
    config = SynthConfig(classes=3, clips_per_class=6, duration=1.0, size=64, pretrain_clips_per_class=0,
                         no_audio=0.2, val_fraction=0.17, test_fraction=0.34, seed=3)
    manifest = generate(folder / "synth", config, workers=1)
    if damage is not None:
        damage(manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" notes: intended here
        weights = save_small_teachers(folder, 0, 1)
        store = folder / f"store{suffix}"
        ex.run_extraction(ex.ExtractConfig(
            manifest=str(folder / "synth" / "manifest.csv"), store=str(store), audio_teacher="small_audio",
            audio_weights=str(weights[0]), image_teacher="small_image", image_weights=str(weights[1]),
            image_size=32, frames_per_clip=4, batch_size=4, workers=0, device="cpu", dtype="float32"))
    return store


def tiny_config(store: Path, out: Path, **changes: object) -> TrainConfig:
    """A seconds-long CPU run: the small student (width 8) on 4-frame 32² clips."""
    base = TrainConfig(store=str(store), method="ccl", student="small", student_options={"width": 8}, epochs=1,
                       batch_size=4, frames=4, size=32, workers=0, device="cpu", out=str(out), log_every=1,
                       tensorboard=False, test_max_windows=2)
    return dataclasses.replace(base, **changes)
