"""The store API on both backends: schema round trips, ledgers, validation, damage, leases, fork."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from ccl_cache.errors import ConfigError, StoreError, StoreLockedError, StoreMismatchError
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import (
    BACKENDS, SCHEMA_VERSION, StaleLeaseWarning, create_store, lease_dir, open_store, shard_slices,
)

N, CR = 10, 4  # 10 clips in chunks of 4: chunks 0:4, 4:8 and the tail 8:10
FP = {"arch": "small", "weights": "random", "preprocess": {"sample_rate": 16000, "mean": [0.5]}}


def make_manifest(n: int = N, prefix: str = "c") -> Manifest:
    records = [
        ClipRecord(id=f"{prefix}{i}", path=f"/data/vidéo {i}.mp4", label=("cat", "dog", "émeu")[i % 3],
                   split=("train", "val", "test")[i % 3], start=None if i % 2 else 1.5,
                   end=None if i % 2 else 4.0)
        for i in range(n)
    ]
    return Manifest.from_records(records)


def store_path(tmp_path: Path, backend: str, name: str = "cache") -> Path:
    return tmp_path / f"{name}{BACKENDS.get(backend).suffixes[0]}"


def rows_data(rows: slice, dim: int = 3, frames: int | None = None) -> np.ndarray:
    r = np.arange(rows.start, rows.stop, dtype=np.float32)
    base = r[:, None] * 10 + np.arange(dim, dtype=np.float32)[None, :]
    return base if frames is None else base[:, None, :] + np.arange(frames, dtype=np.float32)[None, :, None] / 4


@pytest.fixture(params=BACKENDS.names())
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(tmp_path: Path, backend: str):
    s = create_store(store_path(tmp_path, backend), make_manifest(), chunk_rows=CR)
    yield s
    s.close()


def fill_teacher(store, key: str = "audio/small", frames: int | None = None, dim: int = 3) -> None:
    store.create_teacher(key, dim, frames, fingerprint=FP)
    k = frames or 1
    for rows in store.shard_slices():
        times = np.stack([np.arange(rows.start, rows.stop), np.arange(rows.start, rows.stop) + 1], axis=1)
        times = np.repeat(times[:, None, :], k, axis=1).astype(float)
        mask = np.arange(rows.start, rows.stop) % 5 != 0
        if frames is not None:
            mask = mask[:, None].repeat(k, 1)
        store.write_rows(key, rows, rows_data(rows, dim, frames), times, mask)


# --------------------------------------------------------------------------- clips and provenance
def test_clips_table_and_provenance_round_trip(tmp_path: Path, backend: str) -> None:
    manifest = make_manifest()
    path = store_path(tmp_path, backend)
    create_store(path, manifest, chunk_rows=CR).close()
    with open_store(path) as s:
        clips = s.clips
        assert list(clips.id) == [r.id for r in manifest.records]
        assert list(clips.path) == [r.path for r in manifest.records]  # non-ASCII and spaces survive
        assert clips.label.dtype == np.int64 and list(clips.label) == list(manifest.labels())
        assert list(clips.split) == [r.split for r in manifest.records]
        assert clips.start[0] == 1.5 and np.isnan(clips.start[1]) and clips.end[0] == 4.0
        assert np.isnan(clips.duration).all() and not clips.has_audio.any()
        assert s.classes == list(manifest.classes) == ["cat", "dog", "émeu"]
        assert s.attrs["format"] == "ccl-cache" and s.attrs["schema_version"] == SCHEMA_VERSION
        assert s.attrs["manifest_sha256"] == manifest.sha256()
        assert s.attrs["n"] == N and s.attrs["chunk_rows"] == CR and s.n == N and s.chunk_rows == CR
        assert {"ccl-cache", "torch", "av", "numpy"} <= set(s.attrs["versions"])
        assert s.backend == backend and s.teacher_keys() == [] and s.student_runs() == []
        assert clips.row_of()["c7"] == 7


def test_record_clips_updates_probed_columns(store) -> None:
    store.record_clips(np.array([9, 2]), duration=[9.5, 2.5], has_audio=[True, False])
    store.record_clips(slice(4, 6), duration=[4.5, 5.5], has_audio=[True, True])
    clips = store.clips
    assert clips.duration[9] == 9.5 and clips.duration[2] == 2.5 and clips.duration[5] == 5.5
    assert list(np.flatnonzero(clips.has_audio)) == [4, 5, 9]
    assert np.isnan(clips.duration[[0, 1, 3, 6, 7, 8]]).all()
    with pytest.raises(StoreError, match="2 values for 1 rows"):
        store.record_clips(np.array([1]), duration=[1.0, 2.0])


# --------------------------------------------------------------------------- teachers
def test_clip_level_teacher_round_trip(store) -> None:
    fill_teacher(store)
    t = store.teacher("audio/small")
    assert (t.dim, t.frames, t.dtype) == (3, None, "float16") and t.fingerprint == FP
    assert t.embedding.shape == (N, 3) and t.times.shape == (N, 1, 2) and t.mask.shape == (N,)
    assert t.done[:].all() and store.teacher_keys() == ["audio/small"]
    emb, times, mask = store.load_teacher("audio/small")
    expected = rows_data(slice(0, N)).astype(np.float16).astype(np.float32)
    assert emb.dtype == np.float32 and np.array_equal(emb, expected)
    assert np.array_equal(times[:, 0, 0], np.arange(N)) and np.array_equal(mask, np.arange(N) % 5 != 0)
    half, _, _ = store.load_teacher("audio/small", dtype="float16")
    assert half.dtype == np.float16 and np.array_equal(half.astype(np.float32), expected)


def test_read_rows_keeps_order_and_duplicates(store) -> None:
    fill_teacher(store)
    expected = rows_data(slice(0, N)).astype(np.float16).astype(np.float32)
    index = np.array([9, 0, 9, 3, 3, 7])
    emb, times, mask = store.read_rows("audio/small", index)
    assert emb.dtype == np.float32 and np.array_equal(emb, expected[index])
    assert np.array_equal(times[:, 0, 0], index) and np.array_equal(mask, index % 5 != 0)
    for sel, rows in ((slice(2, 9), np.arange(2, 9)), (slice(None, None, 3), np.arange(0, N, 3)),
                      ([-1, 0], np.array([9, 0])), (np.arange(N) % 2 == 1, np.arange(1, N, 2)),
                      (np.array([5, 6, 7, 4]), np.array([5, 6, 7, 4]))):  # dense path, unsorted
        assert np.array_equal(store.read_rows("audio/small", sel)[0], expected[rows])
    assert store.read_rows("audio/small", np.array([], dtype=int))[0].shape == (0, 3)
    with pytest.raises(StoreError, match="out of range"):
        store.read_rows("audio/small", [N])
    with pytest.raises(StoreError, match="no teacher 'image/none'"):
        store.read_rows("image/none", [0])


def test_frame_teacher_round_trip_and_lazy_views(store) -> None:
    fill_teacher(store, key="image/frames", frames=4, dim=5)
    t = store.teacher("image/frames")
    assert t.embedding.shape == (N, 4, 5) and t.times.shape == (N, 4, 2) and t.mask.shape == (N, 4)
    expected = rows_data(slice(0, N), 5, 4).astype(np.float16)
    assert np.array_equal(t.embedding[2:5, 1], expected[2:5, 1])  # partial read, stored dtype
    assert np.array_equal(t.embedding[[6, 2]], expected[[6, 2]])
    assert np.array_equal(t.embedding[[6, 2], 3], expected[[6, 2], 3])
    assert np.array_equal(np.asarray(t.mask), np.repeat((np.arange(N) % 5 != 0)[:, None], 4, 1))
    emb, times, mask = store.read_rows("image/frames", [8])
    assert emb.shape == (1, 4, 5) and times.shape == (1, 4, 2) and mask.shape == (1, 4)
    # one flag per clip broadcasts over the frames
    store.write_rows("image/frames", slice(0, 4), expected[:4], None, np.array([True, False, True, True]))
    assert list(store.teacher("image/frames").mask[1]) == [False] * 4
    assert np.isnan(store.teacher("image/frames").times[0]).all()


def test_done_ledger_todo_and_shards(store) -> None:
    key = "audio/small"
    store.create_teacher(key, 3, None, fingerprint=FP)
    assert store.todo(key) == store.shard_slices() == [slice(0, 4), slice(4, 8), slice(8, 10)]
    store.write_rows(key, slice(4, 8), rows_data(slice(4, 8)), None, np.ones(4, bool))
    assert list(np.flatnonzero(store.teacher(key).done[:])) == [4, 5, 6, 7]
    assert store.todo(key) == [slice(0, 4), slice(8, 10)]
    assert store.todo(key, shard="1/2") == [slice(8, 10)]
    # unwritten rows read as the fill values, never garbage
    emb, times, mask = store.read_rows(key, [0])
    assert not emb.any() and np.isnan(times).all() and not mask.any()


def test_shard_slices_partition_every_chunk() -> None:
    for n, cr, count in ((10, 4, 2), (1000, 16, 7), (5, 8, 3)):
        owned = [s for i in range(count) for s in shard_slices(n, cr, f"{i}/{count}")]
        assert owned == shard_slices(n, cr, None)
        assert all(s.start % cr == 0 for s in owned)
    with pytest.raises(ConfigError, match="0 <= I < N"):
        shard_slices(10, 4, "2/2")
    with pytest.raises(ConfigError, match="I/N"):
        shard_slices(10, 4, "first")


@pytest.mark.parametrize("rows, what", [
    (slice(2, 6), "not chunk-aligned"), (slice(0, 6), "not chunk-aligned"), (slice(8, 12), "outside"),
    (slice(4, 4), "outside"), (slice(0, 8, 2), "contiguous slice"), (np.arange(4), "contiguous slice"),
])
def test_write_rows_refuses_unaligned_rows(store, rows, what: str) -> None:
    store.create_teacher("audio/small", 3, None, fingerprint=FP)
    with pytest.raises(StoreError, match=what):
        store.write_rows("audio/small", rows, np.zeros((4, 3)), None, np.ones(4, bool))
    assert not store.teacher("audio/small").done[:].any()


def test_write_rows_refuses_wrong_shapes(store) -> None:
    store.create_teacher("image/frames", 3, 2, fingerprint=FP)
    rows = slice(0, 4)
    with pytest.raises(StoreError, match=r"embedding shape \(4, 3\), expected \(4, 2, 3\)"):
        store.write_rows("image/frames", rows, np.zeros((4, 3)), None, np.ones(4, bool))
    with pytest.raises(StoreError, match="times shape"):
        store.write_rows("image/frames", rows, np.zeros((4, 2, 3)), np.zeros((4, 3, 2)), np.ones(4, bool))
    with pytest.raises(StoreError, match="mask shape"):
        store.write_rows("image/frames", rows, np.zeros((4, 2, 3)), None, np.ones((4, 3), bool))
    with pytest.raises(ConfigError, match="teacher key"):
        store.create_teacher("no_modality", 3, None, fingerprint=FP)
    with pytest.raises(ConfigError, match="dtype"):
        store.create_teacher("audio/x", 3, None, dtype="int8", fingerprint=FP)


def test_fingerprint_mismatch_is_refused_with_each_field(store) -> None:
    fill_teacher(store)
    store.create_teacher("audio/small", 3, None, fingerprint=json.loads(json.dumps(FP)))  # resume: no-op
    assert store.teacher("audio/small").done[:].all()
    other = {**FP, "weights": "sha256:abc", "preprocess": {"sample_rate": 32000, "mean": [0.5]}}
    with pytest.raises(StoreMismatchError) as info:
        store.create_teacher("audio/small", 4, None, fingerprint=other)
    message = str(info.value)
    assert "preprocess.sample_rate: 16000 (store) vs 32000 (now)" in message
    assert 'weights: "random" (store) vs "sha256:abc" (now)' in message
    assert "dim: 3 (store) vs 4 (now)" in message and "--overwrite" in message
    assert "mean" not in message  # equal fields are not listed
    store.create_teacher("audio/small", 4, None, fingerprint=other, overwrite=True)
    t = store.teacher("audio/small")
    assert t.dim == 4 and t.fingerprint == other and not t.done[:].any()


def test_the_generation_changes_when_a_store_or_teacher_is_replaced(tmp_path: Path, backend: str) -> None:
    """A reader compares ``generation()`` before writing back: replacing a teacher (even twice in
    one second, when timestamps repeat) or the whole store gives another; a resume does not."""
    path = store_path(tmp_path, backend)
    with create_store(path, make_manifest(), chunk_rows=CR) as s:
        fill_teacher(s)
        first = s.generation(["audio/small"])
        s.create_teacher("audio/small", 3, None, fingerprint=json.loads(json.dumps(FP)))  # resume
        assert s.generation(["audio/small"]) == first
        s.create_teacher("audio/small", 3, None, fingerprint=FP, overwrite=True)
        replaced = s.generation(["audio/small"])
        assert replaced["audio/small"] != first["audio/small"] and replaced["store"] == first["store"]
    with create_store(path, make_manifest(), chunk_rows=CR, overwrite=True) as s:
        assert s.generation()["store"] != first["store"]


def test_unfinished_teacher_creation_is_redone(store) -> None:
    # A crash between creating the arrays and writing the attrs leaves a group without fingerprint.
    store._b.create_array("teachers/audio/broken/embedding", (N, 2), "float16", (CR, 2), 0.0, "none")
    assert store.teacher_keys() == []
    store.create_teacher("audio/broken", 3, None, fingerprint=FP)
    assert store.teacher("audio/broken").embedding.shape == (N, 3)


class _Killed(BaseException):
    """A writer's death, simulated at the lowest write the backend makes."""


def _metadata_writes_die_after(monkeypatch: pytest.MonkeyPatch, backend: str, budget: int | None) -> list[int]:
    """Count (and, past ``budget``, refuse) the writes that store node metadata.

    Zarr: each zarr.json file written. HDF5: each attribute set (h5py writes them one by one).
    """
    count = [0]

    def tick() -> None:
        if budget is not None and count[0] >= budget:
            raise _Killed
        count[0] += 1

    if backend == "zarr":
        real_set = zarr.storage.LocalStore.set

        async def set_(self, key, value, *args, **kwargs):  # noqa: ANN001, ANN202
            if key.endswith("zarr.json"):
                tick()
            return await real_set(self, key, value, *args, **kwargs)

        monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)
    else:
        real_item = h5py.AttributeManager.__setitem__

        def setitem(self, name, value):  # noqa: ANN001, ANN202
            tick()
            return real_item(self, name, value)

        monkeypatch.setattr(h5py.AttributeManager, "__setitem__", setitem)
    return count


def test_teacher_creation_killed_at_any_metadata_write_is_redone(tmp_path: Path, backend: str) -> None:
    """Regression: zarr's ``attrs.update`` wrote zarr.json once per key, so a SIGKILL between two
    of them left a teacher with its fingerprint but no frames/dtype, and every resume was refused
    as "stored with another configuration" (seen in CI: test_sigkill_at_random_moments[1])."""
    path = store_path(tmp_path, backend)
    create_store(path, make_manifest(), chunk_rows=CR).close()
    with pytest.MonkeyPatch.context() as mp, open_store(path, "r+") as s:
        writes = _metadata_writes_die_after(mp, backend, None)
        s.create_teacher("image/probe", 3, 4, dtype="float32", fingerprint=FP)
    for budget in range(writes[0]):
        copy = store_path(tmp_path, backend, f"killed{budget}")
        create_store(copy, make_manifest(), chunk_rows=CR).close()
        with pytest.MonkeyPatch.context() as mp, open_store(copy, "r+") as s:
            _metadata_writes_die_after(mp, backend, budget)
            with pytest.raises(_Killed):
                s.create_teacher("image/frames", 3, 4, dtype="float32", fingerprint=FP)
        with open_store(copy, "r+") as s:
            assert s.teacher_keys() in ([], ["image/frames"]), budget
            s.create_teacher("image/frames", 3, 4, dtype="float32", fingerprint=FP)  # the resume
            t = s.teacher("image/frames")
            assert (t.dim, t.frames, t.dtype, t.fingerprint) == (3, 4, "float32", FP), budget


@pytest.mark.slow  # in the full run, not the quick loop (see README)
@pytest.mark.filterwarnings("ignore:Object at:UserWarning")  # zarr .partial files the kills leave
def test_zarr_delete_killed_part_way_leaves_the_node_whole_or_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: zarr removed a node file by file, so a kill part-way through an overwrite left
    leftover arrays (every rerun failed) or old chunks (a new teacher read old rows as done)."""
    path = store_path(tmp_path, "zarr")
    old = {**FP, "weights": "old"}
    real_unlink, real_rmdir = os.unlink, os.rmdir
    for budget in range(64):
        shutil.rmtree(path, ignore_errors=True)
        with create_store(path, make_manifest(), chunk_rows=CR) as s:
            s.create_teacher("audio/x", 3, None, fingerprint=old)
            for rows in s.shard_slices():
                n = rows.stop - rows.start
                s.write_rows("audio/x", rows, rows_data(rows), None, np.ones(n, bool))
            removals = [0]

            def dying(real):  # noqa: ANN001, ANN202
                def remove(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                    if removals[0] >= budget:
                        raise _Killed
                    removals[0] += 1
                    return real(*args, **kwargs)
                return remove

            monkeypatch.setattr(os, "unlink", dying(real_unlink))
            monkeypatch.setattr(os, "rmdir", dying(real_rmdir))
            try:
                s.create_teacher("audio/x", 3, None, fingerprint=FP, overwrite=True)
                killed = False
            except _Killed:
                killed = True
            finally:
                monkeypatch.setattr(os, "unlink", real_unlink)
                monkeypatch.setattr(os, "rmdir", real_rmdir)
        with open_store(path, "r+") as s:  # the rerun
            assert s.teacher_keys() in ([], ["audio/x"]), budget
            s.create_teacher("audio/x", 3, None, fingerprint=FP, overwrite=True)
            assert not s.teacher("audio/x").done[:].any(), budget  # nothing of the old teacher
        assert not list(lease_dir(path).glob("deleted-*")), budget  # the rerun swept what was left
        if not killed:
            break
    assert not killed, "the budget never reached the end of the overwrite"


def test_attributes_killed_while_changing_encoding_still_read(tmp_path: Path, backend: str) -> None:
    """Regression (HDF5): a value going from JSON (None) to plain (25.0) was written while its name
    was still listed as JSON, so a kill in between made every later read of the node fail."""
    path = store_path(tmp_path, backend)
    create_store(path, make_manifest(), chunk_rows=CR).close()
    with open_store(path, "r+") as s:
        s.create_array("frames/count", (N,), "int64")
        s.set_attrs("frames", {"fps": None, "size": [4, 4], "format": "x"})
    changes = [{"fps": 25.0, "size": [8, 8]}, {"fps": None, "size": "8x8"}]
    for change in changes:
        budget = 0
        while True:
            with pytest.MonkeyPatch.context() as mp, open_store(path, "r+") as s:
                before = s.get_attrs("frames")
                _metadata_writes_die_after(mp, backend, budget)
                try:
                    s.set_attrs("frames", change)
                    finished = True
                except _Killed:
                    finished = False
            with open_store(path) as s:
                after = s.get_attrs("frames")  # must not raise
            for name, value in change.items():
                assert after.get(name, "absent") in (before.get(name), value, "absent"), (change, budget)
            if finished:
                assert {k: after[k] for k in change} == change
                break
            with open_store(path, "r+") as s:
                s.set_attrs("frames", before)  # the state the next budget starts from
            budget += 1


def test_zarr_delete_of_a_symlinked_store_and_where_no_rename_is_possible(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real = tmp_path / "disk" / "cache.zarr"
    real.parent.mkdir()
    create_store(real, make_manifest(), chunk_rows=CR).close()
    link = tmp_path / "cache.zarr"
    link.symlink_to(real)
    with open_store(link, "r+") as s:
        s.create_array("frames/a", (N,), "int64")
        s.delete("frames")  # moved aside beside the real folder: one file system
        assert not s.has("frames") and (tmp_path / "disk" / ".cache.zarr.ccl").is_dir()
        s.create_array("frames/b", (N,), "int64")

        def cross_device(src, dst):  # noqa: ANN001, ANN202
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "rename", cross_device)
        s.delete("frames")  # falls back to zarr's own delete
        assert not s.has("frames") and "deleted file by file" in caplog.text


# --------------------------------------------------------------------------- failures and students
def test_failure_ledger(store) -> None:
    assert store.failures() == []
    store.record_failure(5, "decode", "decode", "moov atom not found", coverage=None)
    store.record_failure(9, "audio", "partial", "audio ends at 40%", coverage=0.4)
    store.record_failure(5, "teacher", "teacher-nonfinite", "NaN in output")  # latest wins
    records = store.failures()
    assert [(f["row"], f["id"], f["stage"], f["reason"]) for f in records] == [
        (5, "c5", "teacher", "teacher-nonfinite"), (9, "c9", "audio", "partial")]
    assert records[0]["coverage"] is None and records[1]["coverage"] == pytest.approx(0.4)
    assert records[1]["message"] == "audio ends at 40%" and records[0]["time"] > 1.6e9
    store.clear_failures([5])
    assert [f["row"] for f in store.failures()] == [9]
    store.clear_failures(slice(0, N))
    assert store.failures() == []
    with pytest.raises(StoreError, match="outside"):
        store.record_failure(N, "decode", "x", "y")


def test_students(store) -> None:
    emb = np.random.default_rng(0).standard_normal((N, 6)).astype(np.float32)
    store.write_student("ccl_audio", emb, {"method": "ccl", "epochs": 3})
    assert store.student_runs() == ["ccl_audio"]
    assert np.array_equal(store.student("ccl_audio"), emb)
    attrs = store.student_attrs("ccl_audio")
    assert attrs["method"] == "ccl" and attrs["epochs"] == 3 and attrs["dim"] == 6
    store.write_student("ccl_audio", emb[:, :2] * 2, {"method": "ccl"})  # re-embedding replaces it
    assert store.student("ccl_audio").shape == (N, 2)
    with pytest.raises(StoreError, match=r"expected \(10, D\)"):
        store.write_student("bad", emb[:5])
    with pytest.raises(StoreError, match="no student run 'other'"):
        store.student("other")
    with pytest.raises(ConfigError, match="run name"):
        store.write_student("a/b", emb)


def test_unfinished_student_write_is_not_listed(store) -> None:
    # A crash after creating the embedding array (still all zeros) and before its attrs.
    store._b.create_array("students/half/embedding", (N, 2), "float32", (CR, 2), 0.0, "none")
    assert store.student_runs() == []
    store.write_student("half", np.ones((N, 2), np.float32))
    assert store.student_runs() == ["half"] and store.student("half").sum() == 2 * N


def test_a_killed_student_rewrite_keeps_the_earlier_run(store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the earlier run was deleted before the new one was written, so a kill lost both."""
    store.write_student("run", np.ones((N, 2), np.float32), {"epoch": 1})
    real = type(store._b).write

    def dies(self, path, selection, value):  # noqa: ANN001, ANN202
        raise _Killed

    monkeypatch.setattr(type(store._b), "write", dies)
    with pytest.raises(_Killed):
        store.write_student("run", np.zeros((N, 3), np.float32), {"epoch": 2})
    monkeypatch.setattr(type(store._b), "write", real)
    assert store.student_runs() == ["run"] and store.student("run").shape == (N, 2)
    assert store.student_attrs("run")["epoch"] == 1
    store.write_student("run", np.zeros((N, 3), np.float32), {"epoch": 2})  # the rerun
    assert store.student_runs() == ["run"] and store.student("run").shape == (N, 3)
    assert store._b.children("students") == ["run"]  # the temporary name is gone


# --------------------------------------------------------------------------- generic arrays
def test_delete_generic_nodes_only(store) -> None:
    store.create_array("frames/rgb", (N, 2), "uint8")
    store.set_attrs("frames", {"format": "x"})
    store.delete("/frames/")
    assert not store.has("frames") and not store.has("frames/rgb")
    with pytest.raises(StoreError, match="no group or array 'frames'"):
        store.delete("frames")
    for reserved in ("teachers", "clips/id"):
        with pytest.raises(ConfigError, match="only nodes such as 'frames/...'"):
            store.delete(reserved)


def test_generic_arrays_and_attrs(store) -> None:
    frames = store.create_array("/frames/rgb/", (N, 2, 4, 4, 3), "uint8")
    assert frames.shape == (N, 2, 4, 4, 3) and frames.dtype == np.uint8 and CR % frames.chunks[0] == 0
    frames[0:4] = np.arange(4, dtype=np.uint8)[:, None, None, None, None] * np.ones((4, 2, 4, 4, 3), np.uint8)
    assert store.has("frames/rgb") and not store.has("frames/flow")
    assert list(store.read_array_rows("frames/rgb", [3, 0, 3])[:, 0, 0, 0, 0]) == [3, 0, 3]
    assert list(store.array("frames/rgb")[[2, 1]][:, 1, 2, 3, 0]) == [2, 1]
    store.set_attrs("frames", {"size": [4, 4], "stride": 2})
    store.set_attrs("frames", {"stride": 3})
    assert store.get_attrs("frames") == {"size": [4, 4], "stride": 3}
    assert store.generic_arrays() == ["frames/rgb"]
    big = store.create_array("frames/big", (N, 16, 112, 112, 3), "uint8")  # 600 KB rows
    assert CR % big.chunks[0] == 0 and big.chunks[0] * 16 * 112 * 112 * 3 <= 16 * 2**20
    with pytest.raises(StoreError, match="already exists"):
        store.create_array("frames/rgb", (N,), "uint8")
    assert store.create_array("frames/rgb", (3,), "float32", overwrite=True).shape == (3,)
    with pytest.raises(ConfigError, match="schema group"):
        store.create_array("teachers/x", (N,), "uint8")
    with pytest.raises(StoreError, match="belong to the schema"):
        store.set_attrs("/", {"n": 3})
    store.set_attrs("/", {"note": "hello"})
    assert store.attrs["note"] == "hello"


def test_read_only_store_refuses_writes(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    create_store(path, make_manifest(), chunk_rows=CR).close()
    with open_store(path, "r") as s:
        for call in (lambda: s.create_teacher("audio/x", 3, None, fingerprint=FP),
                     lambda: s.record_failure(0, "a", "b", "c"), lambda: s.acquire_lease()):
            with pytest.raises(StoreError, match="read-only"):
                call()
    with pytest.raises(ConfigError, match="mode"):
        open_store(path, "w")


# --------------------------------------------------------------------------- create / open / damage
def test_create_over_existing_store(tmp_path: Path, backend: str) -> None:
    path = store_path(tmp_path, backend)
    manifest = make_manifest()
    with create_store(path, manifest, chunk_rows=CR) as s:
        fill_teacher(s)
    with pytest.raises(StoreError, match="already exists"):
        create_store(path, manifest)
    with create_store(path, manifest, exist_ok=True) as s:  # resume: same manifest, data kept
        assert s.teacher("audio/small").done[:].all() and s.chunk_rows == CR
    with pytest.raises(StoreMismatchError, match="another manifest"):
        create_store(path, make_manifest(prefix="x"), exist_ok=True)
    with create_store(path, make_manifest(prefix="x"), chunk_rows=5, overwrite=True) as s:
        assert s.teacher_keys() == [] and s.chunk_rows == 5 and s.clips.id[0] == "x0"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, lease_dir(path).name])
    with pytest.raises(ConfigError, match="no clips"):
        create_store(store_path(tmp_path, backend, "empty"), Manifest.from_records([]))
    with pytest.raises(ConfigError, match="chunk_rows"):
        create_store(store_path(tmp_path, backend, "zero"), manifest, chunk_rows=0)


def test_unknown_suffix_and_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"unknown store suffix '.npz'.*\.h5.*\.zarr"):
        create_store(tmp_path / "cache.npz", make_manifest())
    with pytest.raises(StoreError, match="no store here"):
        open_store(tmp_path / "missing.zarr")
    # What a newcomer passes instead of a store is named, with what to pass.
    (tmp_path / "run1" / "checkpoints").mkdir(parents=True)
    with pytest.raises(StoreError, match="run1: a distill run directory, not a store"):
        open_store(tmp_path / "run1")
    with pytest.raises(StoreError, match="manifest.csv: a manifest or dataset, not a store"):
        open_store(tmp_path / "manifest.csv")


def _set_root_attr(path: Path, name: str, value: object) -> None:
    if path.suffix == ".zarr":
        zarr.open_group(str(path), mode="r+").attrs[name] = value
    else:
        with h5py.File(path, "r+") as f:
            f.attrs[name] = value


@pytest.mark.parametrize("damage, message", [
    ("format", "not a ccl-cache store"), ("future", "schema v99"), ("missing-array", "'clips/id' is missing"),
])
def test_damaged_store_is_refused(tmp_path: Path, backend: str, damage: str, message: str) -> None:
    path = store_path(tmp_path, backend)
    create_store(path, make_manifest(), chunk_rows=CR).close()
    if damage == "format":
        _set_root_attr(path, "format", "something-else")
    elif damage == "future":
        _set_root_attr(path, "schema_version", 99)
    elif path.suffix == ".zarr":
        shutil.rmtree(path / "clips" / "id")
    else:
        with h5py.File(path, "r+") as f:
            del f["clips/id"]
    with pytest.raises(StoreError, match=message) as info:
        open_store(path)
    assert str(path) in str(info.value)


def test_damaged_files_are_refused(tmp_path: Path) -> None:
    h5 = store_path(tmp_path, "hdf5")
    create_store(h5, make_manifest(), chunk_rows=CR).close()
    data = h5.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError, match=r"truncated.h5: damaged or not an HDF5 store \(.*truncated"):
        open_store(truncated)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5" * 100)
    with pytest.raises(StoreError, match="signature"):
        open_store(garbage)
    zpath = store_path(tmp_path, "zarr")
    create_store(zpath, make_manifest(), chunk_rows=CR).close()
    (zpath / "zarr.json").unlink()
    with pytest.raises(StoreError, match="no zarr.json"):
        open_store(zpath)


def test_plain_libraries_can_read_the_store(tmp_path: Path) -> None:
    """The module docstrings tell users how to read a store without ccl-cache; keep them true."""
    for backend in ("zarr", "hdf5"):
        path = store_path(tmp_path, backend)
        with create_store(path, make_manifest(), chunk_rows=CR) as s:
            fill_teacher(s)
        if backend == "zarr":
            g = zarr.open_group(str(path), mode="r")
            ids, fp = list(g["clips/id"][:]), g["teachers/audio/small"].attrs["fingerprint"]
            emb = g["teachers/audio/small/embedding"][:]
        else:
            with h5py.File(path, "r") as f:
                ids, fp = list(f["clips/id"].asstr()[:]), json.loads(f["teachers/audio/small"].attrs["fingerprint"])
                emb = f["teachers/audio/small/embedding"][:]
        assert ids == [f"c{i}" for i in range(N)] and fp == FP
        assert np.array_equal(emb, rows_data(slice(0, N)).astype(np.float16))


def test_zarr_reads_only_the_chunks_asked_for(tmp_path: Path) -> None:
    path = store_path(tmp_path, "zarr")
    with create_store(path, make_manifest(), chunk_rows=CR) as s:
        fill_teacher(s)
    (path / "teachers/audio/small/embedding/c/0/0").write_bytes(b"broken")  # rows 0:4 unreadable
    with open_store(path) as s:
        t = s.teacher("audio/small")  # opening the teacher reads no chunk
        assert np.array_equal(t.embedding[5:7], rows_data(slice(5, 7)).astype(np.float16))
        assert s.read_rows("audio/small", [9, 4])[0].shape == (2, 3)
        with pytest.raises(Exception):
            t.embedding[0:2]


# --------------------------------------------------------------------------- leases
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_live_lease_is_refused_and_released(store) -> None:
    held = store.acquire_lease(command="ccl-cache extract test")
    with pytest.raises(StoreLockedError) as info:
        store.acquire_lease()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message and "--force" in message
    assert "ccl-cache extract test" in message
    held.release()
    assert not list(lease_dir(store.path).glob("lease-*.json"))
    with store.acquire_lease():
        assert len(store.leases()) == 1
    assert store.leases() == []


def test_stale_and_forced_leases_are_taken_over(store) -> None:
    directory = lease_dir(store.path)
    directory.mkdir(exist_ok=True)
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "time": "2024-01-01T00:00:00+00:00",
             "command": "old run", "shard": None, "token": "x"}
    (directory / "lease-all.json").write_text(json.dumps(stale))
    with pytest.warns(StaleLeaseWarning, match="no longer running"):
        held = store.acquire_lease()
    assert held.info.pid == os.getpid()
    held.release()
    remote = {**stale, "pid": 1, "host": "some-other-host"}  # cannot be checked: assumed alive
    (directory / "lease-all.json").write_text(json.dumps(remote))
    with pytest.raises(StoreLockedError, match="some-other-host"):
        store.acquire_lease()
    with pytest.warns(StaleLeaseWarning, match="forcing"):
        store.acquire_lease(force=True)
    store.close()
    assert not list(directory.glob("lease-*.json"))  # close() gives leases back


def test_shard_leases(store) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stale takeovers here
        first = store.acquire_lease(shard="0/2")
        second = store.acquire_lease(shard="1/2")  # disjoint chunks: allowed together
    with pytest.raises(StoreLockedError, match="shard 0/2"):
        store.acquire_lease(shard="0/2")
    with pytest.raises(StoreLockedError):
        store.acquire_lease(shard="1/3")  # another N overlaps both
    with pytest.raises(StoreLockedError):
        store.acquire_lease()  # the whole store overlaps every shard
    first.release()
    second.release()
    assert store.acquire_lease(shard="2/3").info.shard == "2/3"


def test_hdf5_lock_error_names_the_fix(tmp_path: Path) -> None:
    path = store_path(tmp_path, "hdf5")
    create_store(path, make_manifest(), chunk_rows=CR).close()
    code = ("import sys\nfrom ccl_cache.store import open_store\n"
            "try:\n    open_store(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    with open_store(path, "r+") as writer:
        with writer.acquire_lease(command="writer-under-test"):
            out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                 env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"}).stdout
    assert out.startswith("StoreLockedError") and "writer-under-test" in out
    with open_store(path, "r+"):
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                             env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"}).stdout
    assert out.startswith("StoreLockedError") and "HDF5_USE_FILE_LOCKING=FALSE" in out


# --------------------------------------------------------------------------- fork
_FORKED = None


def _read_in_child(rows: list[int]) -> tuple[int, np.ndarray]:
    emb, _, _ = _FORKED.read_rows("audio/small", np.array(rows))
    return os.getpid(), emb


def test_reading_after_fork(tmp_path: Path, backend: str) -> None:
    global _FORKED
    path = store_path(tmp_path, backend)
    with create_store(path, make_manifest(), chunk_rows=CR) as s:
        fill_teacher(s)
    _FORKED = open_store(path)
    try:
        expected = _FORKED.read_rows("audio/small", np.arange(N))[0]  # the parent's handle is open
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            results = pool.map(_read_in_child, [[9, 1, 1], [0, 5], [3], [8, 2]])
        for (pid, emb), rows in zip(results, [[9, 1, 1], [0, 5], [3], [8, 2]]):
            assert pid != os.getpid() and np.array_equal(emb, expected[rows])
        assert np.array_equal(_FORKED.read_rows("audio/small", [4])[0], expected[[4]])  # parent still fine
    finally:
        _FORKED.close()
        _FORKED = None


def test_zarr_direct_chunk_reads_equal_zarr_reads(tmp_path: Path) -> None:
    """Uncompressed Zarr row ranges are read from the chunk files directly (no event-loop
    hand-off); they must equal zarr-python's answer: across chunks, in unwritten chunks (fill
    value), at the padded last chunk, and compressed arrays must keep using zarr."""
    path = store_path(tmp_path, "zarr")
    with create_store(path, make_manifest(), chunk_rows=CR) as s:
        frames = s.create_array("frames/data", (37, 2, 3), "uint16", chunk_rows=8)
        times = s.create_array("frames/times", (37,), "float64", chunk_rows=16)
        packed = s.create_array("frames/packed", (37, 4), "float32", chunk_rows=8, compression="zstd")
        values = np.arange(37 * 6, dtype=np.uint16).reshape(37, 2, 3)
        frames[0:16] = values[0:16]
        frames[32:37] = values[32:37]  # chunks 2 and 3 (rows 16:32) never written
        times[0:16] = np.linspace(0, 1, 16)
        packed[0:37] = np.ones((37, 4), np.float32)
    plain = zarr.open_group(str(path), mode="r")
    with open_store(path) as s:
        for lo, hi in [(0, 8), (3, 21), (14, 37), (16, 32), (30, 37), (5, 5), (0, 37)]:
            for name in ("frames/data", "frames/times", "frames/packed"):
                assert np.array_equal(s.array(name)[lo:hi], plain[name][lo:hi], equal_nan=True), (name, lo, hi)
        assert s.array("frames/data")[16:24].sum() == 0 and np.isnan(s.array("frames/times")[20:30]).all()
        rng = np.random.default_rng(0)
        for size in (1, 3, 12, 30):  # scattered rows (one positioned read each) and dense ones
            idx = rng.choice(37, size, replace=False)
            for name in ("frames/data", "frames/times", "frames/packed"):
                want = plain[name].get_orthogonal_selection((np.sort(idx),))[np.argsort(np.argsort(idx))]
                assert np.array_equal(s.array(name)[idx], want, equal_nan=True), (name, idx)
        raw = s._b._raw  # which arrays took the direct path
        assert raw["frames/data"] is not None and raw["frames/times"] is not None and raw["frames/packed"] is None
