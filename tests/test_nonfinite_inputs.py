"""Messages that blame the right thing (issue: integrity): NaN/inf teacher embeddings in the store
are refused before training, naming the store, the teacher, the clips and the fix; a loss that
turns non-finite says whether the batches' inputs were finite."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ccl_cache.errors import StoreError, TrainingError
from ccl_cache.losses import Batch, LossOutput
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store
from ccl_cache.train import StepMeter, TrainConfig, train

N, D, K = 8, 4, 2


def nan_store(path: Path, bad_row: int, frames: bool = False) -> Path:
    """A store of 8 clips (6 train, 2 test) whose teacher embeddings are finite except ``bad_row``'s;
    written with the store API only (nothing is decoded before the refusal)."""
    records = [ClipRecord(f"clip{i}", f"/media/{i}.mp4", ("a", "b")[i % 2], "train" if i < 6 else "test")
               for i in range(N)]
    with create_store(path, Manifest.from_records(records), chunk_rows=4) as s:
        s.record_clips(np.arange(N), duration=np.full(N, 2.0), has_audio=np.ones(N, bool))
        shape = (N, K, D) if frames else (N, D)
        emb = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        emb[bad_row, ..., 1] = np.nan
        mask = np.ones(shape[:-1], bool)
        key = "image/small_image" if frames else "audio/small_audio"
        s.create_teacher(key, D, K if frames else None, "float32", {"arch": "test"})
        times = np.zeros((N, K if frames else 1, 2))
        s.write_rows(key, slice(0, 4), emb[:4], times[:4], mask[:4])
        s.write_rows(key, slice(4, 8), emb[4:], times[4:], mask[4:])
    return path


def config(store: Path, out: Path, teachers: tuple[str, ...]) -> TrainConfig:
    return TrainConfig(store=str(store), method="ccl", teachers=teachers, student="small",
                       student_options={"width": 8}, epochs=1, batch_size=2, frames=4, size=32, workers=0,
                       device="cpu", out=str(out), tensorboard=False, write_embeddings=False)


@pytest.mark.parametrize("in_ram", [True, False])
def test_distill_refuses_a_store_with_a_nan_teacher_row_naming_the_clip(tmp_path: Path, in_ram: bool) -> None:
    store = nan_store(tmp_path / "nan.zarr", bad_row=3)
    cfg = config(store, tmp_path / "run", ("audio",))
    with pytest.raises(StoreError) as info:
        train(dataclasses.replace(cfg, teachers_in_ram=in_ram))
    message = str(info.value)
    for text in (str(store), "audio/small_audio", "1 clip(s)", "clip3", "rows 3", "--overwrite", "--retry-failed"):
        assert text in message, text


def test_a_nan_frame_of_a_clip_outside_the_training_rows_is_not_refused(tmp_path: Path) -> None:
    """Row 7 is a test clip: distill does not read its teacher embeddings."""
    from ccl_cache.data import ClipDataset

    store = nan_store(tmp_path / "nan.h5", bad_row=7, frames=True)
    ClipDataset(store, np.arange(6), teachers={"image": "image/small_image"})  # no error
    with pytest.raises(StoreError, match=r"image/small_image.*clip7"):
        ClipDataset(store, np.arange(8), teachers={"image": "image/small_image"})


def _batch(teacher: torch.Tensor, mask: torch.Tensor) -> Batch:
    return Batch(video=torch.zeros(2, 3, 1, 2, 2), label=torch.zeros(2, dtype=torch.long),
                 teachers={"audio": teacher}, masks={"audio": mask})


def test_a_non_finite_loss_says_whether_the_inputs_were_finite() -> None:
    nan = LossOutput(torch.tensor(float("nan")), {})
    meter = StepMeter()
    meter.add(LossOutput(torch.tensor(1.0), {}), clips=2, batch=_batch(torch.ones(2, 4), torch.ones(2, dtype=torch.bool)))
    meter.add(nan, clips=2, batch=_batch(torch.full((2, 4), float("inf")), torch.ones(2, dtype=torch.bool)))
    with pytest.raises(TrainingError, match=r"inputs that were not finite: teacher audio held NaN/inf") as info:
        meter.flush()
    assert "--lr" not in str(info.value)
    # NaN in a row the mask says is absent is not an input; the same loss is then the training's fault
    meter.add(nan, clips=2, batch=_batch(torch.tensor([[1.0] * 4, [float("nan")] * 4]), torch.tensor([True, False])))
    with pytest.raises(TrainingError, match=r"teacher inputs of the last 1 step\(s\) were finite.*lower --lr"):
        meter.flush()
