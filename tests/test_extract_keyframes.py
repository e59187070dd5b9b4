"""Extraction with ``--frame-sampling keyframes``: keyframe times in the store, a policy the store remembers."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache import extract as ex
from ccl_cache import media
from ccl_cache.errors import ConfigError, StoreMismatchError
from ccl_cache.manifest import ClipRecord, Manifest, write_csv
from ccl_cache.store import open_store
from ccl_cache.testing import sine, write_video
from ccl_cache.testing.extraction import save_small_teachers, small_extract_args
from ccl_cache_cli.main import cli

IMAGE_KEY = "image/small_image"
K = 4
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # stale-lease / random-weights notes


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Three 3 s clips (64x64, 25 fps, a keyframe every 10 frames, with audio) and the small teachers."""
    folder = tmp_path_factory.mktemp("keyframes")
    records = []
    for i, gop in enumerate((10, 10, 25)):
        path = write_video(folder / f"clip{i}.mp4", size=(64, 64), num_frames=75, gop=gop, audio=sine(440, 3.0))
        records.append(ClipRecord(f"clip{i}", str(path), "a" if i % 2 else "b"))
    manifest = folder / "manifest.csv"
    write_csv(Manifest.from_records(records, ("a", "b")), manifest)
    args = small_extract_args(*save_small_teachers(folder, 0, 1), frames_per_clip=K, batch_size=2, json=True)
    return manifest, args


def keyframe_times(path: str) -> list[float]:
    origin = media.probe(path).start_time
    with av.open(path) as container:
        return [float(p.pts * p.time_base) - origin for p in container.demux(video=0) if p.size and p.is_keyframe]


def extract(manifest: Path, store: Path, args: list[str], *extra: str):  # noqa: ANN201 - click Result
    return CliRunner().invoke(cli, ["extract", str(manifest), "--store", str(store), *args, *extra])


def test_keyframe_extraction_stores_keyframe_times(setup: tuple[Path, list[str]], tmp_path: Path) -> None:
    manifest, args = setup
    store = tmp_path / "keys.zarr"
    result = extract(manifest, store, args, "--frame-sampling", "keyframes")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["processed"] == 3
    spread = tmp_path / "spread.zarr"
    assert extract(manifest, spread, args).exit_code == 0
    with open_store(store) as s, open_store(spread) as t:
        emb, times, mask = s.load_teacher(IMAGE_KEY)
        assert emb.shape == (3, K, 512) and mask.all() and np.isfinite(emb).all()
        assert s.teacher(IMAGE_KEY).fingerprint["extraction"]["frame_sampling"] == "keyframes"
        assert "frame_sampling" not in t.teacher(IMAGE_KEY).fingerprint["extraction"]  # spread: unchanged
        _, spread_times, _ = t.load_teacher(IMAGE_KEY)
        for row, path in enumerate(s.clips.path):
            keys = keyframe_times(str(path))
            assert np.array_equal(times[row, :, 0], times[row, :, 1])  # instants, as with spread
            assert all(min(abs(t - k) for k in keys) < 1e-6 for t in times[row, :, 0])
            want = media.read_keyframes(str(path), ex.frame_times((0.0, 3.0), K))
            assert np.allclose(times[row, :, 0], want.times)
            if len(keys) >= K:  # enough keyframes: K distinct pictures, in time order
                assert np.all(np.diff(times[row, :, 0]) > 0)
            assert not np.allclose(spread_times[row, :, 0], times[row, :, 0])  # the policy mattered
        assert len(set(times[2, :, 0])) < K  # clip2: 3 keyframes for 4 frames, one repeats
        assert json.loads(result.stdout)["failed"] == 0

    # Resuming (or re-running) into it with the other policy is refused, naming the field.
    again = extract(manifest, store, args, "--frame-sampling", "spread")
    assert again.exit_code != 0
    assert isinstance(again.exception, StoreMismatchError)
    assert 'extraction.frame_sampling: "keyframes" (store)' in str(again.exception)
    assert "means 'spread', the default" in str(again.exception)
    with pytest.raises(StoreMismatchError, match="frame_sampling"):  # and a spread store the other way
        ex.run_extraction(ex.ExtractConfig(
            manifest=str(manifest), store=str(spread), audio_teacher=None, image_teacher="small_image",
            image_weights=args[args.index("--image-weights") + 1], image_size=32, frames_per_clip=K,
            batch_size=2, workers=0, device="cpu", dtype="float32", frame_sampling="keyframes"))
    assert extract(manifest, store, args, "--frame-sampling", "keyframes").exit_code == 0  # same policy resumes


def test_frame_sampling_is_validated() -> None:
    with pytest.raises(ConfigError, match="frame_sampling='nearest'.*spread, keyframes"):
        ex.ExtractConfig(manifest="m.csv", store="s.zarr", frame_sampling="nearest").validate()
    result = CliRunner().invoke(cli, ["extract", "m.csv", "--store", "s.zarr", "--frame-sampling", "nearest"])
    assert result.exit_code == 2 and "nearest" in result.output
