"""A full disk while extraction writes an HDF5 store (issue "Integrity", item 1).

HDF5 buffers writes (a chunk cache per dataset, a metadata cache per file) and h5py swallows the
errors it meets when a dataset is closed, so a full disk used to go unnoticed: the data of a
chunk was lost, its done flags written anyway (rows of zeros that distill trains on), and the
interpreter segfaulted at exit in HDF5's clean-up of the dataset whose close had failed.

The disk is made full deterministically and without root, at the exact write of a chosen phase of
a chunk commit: the test's h5py wrapper points HDF5's file descriptor at ``/dev/full`` (every write
fails with ENOSPC, as on a full disk) just before that write, so the error comes from inside HDF5
as a real one does. The failing run is a subprocess (the CLI, so that its exit status, its stderr
and a crash at exit are seen); the rerun, with the disk "freed", runs here and must give exactly
the store of an uninterrupted run. Where the test process may mount a small tmpfs (root), a run
that really fills a disk is checked the same way.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ccl_cache import extract as ex
from ccl_cache.errors import StoreError
from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.manifest import ClipRecord, Manifest, load_manifest, write_csv
from ccl_cache.store import Store, create_store, open_store
from ccl_cache.testing import make_case
from ccl_cache.testing.extraction import save_small_teachers

AUDIO_KEY, IMAGE_KEY = "audio/small_audio", "image/small_image"
KEYS = (AUDIO_KEY, IMAGE_KEY)
CHUNK = 4  # rows per chunk: the failure lands in the second chunk, the first is committed
ARRAYS = ("extraction/coverage", "extraction/decode_errors")
# Each phase of a chunk commit (StoreWriter._commit) and the dataset whose write at the second
# chunk meets the full disk; "flush" fails the flush between the image data and its done flags.
PHASES = {
    "failures-ledger": "/failures/",
    "per-clip-columns": "/clips/duration",
    "embedding": f"/teachers/{IMAGE_KEY}/embedding",
    "done-flags": f"/teachers/{IMAGE_KEY}/done",
    "flush": f"/teachers/{IMAGE_KEY}/mask",
}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # random-weights notes


@dataclasses.dataclass(frozen=True)
class Setup:
    folder: Path
    config: ex.ExtractConfig  # store unset: each test names its own
    reference: dict[str, Any]  # the content of an uninterrupted run's store
    exit_code: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """Ten clips (two broken, one per chunk of the first two), seeded teachers, a reference run."""
    folder = tmp_path_factory.mktemp("full_disk")
    generate(folder / "synth", SynthConfig(classes=2, clips_per_class=4, duration=0.5, size=32,
                                           pretrain_clips_per_class=0, no_audio=0.25, seed=3), workers=1)
    good = load_manifest(folder / "synth" / "manifest.csv")
    records = list(good.records)
    for row, case in ((1, "zero_byte"), (5, "garbage")):
        records.insert(row, ClipRecord(f"broken_{case}", str(make_case(case, folder / "media")), good.classes[0]))
    manifest = folder / "manifest.csv"
    write_csv(Manifest.from_records(records, good.classes), manifest)
    audio, image = save_small_teachers(folder, 2, 2)
    config = ex.ExtractConfig(
        manifest=str(manifest), store="", audio_teacher="small_audio", audio_weights=str(audio),
        image_teacher="small_image", image_weights=str(image), image_size=32, frames_per_clip=2,
        batch_size=CHUNK, workers=0, threads=1, device="cpu", timeout_s=30.0, dtype="float32",
    )  # fmt: skip
    store = folder / "reference.h5"
    summary = ex.run_extraction(dataclasses.replace(config, store=str(store)))
    assert summary.failed == 2 and summary.processed == len(records)
    return Setup(folder, config, content(store), summary.exit_code)


def content(store: Path) -> dict[str, Any]:
    """Every array extraction writes (failure times aside: they are wall-clock times)."""
    with open_store(store) as s:
        out: dict[str, Any] = {key: [np.asarray(a) for a in (s.teacher(key).embedding[:], s.teacher(key).times[:],
                                                             s.teacher(key).mask[:], s.teacher(key).done[:])]
                               for key in KEYS}  # fmt: skip
        out.update({name: np.asarray(s.array(name)[:]) for name in ARRAYS})
        out["duration"], out["has_audio"] = s.clips.duration, s.clips.has_audio
        out["ledger"] = [{k: v for k, v in f.items() if k != "time"} for f in s.failures()]
        out["leases"] = s.leases()
    return out


def assert_same(want: dict[str, Any], got: dict[str, Any]) -> None:
    for name, value in want.items():
        if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            for a, b in zip(value, got[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)  # bitwise (NaN == NaN)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, got[name], err_msg=name)
        else:
            assert got[name] == value, name


def assert_nothing_done_without_its_data(setup: Setup, store: Path, first_chunk: bool = True) -> None:
    """Right after the failed run: every row marked done holds exactly the reference's data
    (``first_chunk``: the chunk committed before the disk filled is kept)."""
    if not first_chunk and not store.exists():
        return  # the disk filled while the store was being created: no store was installed
    with open_store(store) as s:
        assert s.leases() == []  # the failed run let go of the store
        for key in set(KEYS) & set(s.teacher_keys()):
            t = s.teacher(key)
            done = np.asarray(t.done[:], dtype=bool)
            assert done[:CHUNK].all() or not first_chunk, f"{key}: the chunk committed before the full disk was lost"
            for got, want in zip((t.embedding[:], t.times[:], t.mask[:]), setup.reference[key]):
                np.testing.assert_array_equal(np.asarray(got)[done], want[done], err_msg=f"{key}: done rows")


def cli_args(config: ex.ExtractConfig, store: Path) -> list[str]:
    return ["extract", config.manifest, "--store", str(store), "--audio-teacher", "small_audio",
            "--audio-weights", str(config.audio_weights), "--image-teacher", "small_image",
            "--image-weights", str(config.image_weights), "--image-size", "32", "--frames-per-clip", "2",
            "--batch-size", str(CHUNK), "--workers", "0", "--threads", "1", "--device", "cpu",
            "--timeout", "30", "--dtype", "float32", "--quiet"]  # fmt: skip


def run_child(spec: dict[str, Any]) -> subprocess.CompletedProcess:
    """``ccl-cache extract`` in a fresh interpreter, its disk made full as ``spec`` says (see ``child``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, __file__, json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=240)


def assert_clean_failure(proc: subprocess.CompletedProcess, store: Path) -> None:
    """Exit status 2 with the full-disk message alone: no traceback, no swallowed error, no crash."""
    assert proc.returncode == 2, f"exit status {proc.returncode} (139/-11: segfault)\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("error: ") and message.count("\n") == 0, message
    assert str(store) in message and "the disk is full" in message and "rerun" in message, message


def rerun(setup: Setup, store: Path, first_chunk: bool = True) -> None:
    """The same command with the disk freed: it resumes (after the first chunk, ``first_chunk``)
    and ends with the uninterrupted run's store."""
    summary = ex.run_extraction(dataclasses.replace(setup.config, store=str(store)))
    assert summary.exit_code == setup.exit_code
    assert summary.skipped >= (CHUNK if first_chunk else 0) and summary.skipped + summary.processed == summary.rows
    assert_same(setup.reference, content(store))


# ============================================================================================
# ENOSPC from inside HDF5, at a chosen write of the second chunk (no root needed)


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_a_full_disk_in_each_phase_fails_cleanly_and_the_rerun_equals_an_uninterrupted_run(
        setup: Setup, tmp_path: Path, phase: str) -> None:
    """Exit status 2 and the message alone, the first chunk kept, no done flag ahead of its data
    (the audio teacher's chunk may be done when the image teacher's write fails: its data is
    there), and the rerun gives the uninterrupted run's store."""
    store = tmp_path / "store.h5"
    proc = run_child({"argv": cli_args(setup.config, store), "phase": phase})
    assert_clean_failure(proc, store)
    assert_nothing_done_without_its_data(setup, store)
    rerun(setup, store)


# ============================================================================================
# The backend: what happens to the file at and after a failed write


def small_store(path: Path) -> Store:
    """Eight rows in chunks of four, one clip-level teacher of 16 dimensions."""
    records = [ClipRecord(f"c{i}", f"/videos/c{i}.mp4", "a") for i in range(8)]
    store = create_store(path, Manifest.from_records(records, ("a",)), chunk_rows=CHUNK)
    store.create_teacher("audio/t", 16, None, dtype="float32")
    return store


@pytest.mark.parametrize("where", ["write", "flush", "reservation"])
def test_after_a_failed_write_nothing_reaches_the_file_and_every_call_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """ENOSPC in a write, in the flush after it, or in the reservation before it: the StoreError
    that says what to do, the file left byte for byte as it was when the error came (nothing more
    written, not even by the close), every later call refused, and the rows done before kept."""
    path = tmp_path / "s.h5"
    store = small_store(path)
    store.write_rows("audio/t", slice(0, CHUNK), np.ones((CHUNK, 16)), None, np.ones(CHUNK, bool))
    snapshot: list[str] = []

    def full(*args: Any, **kwargs: Any) -> None:
        snapshot.append(hashlib.sha256(path.read_bytes()).hexdigest())
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    target = {"write": (h5py.Dataset, "__setitem__"), "flush": (h5py.File, "flush"),
              "reservation": (os, "posix_fallocate")}[where]
    monkeypatch.setattr(*target, full)
    with pytest.raises(StoreError, match="the disk is full") as info:
        store.write_rows("audio/t", slice(CHUNK, 2 * CHUNK), np.full((CHUNK, 16), 2.0), None, np.ones(CHUNK, bool))
    assert str(path) in str(info.value) and "rerun" in str(info.value)
    monkeypatch.undo()  # the disk has room again: still nothing more may be written
    with pytest.raises(StoreError, match="the disk is full"):
        store.teacher_keys()  # the handle is abandoned, reads included
    store.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == snapshot[0]
    with open_store(path) as again:
        t = again.teacher("audio/t")
        assert t.done[:].tolist() == [True] * CHUNK + [False] * (8 - CHUNK)
        assert (t.embedding[:CHUNK] == 1).all()


# ============================================================================================
# A real full disk: a small tmpfs (root only)


def _mount_tmpfs(where: Path, size: int) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); the /dev/full tests above cover the same")
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {proc.stderr.strip()}")


def test_a_real_full_disk_fails_cleanly_and_the_rerun_equals_an_uninterrupted_run(setup: Setup,
                                                                                 tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, 4 * 2**20)
    try:
        full_size = os.path.getsize(setup.folder / "reference.h5")
        for share in (0.2, 0.55, 0.9):  # the disk fills while the store is created, early, late
            for leftover in list(disk.iterdir()):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            filler = disk / "filler"
            free = shutil.disk_usage(disk).free
            filler.write_bytes(bytes(free - int(share * full_size)))
            store = disk / "store.h5"
            proc = run_child({"argv": cli_args(setup.config, store), "phase": None})
            assert_clean_failure(proc, store)
            assert_nothing_done_without_its_data(setup, store, first_chunk=False)
            filler.unlink()
            rerun(setup, store, first_chunk=False)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ============================================================================================
# The child process


def _first_row(selection: Any) -> int:
    first = selection[0] if isinstance(selection, tuple) else selection
    return int(first.start or 0) if isinstance(first, slice) else -1


def _fill_disk(file: h5py.File) -> None:
    """From now on HDF5 writes this file to /dev/full: each write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):  # not Linux: the error alone, raised where HDF5 would
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file.filename)
    full = os.open("/dev/full", os.O_RDWR)
    try:
        os.dup2(full, int(file.id.get_vfd_handle()))
    finally:
        os.close(full)


def _inject(phase: str) -> None:
    """Fill the disk at the first write of ``PHASES[phase]`` in the second chunk (or at the
    flush right after it, for "flush")."""
    target, state = PHASES[phase], {"armed": False, "filled": False}
    real_set, real_flush = h5py.Dataset.__setitem__, h5py.File.flush

    def setitem(self: h5py.Dataset, selection: Any, value: Any) -> None:
        hit = not state["filled"] and self.name.startswith(target) and _first_row(selection) >= CHUNK
        if hit and phase != "flush":
            state["filled"] = True
            _fill_disk(self.file)
        real_set(self, selection, value)
        state["armed"] = state["armed"] or (hit and phase == "flush")

    def flush(self: h5py.File) -> None:
        if state["armed"] and not state["filled"]:
            state["filled"] = True
            _fill_disk(self)
        real_flush(self)

    h5py.Dataset.__setitem__, h5py.File.flush = setitem, flush  # type: ignore[method-assign]


def child(spec: dict[str, Any]) -> None:
    """The CLI with its disk made full at ``spec["phase"]`` (None: a real disk fills, so the
    up-front space estimate is skipped: it would refuse the run before it starts)."""
    from ccl_cache.extract import run as ex_run
    from ccl_cache_cli.main import main

    if spec["phase"] is None:
        ex_run._check_space = lambda *args, **kwargs: None  # type: ignore[assignment]
    else:
        _inject(spec["phase"])
    main(spec["argv"])


if __name__ == "__main__":
    child(json.loads(sys.argv[1]))
