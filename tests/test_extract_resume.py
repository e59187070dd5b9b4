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

from ccl_cache import faults
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


def extract(manifest: Path, store: Path, args: list[str], pause: str | None = None) -> subprocess.Popen:
    """``pause``: ``<point>:<n>:<marker>`` (ccl_cache.faults) makes the run wait there until a signal."""
    # One inference thread in every run: the same kernels, hence bit-identical float32 results.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if pause is not None:
        env[faults.ENV] = pause
    cmd = [sys.executable, "-c", _CLI_WITH_CTRL_C, "extract", str(manifest), "--store", str(store), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# The CLI with Ctrl-C (SIGINT) raising KeyboardInterrupt, as in a terminal, whoever started the tests:
# Python leaves SIGINT ignored when it starts with it ignored, which a shell does to a job it puts in
# the background without job control (`.ci/run &` from a script); SIGINT would then not reach the run.
_CLI_WITH_CTRL_C = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "from ccl_cache_cli.main import main; main(sys.argv[1:])")


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


def wait_paused(proc: subprocess.Popen, marker: Path) -> None:
    """Until the run writes its pause marker (it then waits for a signal): no timing race."""
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before its pause point: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "the run did not reach its pause point in 240 s"
        time.sleep(0.02)


REFERENCE_SECONDS: list[float] = []  # wall time of the uninterrupted run (scales the random kills)


@pytest.fixture(scope="module")
def reference(setup: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    manifest, args = setup
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    began = time.monotonic()
    assert finish(extract(manifest, store, args))["processed"] == CLIPS
    REFERENCE_SECONDS.append(time.monotonic() - began)
    return store


def assert_identical(a: Path, b: Path) -> None:
    with open_store(a) as x, open_store(b) as y:
        for key in KEYS:
            assert y.teacher(key).done[:].all()
            for u, v in zip(x.load_teacher(key), y.load_teacher(key)):
                np.testing.assert_array_equal(u, v)  # bitwise: same kernels, same batches
        assert x.failures() == y.failures() == []


def kill_and_resume(manifest: Path, store: Path, args: list[str], after_chunks: int) -> tuple[int, dict]:
    """SIGKILL the run while it waits after its ``after_chunks``-th committed chunk, then rerun it."""
    marker = store.with_name(store.name + ".paused")
    proc = extract(manifest, store, args, pause=f"extract.chunk:{after_chunks}:{marker}")
    wait_paused(proc, marker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = done_rows(store)
    return committed, finish(extract(manifest, store, args))


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_sigkill_mid_run_then_rerun_gives_identical_embeddings(setup, reference, tmp_path: Path) -> None:  # noqa: ANN001
    manifest, args = setup
    store = tmp_path / "killed.zarr"
    committed, summary = kill_and_resume(manifest, store, args, after_chunks=2)
    assert 0 < committed < CLIPS
    assert summary["skipped"] >= committed and summary["processed"] == CLIPS - summary["skipped"]
    assert_identical(reference, store)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_sigkill_at_random_moments(setup, reference, tmp_path: Path, seed: int) -> None:  # noqa: ANN001
    """Kills at any moment, including during start-up and store creation, lose nothing committed.

    The moment is a random fraction of the uninterrupted run's measured time, and the kill must
    land while the run is alive: a run that ends first (a machine faster now than when measured)
    is started again, from scratch, with half the delay, so every seed kills a live run."""
    manifest, args = setup
    store = tmp_path / "killed.zarr"
    delay = np.random.default_rng(seed).uniform(0.05, 0.9) * REFERENCE_SECONDS[0]
    while True:
        began = time.monotonic()
        proc = extract(manifest, store, args)
        while proc.poll() is None and time.monotonic() - began < delay:
            time.sleep(0.01)
        if proc.poll() is None:
            break
        finish(proc)
        shutil.rmtree(store, ignore_errors=True)
        delay /= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # the kill landed mid-run
    summary = finish(extract(manifest, store, args))
    assert summary["skipped"] + summary["processed"] == CLIPS
    assert_identical(reference, store)


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_ctrl_c_during_overwrite_says_to_resume_without_it_and_that_resumes(setup, reference, tmp_path: Path) -> None:  # noqa: ANN001
    """An interrupted `--overwrite` run already holds the new configuration: the same command
    again would start over, so Ctrl-C says to drop --overwrite, and that rerun resumes."""
    manifest, args = setup
    store = tmp_path / "again.zarr"
    shutil.copytree(reference, store)
    marker = tmp_path / "paused"
    # Paused after its first chunk is committed: the old store is replaced, the new one partly written.
    proc = extract(manifest, store, [*args, "--overwrite"], pause=f"extract.chunk:1:{marker}")
    wait_paused(proc, marker)
    assert 4 <= done_rows(store) < CLIPS
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command without --overwrite to resume" in err and "Aborted." in err
    committed = done_rows(store)
    summary = finish(extract(manifest, store, args))
    assert 4 <= committed <= summary["skipped"] and summary["skipped"] + summary["processed"] == CLIPS
    assert_identical(reference, store)
