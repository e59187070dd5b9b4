"""Scale-out: two `ccl-cache extract --shard I/N` processes equal one process, on Zarr and HDF5."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache import extract as ex
from ccl_cache.errors import ConfigError, StoreLockedError
from ccl_cache.store import open_store
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache_cli.main import cli
from ccl_cache.testing.extraction import save_small_teachers, small_extract_args

KEYS = ("audio/small_audio", "image/small_image")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A 12-clip synthetic set, seeded teacher weights, and the CLI arguments that use them."""
    folder = tmp_path_factory.mktemp("shards")
    generate(folder / "synth", SynthConfig(classes=3, clips_per_class=4, duration=0.5, size=32,
                                           pretrain_clips_per_class=0, no_audio=0.2, seed=5), workers=1)
    args = small_extract_args(*save_small_teachers(folder, 7, 7), frames_per_clip=2, batch_size=2)
    return folder / "synth" / "manifest.csv", args


def ccl(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "ccl_cache_cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_all(*commands: list[str]) -> None:
    """Start the commands together (they really run concurrently) and require exit status 0."""
    procs = [ccl(*cmd) for cmd in commands]
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{proc.args}\n{out}\n{err}"


def assert_same_stores(a: Path, b: Path) -> None:
    with open_store(a) as x, open_store(b) as y:
        assert x.n == y.n
        for key in KEYS:
            assert y.teacher(key).done[:].all()
            for u, v in zip(x.load_teacher(key), y.load_teacher(key)):
                np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(x.clips.has_audio, y.clips.has_audio)
        np.testing.assert_allclose(x.clips.duration, y.clips.duration)


def config_from(manifest: Path, store: Path, args: list[str], **changes: object) -> ex.ExtractConfig:
    """The ExtractConfig that the CLI arguments of ``setup`` describe."""
    opts = dict(zip(args[0:-1:2], args[1::2]))
    config = ex.ExtractConfig(
        str(manifest), str(store), audio_teacher="small_audio", audio_weights=opts["--audio-weights"],
        image_teacher="small_image", image_weights=opts["--image-weights"], image_size=32, frames_per_clip=2,
        batch_size=2, workers=0, device="cpu", dtype="float32",
    )  # fmt: skip
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def single(setup: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, no shards (in this process: results agree to float tolerance)."""
    manifest, args = setup
    store = tmp_path_factory.mktemp("single") / "one.zarr"
    assert ex.run_extraction(config_from(manifest, store, args)).exit_code == 0
    return store


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_two_processes_share_one_zarr_store(setup: tuple[Path, list[str]], single: Path, tmp_path: Path) -> None:
    manifest, args = setup
    store = tmp_path / "shared.zarr"  # absent: both processes race to create it
    run_all(*(["extract", str(manifest), "--store", str(store), "--shard", f"{i}/2", *args] for i in range(2)))
    assert_same_stores(single, store)
    assert (tmp_path / "shared.zarr.extract-shard-0-of-2.yaml").is_file()
    with open_store(store) as s:
        assert s.leases() == []  # both leases were given back


def test_hdf5_shards_merge_into_one_store(setup: tuple[Path, list[str]], single: Path, tmp_path: Path) -> None:
    manifest, args = setup
    store = tmp_path / "out.h5"
    for i in range(2):  # HDF5 shards are separate files: no concurrency to test here
        assert ex.run_extraction(config_from(manifest, store, args, shard=f"{i}/2")).exit_code == 0
    shards = [tmp_path / f"out.shard-{i}-of-2.h5" for i in range(2)]
    assert all(p.is_file() for p in shards) and not store.exists()
    with open_store(shards[0]) as first:
        done = first.teacher(KEYS[1]).done[:]
        assert 0 < done.sum() < first.n  # each shard file holds only its own rows
    merged = tmp_path / "merged.h5"
    result = CliRunner().invoke(cli, ["merge", str(merged), *map(str, shards), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == str(merged)
    assert_same_stores(single, merged)
    # the extraction config comes along: audio queries on the merged store find the teacher's weights
    import yaml

    saved = yaml.safe_load((tmp_path / "merged.h5.extract.yaml").read_text())
    assert saved["store"] == str(merged) and saved["shard"] is None and len(saved["merged_from"]) == 2
    assert saved["audio_weights"] == yaml.safe_load(
        (tmp_path / "out.shard-0-of-2.h5.extract.yaml").read_text())["audio_weights"]


def test_shard_leases_refuse_overlapping_writers_only(setup: tuple[Path, list[str]], tmp_path: Path) -> None:
    """A whole-store writer overlaps a running shard and is refused; a disjoint shard is not."""
    manifest, args = setup
    store = tmp_path / "busy.zarr"
    config = config_from(manifest, store, args, audio_teacher=None, shard="0/2")
    ex.run_extraction(config)
    with open_store(store, "r+") as held:
        held.acquire_lease(shard="1/2")  # a live writer of shard 1/2 (this process)
        with pytest.raises(StoreLockedError, match="shard 1/2"):
            ex.run_extraction(dataclasses.replace(config, shard=None))
        assert ex.run_extraction(config).skipped > 0  # shard 0/2 does not overlap 1/2


def test_overwrite_is_refused_for_zarr_shards(setup: tuple[Path, list[str]], tmp_path: Path) -> None:
    manifest, _ = setup
    config = ex.ExtractConfig(str(manifest), str(tmp_path / "x.zarr"), shard="0/2", overwrite=True)
    with pytest.raises(ConfigError, match="delete"):
        ex.run_extraction(config)
