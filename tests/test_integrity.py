"""Integrity: damaged bytes are detected and named, never trained on or searched with (issue:
integrity). Each test damages a file the way disks and people do, then checks the message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ccl_cache.errors import CheckpointError
from ccl_cache.train.checkpoint import load_checkpoint, save_checkpoint


def _payload() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {"model": {"conv.weight": torch.randn(64, 3, generator=gen), "fc.bias": torch.zeros(4)},
            "state": {"epoch": 3}}


def test_a_checkpoint_round_trips_with_its_digest(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best.pt", _payload())
    data = load_checkpoint(tmp_path / "best.pt")
    assert torch.equal(data["model"]["conv.weight"], _payload()["model"]["conv.weight"]) and len(data["sha256"]) == 64


def test_finite_garbage_in_a_checkpoint_is_named(tmp_path: Path) -> None:
    """Weights changed after the save (finite values, a valid file) were loaded without a word."""
    path = tmp_path / "best.pt"
    save_checkpoint(path, _payload())
    data = torch.load(path, weights_only=True)
    data["model"]["conv.weight"][5, 1] += 0.25
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"best\.pt: damaged: its weights do not match the SHA-256"):
        load_checkpoint(path)


def test_flipped_bytes_in_a_checkpoint_are_named(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    payload = _payload()
    save_checkpoint(path, payload)
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(payload["model"]["conv.weight"].numpy().tobytes()[:64])
    assert at > 0  # the tensor's bytes are stored as they are
    raw[at + 17] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"last\.pt: (damaged|cannot be read)"):
        load_checkpoint(path)


def test_a_checkpoint_with_nan_weights_is_named_not_used(tmp_path: Path) -> None:
    """`retrieve` with such a checkpoint said "queries contain NaN"; the checkpoint is named now."""
    payload = _payload()
    payload["model"]["conv.weight"][0, 0] = float("nan")
    save_checkpoint(tmp_path / "best.pt", payload)
    with pytest.raises(CheckpointError, match=r"best\.pt: the student's weights hold NaN.*'conv\.weight'"):
        load_checkpoint(tmp_path / "best.pt")


def test_checkpoints_saved_before_digests_still_load(tmp_path: Path) -> None:
    from ccl_cache.train.checkpoint import FORMAT, VERSION

    torch.save({"format": FORMAT, "version": VERSION, **_payload()}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["state"]["epoch"] == 3


def test_an_image_size_no_teacher_can_take_is_refused_up_front() -> None:
    """`extract --image-size 100000` recorded every good file as damaged (the scaler's "Invalid
    argument"); the value is refused before anything runs, with its range."""
    from ccl_cache.errors import ConfigError
    from ccl_cache.extract import ExtractConfig

    with pytest.raises(ConfigError, match=r"image_size=100000: give 8 to 2048 pixels"):
        ExtractConfig(manifest="m.csv", store="s.zarr", image_size=100000).validate()


def test_the_space_message_shows_small_sizes_and_no_fix_already_taken(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """It said "needs about 0.00 GiB more ... or use --dtype float16" with float16 already chosen."""
    from ccl_cache.errors import StoreError
    from ccl_cache.extract import ExtractConfig
    from ccl_cache.extract import run as extract_run
    from ccl_cache.manifest import ClipRecord, Manifest
    from ccl_cache.store import space

    monkeypatch.setattr(space, "free_bytes", lambda path: 1000)
    manifest = Manifest((ClipRecord("a", str(tmp_path / "a.mp4"), "x"),), ("x",))
    config = ExtractConfig(manifest="m.csv", store=str(tmp_path / "s.zarr"), audio_teacher=None,
                           image_teacher="small_image", image_weights=None, dtype="float16")
    with pytest.raises(StoreError) as info:
        extract_run._check_space(tmp_path / "s.zarr", manifest, config, None, None)
    message = str(info.value)
    assert "KiB more" in message and "1000 B are free" in message and "0.00 GiB" not in message
    assert "--dtype float16" not in message and "fewer --frames-per-clip" in message
