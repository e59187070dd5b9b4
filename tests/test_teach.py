"""`train_teacher` / `ccl-cache teach` on a tiny generated dataset that is trivially separable.

Two classes: "red" clips show reddish frames with a 440 Hz tone, "blue" clips bluish frames with
a 2 kHz tone (pixel and audio noise on both). One extra clip has no audio stream and one is not
a video at all, to check that they are skipped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ccl_cache.errors import ConfigError
from ccl_cache.manifest import ClipRecord, Manifest, write_csv
from ccl_cache.experiments.teach import TeachConfig, load_head, report_path, train_teacher
from ccl_cache.teachers import build_teacher
from ccl_cache.testing.media_gen import write_video

RATE = 16000
SIZE = 32
FPS = 8
CLASS_LOOK = {"red": ((200, 40, 40), 440.0), "blue": ((40, 40, 200), 2000.0)}
PER_CLASS = 6


def _clip(path: Path, label: str, rng: np.random.Generator, audio: bool = True) -> Path:
    colour, tone = CLASS_LOOK[label]
    frames = np.clip(np.array(colour)[None, None, None] + rng.normal(0, 25, (FPS, SIZE, SIZE, 3)), 0, 255)
    t = np.arange(RATE) / RATE
    wave = (0.4 * np.sin(2 * np.pi * tone * t) + 0.05 * rng.standard_normal(RATE)).astype(np.float32)
    return write_video(path, frames=frames.astype(np.uint8), fps=FPS, audio=wave if audio else None,
                       sample_rate=RATE)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = tmp_path_factory.mktemp("teach_data")
    rng = np.random.default_rng(0)
    records = []
    for label in CLASS_LOOK:
        for i in range(PER_CLASS):
            path = _clip(root / f"{label}_{i}.mp4", label, rng)
            records.append(ClipRecord(f"{label}_{i}", str(path), label, "pretrain"))
    records.append(ClipRecord("silent", str(_clip(root / "silent.mp4", "red", rng, audio=False)), "red", "pretrain"))
    (root / "broken.mp4").write_bytes(b"this is not a video" * 100)
    records.append(ClipRecord("broken", str(root / "broken.mp4"), "blue", "pretrain"))
    records.append(ClipRecord("student_0", records[0].path, "red", "train"))
    return Manifest.from_records(records)


# batch_size=8 puts every training clip in one batch: BatchNorm then normalises train and eval
# inputs alike (batches of 4 from two classes are often one class, which BN normalises away).
def _image_config(**overrides: object) -> TeachConfig:
    base = dict(modality="image", arch="small_image", epochs=8, lr=3e-3, batch_size=8, val_fraction=0.34,
                image_size=SIZE, frames_per_clip=2, device="cpu", seed=0)
    base.update(overrides)
    return TeachConfig(**base)  # type: ignore[arg-type]


def test_image_teacher_learns_and_checkpoint_loads(dataset: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "image_teacher.pt"
    events: list[tuple[str, int, int]] = []
    report = train_teacher(dataset, _image_config(), out, progress=lambda s, d, t, i: events.append((s, d, t)))
    assert report["split"] == "pretrain"
    assert report["clips"] == {"in_split": 14, "used": 13, "train": 9, "val": 4, "failed": 1, "skipped_no_audio": 0}
    assert report["failures"][0]["id"] == "broken"
    assert report["val_accuracy"] > report["val_chance"]  # above chance on held-out clips
    assert report["epochs"][-1]["loss"] < report["epochs"][0]["loss"]
    assert ("decode", 14, 14) in events and ("train", 8, 8) in events
    assert json.loads(report_path(out).read_text()) == json.loads(json.dumps(report))

    ckpt = torch.load(out, weights_only=True, map_location="cpu")  # only tensors and builtins
    assert ckpt["format"] == "ccl-cache-teacher" and ckpt["arch"] == "small_image"
    assert ckpt["classes"] == ["blue", "red"] and ckpt["num_classes"] == 2
    teacher = build_teacher("small_image", out, image_size=SIZE)
    head, classes = load_head(out)
    red = teacher.prepare(np.full((1, SIZE, SIZE, 3), (200, 40, 40), dtype=np.uint8))
    blue = teacher.prepare(np.full((1, SIZE, SIZE, 3), (40, 40, 200), dtype=np.uint8))
    with torch.no_grad():
        predicted = head(teacher(torch.cat([red, blue]))).argmax(dim=1).tolist()
    assert [classes[p] for p in predicted] == ["red", "blue"]


def test_audio_teacher_skips_silent_clips_and_learns(dataset: Manifest, tmp_path: Path) -> None:
    config = TeachConfig(modality="audio", arch="small_audio", epochs=6, lr=1e-3, batch_size=8, val_fraction=0.34,
                         audio_seconds=0.5, device="cpu", seed=1)  # fmt: skip
    report = train_teacher(dataset, config, tmp_path / "audio_teacher.pt")
    assert report["clips"]["skipped_no_audio"] == 1 and report["clips"]["failed"] == 1
    assert report["clips"]["used"] == 2 * PER_CLASS
    assert report["val_accuracy"] > report["val_chance"]
    teacher = build_teacher("small_audio", tmp_path / "audio_teacher.pt")
    assert len(teacher.weights) == 64  # fingerprinted by the checkpoint's sha256


def test_missing_pretrain_split_falls_back_to_train(dataset: Manifest, tmp_path: Path) -> None:
    train_only = Manifest.from_records(
        [ClipRecord(r.id, r.path, r.label, "train") for r in dataset.records if r.split == "pretrain"]
    )
    report = train_teacher(train_only, _image_config(epochs=1, val_fraction=0.0), tmp_path / "t.pt")
    assert report["split"] == "train" and report["requested_split"] == "pretrain"
    assert report["val_accuracy"] is None and report["clips"]["val"] == 0
    # Regression: a second teach to the same --out replaced the checkpoint that stores name by SHA-256.
    kept = (tmp_path / "t.pt").read_bytes()
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        train_teacher(train_only, _image_config(epochs=1, val_fraction=0.0, seed=5), tmp_path / "t.pt")
    assert (tmp_path / "t.pt").read_bytes() == kept
    train_teacher(train_only, _image_config(epochs=1, val_fraction=0.0, seed=5), tmp_path / "t.pt", overwrite=True)
    assert (tmp_path / "t.pt").read_bytes() != kept


def test_held_out_clips_follow_the_trainers_rule(dataset: Manifest, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """teach holds out clips with the trainer's rule (data.splits.carve_val): every class keeps a
    training clip, and a class of two or more clips gives one to validation even where
    round(val_fraction * n) is 0 (teach's own rule held out none here: no validation at all)."""
    from ccl_cache.experiments import teach

    trained: list[list[int]] = []
    original = teach.train_epoch

    def spy(model: Any, head: Any, opt: Any, data: Any, rows: np.ndarray, *rest: Any) -> tuple[float, float]:
        trained.append(sorted(set(data.labels[rows].tolist())))
        return original(model, head, opt, data, rows, *rest)

    monkeypatch.setattr(teach, "train_epoch", spy)
    # 7 red and 6 blue clips decode (the silent one has frames); 0.05 of 7 rounds to 0
    report = train_teacher(dataset, _image_config(epochs=1, val_fraction=0.05), tmp_path / "a.pt")
    assert report["clips"]["val"] == 2 and report["clips"]["train"] == 11 and trained == [[0, 1]]
    # A class of one clip trains on it whatever the fraction.
    one_blue = Manifest.from_records([r for r in dataset.records if r.label == "red" or r.id == "blue_0"])
    report = train_teacher(one_blue, _image_config(epochs=1, val_fraction=0.9), tmp_path / "b.pt")
    assert report["clips"]["train"] == 2 and trained[-1] == [0, 1] and report["val_chance"] == 1.0


def test_bad_requests_are_config_errors(dataset: Manifest, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="small_audio is an audio teacher"):
        TeachConfig(modality="image", arch="small_audio")
    with pytest.raises(ConfigError, match="no split 'holdout'"):
        train_teacher(dataset, _image_config(split="holdout"), tmp_path / "t.pt")
    with pytest.raises(ConfigError, match="needs at least 2 clips of 2 classes"):
        train_teacher(dataset, _image_config(split="train"), tmp_path / "t.pt")
    with pytest.raises(ConfigError, match="needs another suffix"):
        train_teacher(dataset, _image_config(), tmp_path / "t.json")
    with pytest.raises(ConfigError, match="batch_size"):
        _image_config(batch_size=1)
    assert not (tmp_path / "t.pt").exists()


def test_cli_teach(dataset: Manifest, tmp_path: Path) -> None:
    from ccl_cache_cli.main import cli

    manifest_csv = tmp_path / "manifest.csv"
    write_csv(dataset, manifest_csv, relative=False)
    out = tmp_path / "cli_teacher.pt"
    args = ["teach", str(manifest_csv), "--modality", "image", "--arch", "small_image", "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--frames-per-clip", "1",
            "--device", "cpu", "--quiet", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["arch"] == "small_image" and report["clips"]["failed"] == 1 and out.exists()
    bad = CliRunner().invoke(cli, args[:5] + ["small_audio"] + args[6:])
    assert bad.exit_code == 2 and "not an image teacher" in bad.output


def test_a_class_without_pretrain_clips_is_named(dataset: Manifest, tmp_path: Path) -> None:
    """`teach` said nothing when a class had no clip in its split: the teacher never saw it."""
    from ccl_cache_cli.main import cli

    records = [r for r in dataset.records if not (r.label == "blue" and r.split == "pretrain")]
    extra = [ClipRecord(f"green_{i}", r.path, "green", "pretrain") for i, r in enumerate(records[:3])]
    manifest_csv = tmp_path / "manifest.csv"
    write_csv(Manifest.from_records(records + extra + [ClipRecord("blue_t", records[0].path, "blue", "train")]),
              manifest_csv, relative=False)
    result = CliRunner().invoke(cli, ["teach", str(manifest_csv), "--modality", "image", "--arch", "small_image",
                                      "--out", str(tmp_path / "t.pt"), "--epochs", "1", "--image-size", "32",
                                      "--frames-per-clip", "1", "--device", "cpu", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes_without_clips"] == ["blue"]
    assert "1 class(es) had no usable clip in split 'pretrain'" in result.stderr and "blue" in result.stderr


def test_a_taught_teacher_sees_the_pixels_extraction_feeds_it(tmp_path: Path) -> None:
    """Bug: `teach` decoded full-size frames and resized them with torch (bilinear, antialias)
    while `extract` decoded straight to the teacher's size with FFmpeg's scaler, so a teacher
    trained here met other pixels in extraction. Both now decode through extraction's
    ``decode_clip``: one clip, one image-teacher embedding through either path."""
    from ccl_cache.experiments.teach import _decode_one
    from ccl_cache.extract import ExtractConfig, run_extraction
    from ccl_cache.manifest import load_manifest
    from ccl_cache.store import open_store
    from ccl_cache.testing.extraction import save_small_teachers

    rng = np.random.default_rng(0)
    frames = (rng.random((20, 90, 160, 3)) * 255).astype(np.uint8)  # detail that each resampler renders its own way
    write_video(tmp_path / "clip.mp4", frames=frames, fps=10.0)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,path,label,split\nc0,clip.mp4,a,train\n")
    _, weights = save_small_teachers(tmp_path, 1, 2, image_size=32)
    teacher = build_teacher("small_image", str(weights), image_size=32).eval()
    with torch.no_grad():
        taught = teacher(_decode_one(teacher, load_manifest(manifest).records[0], 4).float())
    store = tmp_path / "av.zarr"
    run_extraction(ExtractConfig(manifest=str(manifest), store=str(store), audio_teacher=None,
                                 image_teacher="small_image", image_weights=str(weights), image_size=32,
                                 frames_per_clip=4, workers=0, device="cpu", dtype="float32"))
    with open_store(store) as s:
        extracted = torch.from_numpy(s.load_teacher("image/small_image")[0][0])
    cosine = torch.nn.functional.cosine_similarity(taught, extracted, dim=1)
    assert cosine.min() >= 0.9999, cosine
