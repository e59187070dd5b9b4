"""SIGKILL a real `ccl-cache extract` mid-run, rerun it, and get bit-identical embeddings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ccl_cache.store import open_store
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.testing.extraction import save_small_teachers, small_extract_args

KEYS = ("audio/small_audio", "image/small_image")
CLIPS = 40
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("resume")
    generate(folder / "synth", SynthConfig(classes=4, clips_per_class=10, duration=0.5, size=32,
                                           pretrain_clips_per_class=0, no_audio=0.1, seed=11), workers=1)
    args = small_extract_args(*save_small_teachers(folder, 3, 3), frames_per_clip=4, batch_size=4, json=True)
    return folder / "synth" / "manifest.csv", args


def extract(manifest: Path, store: Path, args: list[str]) -> subprocess.Popen:
    # One inference thread in every run: the same kernels, hence bit-identical float32 results.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "ccl_cache_cli.main", "extract", str(manifest), "--store", str(store), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    return json.loads(out)


def done_rows(store: Path) -> int:
    """Rows done for every teacher, as a concurrent reader sees them (0 while the store is being made)."""
    try:
        with open_store(store) as s:
            if set(KEYS) - set(s.teacher_keys()):
                return 0
            return int(np.minimum(*(s.teacher(k).done[:] for k in KEYS)).sum())
    except Exception:  # noqa: BLE001 - the store may not exist yet or be mid-creation
        return 0


@pytest.fixture(scope="module")
def reference(setup: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    manifest, args = setup
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert finish(extract(manifest, store, args))["processed"] == CLIPS
    return store


def assert_identical(a: Path, b: Path) -> None:
    with open_store(a) as x, open_store(b) as y:
        for key in KEYS:
            assert y.teacher(key).done[:].all()
            for u, v in zip(x.load_teacher(key), y.load_teacher(key)):
                np.testing.assert_array_equal(u, v)  # bitwise: same kernels, same batches
        assert x.failures() == y.failures() == []


def kill_and_resume(manifest: Path, store: Path, args: list[str], kill_when) -> tuple[int, dict]:  # noqa: ANN001
    proc = extract(manifest, store, args)
    deadline = time.monotonic() + 180
    while proc.poll() is None and not kill_when() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = done_rows(store)
    return committed, finish(extract(manifest, store, args))


def test_sigkill_mid_run_then_rerun_gives_identical_embeddings(setup, reference, tmp_path: Path) -> None:  # noqa: ANN001
    manifest, args = setup
    store = tmp_path / "killed.zarr"
    committed, summary = kill_and_resume(manifest, store, args, lambda: done_rows(store) > 0)
    assert 0 < committed < CLIPS
    assert summary["skipped"] >= committed and summary["processed"] == CLIPS - summary["skipped"]
    assert_identical(reference, store)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_sigkill_at_random_moments(setup, reference, tmp_path: Path, seed: int) -> None:  # noqa: ANN001
    """Kills at any moment, including during start-up and store creation, lose nothing committed."""
    manifest, args = setup
    store = tmp_path / "killed.zarr"
    delay = np.random.default_rng(seed).uniform(0.5, 6.0)
    began = time.monotonic()
    proc = extract(manifest, store, args)
    while proc.poll() is None and time.monotonic() - began < delay:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    summary = finish(extract(manifest, store, args))
    assert summary["skipped"] + summary["processed"] == CLIPS
    assert_identical(reference, store)


def test_ctrl_c_during_overwrite_says_to_resume_without_it_and_that_resumes(setup, reference, tmp_path: Path) -> None:  # noqa: ANN001
    """An interrupted `--overwrite` run already holds the new configuration: the same command
    again would start over, so Ctrl-C says to drop --overwrite, and that rerun resumes."""
    manifest, args = setup
    store = tmp_path / "again.zarr"
    shutil.copytree(reference, store)
    proc = extract(manifest, store, [*args, "--overwrite"])
    wiped, deadline = False, time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        done = done_rows(store)
        wiped = wiped or done < CLIPS
        if wiped and 4 <= done < CLIPS:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted; make it longer"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command without --overwrite to resume" in err and "Aborted." in err
    committed = done_rows(store)
    summary = finish(extract(manifest, store, args))
    assert 4 <= committed <= summary["skipped"] and summary["skipped"] + summary["processed"] == CLIPS
    assert_identical(reference, store)
