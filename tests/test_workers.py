"""The one worker pool (ccl_cache.workers): every task answered, a worker that dies or hangs fails
only its task and is replaced, exceptions reach the caller, tasks are read lazily; and the frame
cache built by workers equals the one built in-process."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from ccl_cache.errors import ExtractError
from ccl_cache.extract import FrameCacheConfig, build_frame_cache
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store, open_store
from ccl_cache.testing import write_video
from ccl_cache.workers import TaskFailure, WorkerPool

# The task functions live in a tiny module that the worker processes import (they get the
# caller's sys.path).
TASKS = """
import os, time
from ccl_cache.errors import MediaError

def double(task, offset=0):
    if task == "hang":  # a decoder stuck on one file
        time.sleep(3600)
    if task == "die":  # a segfault in miniature
        os._exit(3)
    if task == "raise":
        raise ValueError("no good: raise")
    if task == "unpicklable":  # MediaError cannot be rebuilt from its pickled args
        raise MediaError("/x.mp4", "decode", "cannot rebuild me")
    return task * 2 + offset

def broken_start():
    raise RuntimeError("this worker cannot start")

def what_runs_here(task):  # (task, the caller's script file here, whether its import is here)
    import sys
    main = sys.modules["__main__"]
    return task, getattr(main, "__file__", None), "script_only_mod" in sys.modules
"""

# A script that starts a pool: every run of its module (as the script, or again in a worker)
# appends a line to runs.txt. It imports script_only_mod, as a script imports torch.
SCRIPT = """
import sys
import script_only_mod
with open(sys.argv[1], "a") as f:
    f.write("ran\\n")

def own_task(task):
    return task, "script_only_mod" in sys.modules

if __name__ == "__main__":
    from ccl_cache.workers import WorkerPool
    from pool_tasks_mod import what_runs_here
    fn = own_task if sys.argv[2] == "own" else what_runs_here
    with WorkerPool(fn, 1) as pool:  # one worker: it answers every task, so it surely started
        pool.start(range(6))
        answers = sorted(pool)
    print(repr((answers, pool.started)))
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("pool")
    (folder / "pool_tasks_mod.py").write_text(TASKS)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        import pool_tasks_mod  # type: ignore[import-not-found]

        yield pool_tasks_mod


@pytest.mark.parametrize("workers", [0, 2])
def test_every_task_is_answered_once_and_the_source_is_read_lazily(tasks: Any, workers: int) -> None:
    read: list[int] = []

    def source() -> Iterator[int]:
        for i in range(20):
            read.append(i)
            yield i

    with WorkerPool(tasks.double, workers, args=(1,), readahead=3) as pool:
        pool.start(source())
        assert len(read) == 3 + workers  # readahead + one per worker, not the whole source
        answers = list(pool)
    assert sorted(answers) == [(i, 2 * i + 1) for i in range(20)]
    if workers == 0:
        assert answers == sorted(answers)  # in-process: task order


def test_a_dying_or_hanging_worker_fails_only_its_task_and_is_replaced(tasks: Any) -> None:
    with WorkerPool(tasks.double, 2, timeout_s=5.0) as pool:
        pool.start([1, "hang", 2, "die", 3, 4])
        answers = {str(task): answer for task, answer in pool}
    assert answers.pop("hang") == TaskFailure("timeout", 5.0)
    assert answers.pop("die") == TaskFailure("crash", 5.0)
    assert answers == {"1": 2, "2": 4, "3": 6, "4": 8}
    assert pool.replaced == 2
    assert pool.started == 2 + 2  # the two workers, then one replacement for each lost one


@pytest.mark.parametrize("where", ["library", "own"])
def test_workers_run_the_callers_script_only_for_a_function_defined_there(tasks: Any, tmp_path: Path,
                                                                         where: str) -> None:
    """multiprocessing runs the caller's ``__main__`` again in each worker, as the fork server never
    preloads it (CPython gh-98552): each worker of ``ccl-cache`` re-imported the CLI, and each worker
    of a script that imports torch imported torch. Workers of a library function do not run it."""
    import ast
    import ccl_cache

    (tmp_path / "script_only_mod.py").write_text("")
    script, runs = tmp_path / "start_pool.py", tmp_path / "runs.txt"
    script.write_text(SCRIPT)
    root = str(Path(ccl_cache.__file__).resolve().parents[1])
    paths = [root, str(Path(tasks.__file__).parent), str(tmp_path), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    out = subprocess.run([sys.executable, str(script), str(runs), where], env=env, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    answers, started = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert started == 1 and [a[0] for a in answers] == list(range(6))
    if where == "library":
        assert runs.read_text().count("ran") == 1  # the script ran once: in the caller
        assert all(answer[1:] == (None, False) for _, answer in answers)  # no script, nor what it imported
    else:
        assert runs.read_text().count("ran") == 2  # the caller and the worker: the function lives there
        assert all(answer == (task, True) for task, answer in answers)


def test_the_frame_cache_workers_preload_the_light_task_module_and_decode_with_one_thread(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The frame cache's workers run ``extract.frame_tasks`` (PyAV, Pillow, numpy: no torch, no store
    backend), preloaded once by the fork server, with one decoder thread each (the workers are
    the parallelism); they are started once per pool: for the probe and for the decode."""
    from ccl_cache import media
    from ccl_cache.extract import frame_cache, frame_tasks
    from ccl_cache.workers import preload_modules

    pools: list[WorkerPool[Any, Any]] = []

    class Recorded(WorkerPool):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(frame_cache, "WorkerPool", Recorded)
    records = [ClipRecord(f"c{i}", str(write_video(tmp_path / f"v{i}.mp4", size=(32, 32), num_frames=8, fps=25)),
                          "a", "train") for i in range(2)]  # fmt: skip
    path = tmp_path / "s.zarr"
    create_store(path, Manifest.from_records(records), chunk_rows=4).close()
    summary = build_frame_cache(path, FrameCacheConfig(codec="jpeg", size=(16, 16), workers=2))
    assert summary.cached == 2
    assert [p.fn for p in pools] == [frame_tasks.probe_row, frame_tasks.decode_piece]
    for pool in pools:
        assert (pool.initializer, pool.initargs) == (media.set_decoder_threads, (1,))
        assert pool.started == 2  # no replacement, no start per task
        assert preload_modules(pool.fn, pool.initializer) == ["ccl_cache.extract.frame_tasks", "ccl_cache.media.decoder",
                                                              "ccl_cache.workers"]  # fmt: skip
    root = str(Path(frame_tasks.__file__).resolve().parents[2])
    code = ("import ccl_cache.extract.frame_tasks, sys; "
            "print(sorted(m for m in ('torch', 'zarr', 'h5py', 'ccl_cache.store') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_exception_in_a_task_is_raised_in_the_caller(tasks: Any) -> None:
    for workers in (0, 1):
        with WorkerPool(tasks.double, workers) as pool:
            pool.start(["raise"])
            with pytest.raises(ValueError, match="no good: raise"):
                pool.get()
    with WorkerPool(tasks.double, 1, error=ExtractError) as pool:
        pool.start(["unpicklable", 5])
        with pytest.raises(ExtractError, match="cannot rebuild me"):  # its traceback comes back
            pool.get()
        assert pool.get() == (5, 10)  # the worker goes on


def test_a_worker_that_cannot_start_stops_the_pool_and_says_what_to_do(tasks: Any) -> None:
    with WorkerPool(tasks.double, 1, initializer=tasks.broken_start, name="decode", job="the extraction",
                    inline="workers=0 decodes in this process instead", error=ExtractError) as pool:  # fmt: skip
        pool.start([1])
        with pytest.raises(ExtractError, match="exited while starting.*the extraction.*workers=0 decodes"):
            pool.get()


def test_the_frame_cache_built_by_workers_equals_the_one_built_in_process(tmp_path: Path) -> None:
    records = [ClipRecord(f"c{i}", str(write_video(tmp_path / f"v{i}.mp4", size=(32, 32), num_frames=12 + 4 * i,
                                                   fps=25)), "a", "train") for i in range(3)]  # fmt: skip
    records.append(ClipRecord("gone", str(tmp_path / "missing.mp4"), "a", "train"))  # fails its probe
    config = FrameCacheConfig(codec="raw", size=(16, 16), chunk_frames=4, piece_frames=8)
    built = {}
    for workers in (0, 2):
        path = tmp_path / f"workers{workers}.zarr"
        create_store(path, Manifest.from_records(records), chunk_rows=4).close()
        built[workers] = build_frame_cache(path, dataclasses.replace(config, workers=workers))
        with open_store(path) as store:
            built[workers] = (built[workers], {p: store.array(f"frames/{p}")[:] for p in ("data", "times", "count")})
    (in_process, cached), (by_workers, cached_by_workers) = built[0], built[2]
    assert (by_workers.cached, by_workers.frames, by_workers.failed) == (in_process.cached, in_process.frames,
                                                                         in_process.failed)  # fmt: skip
    assert in_process.cached == 3 and list(in_process.failed) == [3]
    for name, values in cached.items():
        np.testing.assert_array_equal(cached_by_workers[name], values, err_msg=name)


def test_absurd_worker_counts_are_refused_by_one_rule_everywhere(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ccl_cache import hardware
    from ccl_cache.data import default_workers
    from ccl_cache.errors import ConfigError
    from ccl_cache.experiments.synth import generate
    from ccl_cache.extract import ExtractConfig
    from ccl_cache.train import TrainConfig
    from ccl_cache.workers import MAX_WORKERS, check_workers, max_workers
    from ccl_cache_cli.main import cli

    monkeypatch.setattr(hardware, "usable_cores", lambda: 1000)
    assert max_workers() == MAX_WORKERS == 256
    monkeypatch.setattr(hardware, "usable_cores", lambda: 2)
    assert max_workers() == 8 and check_workers(8) == 8 and check_workers(0) == 0
    message = r"workers=9: at most 8 worker processes here \(4 per usable core, 2 usable.*pass --workers 2"
    # Every place that starts worker processes asks the same rule: the pool (extract, cache-clips,
    # synth), the training DataLoader (distill, embed), and the configs before any work starts.
    for make in (lambda: check_workers(9), lambda: WorkerPool(abs, 9), lambda: default_workers(9),
                 lambda: ExtractConfig(manifest="m.csv", store="s.zarr", workers=9).validate(),
                 lambda: TrainConfig(store="s.zarr", workers=9).validate(),
                 lambda: generate(tmp_path / "synth", workers=9)):
        with pytest.raises(ConfigError, match=message):
            make()
    assert not (tmp_path / "synth").exists()
    with pytest.raises(ConfigError, match="workers=-1: need 0"):
        check_workers(-1)
    for args in (["synth", str(tmp_path / "cli"), "--workers", "9"],
                 ["extract", str(tmp_path / "m.csv"), "--store", str(tmp_path / "s.zarr"), "--workers", "9"]):
        result = CliRunner().invoke(cli, args)  # main() prints a ConfigError as one line, exit status 2
        assert isinstance(result.exception, ConfigError), result.output
        assert str(result.exception).startswith("workers=9: at most 8 worker processes here")
