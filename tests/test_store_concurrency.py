"""Writers in several processes: concurrent Zarr shards, HDF5 shard merging, SIGKILL mid-write."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ccl_cache.errors import ConfigError, StoreError, StoreMismatchError
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import BACKENDS, create_store, merge_stores, open_store

N, CR, DIM, FRAMES = 203, 8, 6, 3  # 26 chunks, the last one a 3-row tail
KEYS = {"audio/a": None, "image/i": FRAMES}
FP = {"arch": "tiny", "preprocess": {"size": 32}}


def manifest(n: int = N, prefix: str = "v") -> Manifest:
    return Manifest.from_records(ClipRecord(id=f"{prefix}{i}", path=f"/d/{i}.mp4", label=f"k{i % 4}")
                                 for i in range(n))


def batch(key: str, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic content of ``rows`` (a function of the row number only)."""
    r = np.arange(rows.start, rows.stop)
    frames = KEYS[key]
    emb = (r[:, None] % 97) + np.arange(DIM)[None, :] / 8.0
    times = np.stack([r, r + 0.5], axis=1)[:, None, :].repeat(frames or 1, 1).astype(float)
    mask = r % 6 != 0
    if frames:
        emb = emb[:, None, :] + np.arange(frames)[None, :, None]
        mask = mask[:, None].repeat(frames, 1)
    return emb.astype(np.float32), times, mask


def write_part(path: Path, shard: str | None, rows_filter=None) -> None:
    """What one writer does: lease, teachers (created racing), data, failures, clip info."""
    with open_store(path, "r+") as store, store.acquire_lease(shard=shard if path.suffix == ".zarr" else None):
        for key, frames in KEYS.items():
            store.create_teacher(key, DIM, frames, fingerprint=FP)
        for rows in store.shard_slices(shard):
            if rows_filter is not None and not rows_filter(rows):
                continue
            for key in KEYS:
                store.write_rows(key, rows, *batch(key, rows))
            r = np.arange(rows.start, rows.stop)
            store.record_clips(r, duration=r / 10.0, has_audio=r % 6 != 0)
            for row in r[r % 11 == 3]:
                store.record_failure(int(row), "decode", "partial", f"row {row} cut", coverage=0.5)


def assert_same_content(a: Path, b: Path) -> None:
    with open_store(a) as x, open_store(b) as y:
        assert x.teacher_keys() == y.teacher_keys() == sorted(KEYS)
        for key in KEYS:
            for got, want in zip(x.load_teacher(key), y.load_teacher(key)):
                np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(x.teacher(key).done[:], y.teacher(key).done[:])
        strip = [{k: v for k, v in f.items() if k != "time"} for f in x.failures()]
        assert strip == [{k: v for k, v in f.items() if k != "time"} for f in y.failures()]
        np.testing.assert_array_equal(x.clips.duration, y.clips.duration)
        np.testing.assert_array_equal(x.clips.has_audio, y.clips.has_audio)


def _shard_worker(path: str, shard: str, barrier) -> None:
    barrier.wait()  # start together so the teacher creation and the writes really race
    write_part(Path(path), shard)


def test_concurrent_zarr_shards_equal_a_single_writer(tmp_path: Path) -> None:
    reference = tmp_path / "single.zarr"
    create_store(reference, manifest(), chunk_rows=CR).close()
    write_part(reference, None)
    shared = tmp_path / "shared.zarr"
    create_store(shared, manifest(), chunk_rows=CR).close()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_shard_worker, args=(str(shared), f"{i}/2", barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert_same_content(shared, reference)
    with open_store(shared) as s:
        assert all(s.teacher(k).done[:].all() for k in KEYS) and len(s.failures()) == 19
        assert s.leases() == []


def _create_worker(path: str, barrier, queue) -> None:
    barrier.wait()
    with create_store(Path(path), manifest(), chunk_rows=CR, exist_ok=True) as store:
        store.create_teacher("audio/a", DIM, None, fingerprint=FP)
        queue.put(store.attrs["created"])


def test_racing_zarr_creators_agree_on_one_store(tmp_path: Path) -> None:
    """Shard processes may all start with create_store(exist_ok=True): one store results.

    (HDF5 shards write separate files: one writer per file is the rule there.)
    """
    path = tmp_path / "raced.zarr"
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_create_worker, args=(str(path), barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len({queue.get(timeout=5) for _ in procs}) == 1  # all opened the same store
    with open_store(path) as store:
        assert store.teacher_keys() == ["audio/a"] and store.n == N
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []  # no temporary left behind


def test_a_group_created_by_another_writer_in_between_is_taken_as_is(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """zarr's require_group checks, then creates: a shard process that creates the group in
    between made the other one fail (seen as ContainsGroupError for "extraction" in CI)."""
    import zarr

    path = tmp_path / "race.zarr"
    create_store(path, manifest()).close()
    real = zarr.Group.require_group

    def racing(self: zarr.Group, name: str, **kwargs: object) -> zarr.Group:
        if name == "extraction" and name not in self:
            real(self, name)  # the other writer wins the race
            raise zarr.errors.ContainsGroupError(f"A group exists in store at path {name!r}.")
        return real(self, name, **kwargs)

    monkeypatch.setattr(zarr.Group, "require_group", racing)
    with open_store(path, "r+") as store:
        store.create_array("extraction/coverage", (N,), "float32", fill_value=np.nan)
        assert store.has("extraction/coverage")


def test_merge_hdf5_shards_equals_a_single_store(tmp_path: Path) -> None:
    reference = tmp_path / "single.h5"
    create_store(reference, manifest(), chunk_rows=CR).close()
    write_part(reference, None)
    shards = [tmp_path / f"cache.shard-{i}-of-2.h5" for i in range(2)]
    for i, path in enumerate(shards):
        create_store(path, manifest(), chunk_rows=CR).close()
        write_part(path, f"{i}/2")
    with open_store(shards[0], "r+") as s:  # per-shard extras the merge must carry over
        s.write_student("run1", np.ones((N, 4)), {"method": "ccl"})
        s.create_array("frames/rgb", (N, 2), "uint8")[0:CR] = np.full((CR, 2), 7, np.uint8)
    with open_store(shards[1], "r+") as s:
        s.create_array("frames/rgb", (N, 2), "uint8")[N - 3:N] = np.full((3, 2), 9, np.uint8)
    report = merge_stores(shards, tmp_path / "merged.h5")
    assert report["teachers"] == {k: {"done": N, "conflicts": 0} for k in sorted(KEYS)}
    assert report["failures"] == 19 and report["students"] == ["run1"] and report["arrays"] == ["frames/rgb"]
    assert_same_content(tmp_path / "merged.h5", reference)
    with open_store(tmp_path / "merged.h5") as m:
        assert m.attrs["manifest_sha256"] == manifest().sha256() and m.chunk_rows == CR
        assert np.array_equal(m.student("run1"), np.ones((N, 4), np.float32))
        rgb = m.array("frames/rgb")[:]
        assert (rgb[:CR] == 7).all() and (rgb[N - 3:] == 9).all() and not rgb[CR:N - 3].any()
    # a zarr output works the same, and a row done in two inputs is a counted conflict
    write_part(shards[1], "0/2", rows_filter=lambda rows: rows.start == 0)
    report = merge_stores(shards, tmp_path / "merged.zarr")
    assert report["teachers"]["audio/a"] == {"done": N, "conflicts": CR}
    assert_same_content(tmp_path / "merged.zarr", reference)
    assert report["missing_shards"] == [] and report["rows"] == N


def test_merging_only_some_shards_warns_which_are_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: `merge out.h5 x.shard-0-of-2.h5` reported success with half the rows undone."""
    shard = tmp_path / "cache.shard-0-of-2.h5"
    create_store(shard, manifest(), chunk_rows=CR).close()
    write_part(shard, "0/2")
    report = merge_stores([shard], tmp_path / "merged.h5")
    assert report["missing_shards"] == ["1-of-2"]
    assert "shard(s) 1-of-2 of this set were not given" in caplog.text
    assert 0 < report["teachers"]["audio/a"]["done"] < report["rows"]


def test_merge_refuses_mismatched_inputs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    create_store(a, manifest(), chunk_rows=CR).close()
    create_store(b, manifest(n=N - 1), chunk_rows=CR).close()
    with pytest.raises(StoreMismatchError, match="different manifests"):
        merge_stores([a, b], tmp_path / "out.h5")
    create_store(c, manifest(), chunk_rows=CR).close()
    with open_store(a, "r+") as s:
        s.create_teacher("audio/a", DIM, None, fingerprint=FP)
    with open_store(c, "r+") as s:
        s.create_teacher("audio/a", DIM, None, fingerprint={**FP, "preprocess": {"size": 64}})
    with pytest.raises(StoreMismatchError, match=r"preprocess.size: 32 \(store\) vs 64 \(now\)"):
        merge_stores([a, c], tmp_path / "out.h5")
    with pytest.raises(ConfigError, match="must not be one of its inputs"):
        merge_stores([a, c], a)
    merge_stores([a], tmp_path / "out.h5")
    with pytest.raises(StoreError, match="already exists; pass --overwrite") as refused:
        merge_stores([a], tmp_path / "out.h5")
    assert "resume" not in str(refused.value)  # a merge output is not resumed
    assert merge_stores([a], tmp_path / "out.h5", overwrite=True)["teachers"]["audio/a"]["done"] == 0
    assert not (tmp_path / "out2.h5").exists()


_KILL_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_store_concurrency import KEYS, batch
from ccl_cache.store import open_store
with open_store(sys.argv[1], "r+") as store:
    for rows in store.todo("image/i"):
        for key in KEYS:
            store.write_rows(key, rows, *batch(key, rows))
        print(rows.stop, flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS.names())
def test_sigkill_mid_write_never_marks_missing_data_done(tmp_path: Path, backend: str) -> None:
    path = tmp_path / f"killed{BACKENDS.get(backend).suffixes[0]}"
    n, cr = 1200, 8  # 150 batches: the kill lands while batches are being written
    with create_store(path, manifest(n), chunk_rows=cr) as s:
        for key, frames in KEYS.items():
            s.create_teacher(key, DIM, frames, fingerprint=FP)
    script = tmp_path / "writer.py"
    script.write_text(_KILL_WRITER.format(tests=str(Path(__file__).parent)))
    for kill_after in (3, 40):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(kill_after):
            assert proc.stdout.readline(), "the writer exited early"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        with open_store(path) as s:
            for key in KEYS:
                done = np.flatnonzero(s.teacher(key).done[:])
                assert len(done) >= kill_after * cr and len(done) < n
                for got, want in zip(s.read_rows(key, done), batch(key, slice(0, n))):
                    np.testing.assert_array_equal(got, np.asarray(want, dtype=got.dtype)[done])
    with open_store(path, "r+") as s:  # resume: the store opens and finishes the remaining chunks
        for rows in s.todo("image/i"):
            for key in KEYS:
                s.write_rows(key, rows, *batch(key, rows))
        assert all(s.teacher(key).done[:].all() for key in KEYS)
        np.testing.assert_array_equal(s.load_teacher("audio/a")[0], batch("audio/a", slice(0, n))[0])
