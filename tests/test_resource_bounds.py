"""Resource bounds (issue: integrity): a user number that sizes an allocation is refused (or cut,
where cutting is what it means) before anything is allocated, with the option and its valid range.
The audit of every such number is the table in docs/reliability.md, "Resource bounds"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ccl_cache import resources
from ccl_cache.errors import ConfigError
from ccl_cache.experiments.synth import MAX_CLIPS_PER_CLASS, SynthConfig
from ccl_cache.extract import ExtractConfig, FrameCacheConfig
from ccl_cache.extract.config import MAX_BATCH_SIZE, MIN_AUDIO_SEGMENT_S
from ccl_cache.search import IndexConfig, build_index
from ccl_cache.train import TrainConfig

HUGE = 10**9


def vectors(n: int = 100, d: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("option", ["batch_size", "eval_batch_size", "val_clips"])
def test_training_batches_that_cannot_fit_in_memory_are_refused_with_their_range(option: str) -> None:
    config = dataclasses.replace(TrainConfig(store="s.zarr"), **{option: HUGE})
    low = 2 if option == "batch_size" else 1
    with pytest.raises(ConfigError, match=rf"{option}={HUGE}: .* more than the .* of memory available; give "
                                          rf"{option} {low} to \d+, or lower --frames or --size"):
        config.validate()


def test_training_clips_of_absurd_length_are_refused_naming_frames() -> None:
    with pytest.raises(ConfigError, match=rf"frames={HUGE}: .*give frames 1 to \d+, or lower --size"):
        TrainConfig(store="s.zarr", frames=HUGE).validate()
    with pytest.raises(ConfigError, match=r"frames=16: .*even 1 would not fit: lower --size"):
        TrainConfig(store="s.zarr", size=10**6).validate()  # one frame of 10^6 x 10^6 pixels


def test_extraction_batches_are_bounded_by_the_store_chunk_and_memory() -> None:
    base = ExtractConfig(manifest="m.csv", store="s.zarr")
    with pytest.raises(ConfigError, match=rf"batch_size={HUGE}: give 1 to {MAX_BATCH_SIZE}"):
        dataclasses.replace(base, batch_size=HUGE).validate()
    with pytest.raises(ConfigError, match=rf"frames_per_clip={HUGE}: .*give frames_per_clip 1 to \d+, or lower "
                                          "--image-size"):
        dataclasses.replace(base, frames_per_clip=HUGE).validate()
    dataclasses.replace(base, frames_per_clip=HUGE, image_teacher=None).validate()  # no frames are decoded then


def test_extraction_batches_are_refused_when_their_frames_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "available_memory", lambda: 2**30)  # 1 GiB
    config = ExtractConfig(manifest="m.csv", store="s.zarr", image_size=224, frames_per_clip=64, batch_size=64)
    with pytest.raises(ConfigError, match=r"batch_size=64: 64 clips of 64 float32 frames of 224x224 .* give "
                                          r"batch_size 1 to 27, or lower --frames-per-clip or --image-size"):
        config.validate()


def test_audio_segments_too_short_to_be_audio_are_refused() -> None:
    base = ExtractConfig(manifest="m.csv", store="s.zarr")
    with pytest.raises(ConfigError, match=rf"audio_segment=1e-06: give at least {MIN_AUDIO_SEGMENT_S} seconds"):
        dataclasses.replace(base, audio_segment=1e-6).validate()
    dataclasses.replace(base, audio_segment=MIN_AUDIO_SEGMENT_S).validate()


def test_ivf_lists_beyond_the_vectors_are_refused_before_faiss_allocates_them() -> None:
    with pytest.raises(ConfigError, match=rf"nlist={HUGE}: give 1 to 100 IVF lists .* the default for 100 vectors is 2"):
        build_index(vectors(), IndexConfig("ivf", nlist=HUGE))
    with pytest.raises(ConfigError, match=rf"nlist={HUGE}: give 1 to 100"):
        build_index(vectors(), IndexConfig("ivfpq", nlist=HUGE))
    with pytest.raises(ConfigError, match=rf"nlist={HUGE}: give 1 to 100"):
        build_index(vectors(), IndexConfig(f"factory:IVF{HUGE},Flat"))
    assert build_index(vectors(), IndexConfig("ivf", nlist=4)).meta.factory == "IVF4,Flat"


def test_hnsw_ef_search_beyond_the_gallery_is_cut_to_it() -> None:
    index = build_index(vectors(300), IndexConfig("hnsw", ef_search=HUGE))
    assert index.meta.ef_search == 300 and any("ef_search" in note for note in index.notes)
    assert build_index(vectors(300), IndexConfig("hnsw")).meta.ef_search == 128  # the default is kept


def test_synthetic_datasets_of_absurd_size_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=rf"clips_per_class={HUGE}: expected 1 to {MAX_CLIPS_PER_CLASS}"):
        SynthConfig(clips_per_class=HUGE)
    with pytest.raises(ConfigError, match=rf"pretrain_clips_per_class={HUGE}: expected 0 to {MAX_CLIPS_PER_CLASS}"):
        SynthConfig(pretrain_clips_per_class=HUGE)
    monkeypatch.setattr(resources, "available_memory", lambda: 8 * 2**30)
    with pytest.raises(ConfigError, match=r"duration x SynthConfig.fps=7200: .*give SynthConfig.duration x "
                                          r"SynthConfig.fps 1 to \d+, or lower SynthConfig.size"):
        SynthConfig(duration=60, fps=120, size=2048)
    SynthConfig(duration=60, fps=25, size=112)  # 1500 frames of 112² render in about 0.7 GB


def test_frame_caches_of_absurd_frame_size_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"size=100000x171: give 8 to 2048 pixels per side"):
        FrameCacheConfig(size=(100000, 171))
    FrameCacheConfig(size=(2048, 2048))


def test_the_cli_names_the_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from ccl_cache_cli.main import cli

    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "d"), "--clips-per-class", str(HUGE)])
    assert str(result.exception) == f"--clips-per-class={HUGE}: expected 1 to {MAX_CLIPS_PER_CLASS}"
    monkeypatch.setattr(resources, "available_memory", lambda: 8 * 2**30)
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "d"), "--duration", "60", "--size", "2048"])
    assert str(result.exception).startswith("--duration x --fps=1500: ") and "or lower --size" in str(result.exception)
