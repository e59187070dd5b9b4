"""Training data: augmentation, splits, teacher alignment, frame sources, frame cache, sampler.

Videos are index videos (each frame draws its own number, ``ccl_cache.testing.index_frame``), so
a test can read which source frames a window holds; teacher arrays are written by hand so that
an embedding names its (row, frame) and the lookup can be checked exactly.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ccl_cache import data as D
from ccl_cache.data import teacher_table
from ccl_cache.errors import ConfigError, StoreError, StoreMismatchError
from ccl_cache.extract import FrameCacheConfig, build_frame_cache
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store, open_store
from ccl_cache.testing import decode_index, write_video
from ccl_cache_cli.main import cli

FPS, FRAMES, K = 25, 30, 4  # 1.2 s videos; the image teacher caches K frames per clip
SPEC = D.ClipSpec(frames=8, stride=1, size=32)


def build_store(folder: Path, splits: list[str], labels: list[str], name: str = "s.zarr") -> Path:
    """A store over index videos, with a hand-written image teacher (frames) and audio teacher."""
    records = []
    for i, (split, label) in enumerate(zip(splits, labels)):
        path = folder / f"v{i}.mp4"
        if not path.exists():
            write_video(path, size=(64, 64), num_frames=FRAMES, fps=FPS)
        records.append(ClipRecord(f"c{i}", str(path), label, split))
    store_path = folder / name
    with create_store(store_path, Manifest.from_records(records), chunk_rows=4) as store:
        n = store.n
        store.create_teacher("image/fake", dim=3, frames=K, dtype="float32", fingerprint={"t": "image"})
        store.create_teacher("audio/fake", dim=2, frames=None, dtype="float32", fingerprint={"t": "audio"})
        centres = (np.arange(K) + 0.5) * (FRAMES / FPS) / K  # the extraction policy's frame times
        times = np.broadcast_to(np.stack([centres, centres], -1), (n, K, 2))
        image = np.stack(np.meshgrid(np.arange(K), np.arange(n)), -1)[..., ::-1].astype(np.float32)
        image = np.concatenate([image, np.ones((n, K, 1), np.float32)], -1)  # (row, k, 1)
        store.write_rows("image/fake", slice(0, n), image, times, np.ones((n, K), bool))
        audio = np.stack([np.arange(n), -np.arange(n)], -1).astype(np.float32)
        has_audio = np.arange(n) % 3 != 2  # every third clip has no audio
        store.write_rows("audio/fake", slice(0, n), audio, np.zeros((n, 1, 2)), has_audio)
    return store_path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    splits = ["train", "train", "train", "val", "test"] * 2
    return build_store(folder, splits, ["a"] * 5 + ["b"] * 5)


TEACHERS = {"image": "image/fake", "audio": "audio/fake"}


# ------------------------------------------------------------------------------ augmentation


def test_crop_params_stay_inside_and_follow_scale_and_ratio() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = D.crop_params(128, 171, (0.25, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + h <= 128 and 0 <= left and left + w <= 171
        assert 0.25 * 128 * 171 * 0.9 <= h * w <= 128 * 171
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # Impossible scale for a very wide frame: the fallback is a centred crop clamped to the ratio.
    assert D.crop_params(10, 1000, (0.99, 1.0), (1.0, 1.0), rng) == (0, 495, 10, 10)


def test_augment_applies_one_crop_and_flip_to_every_frame() -> None:
    frame = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    clip = frame.expand(6, 48, 64, 3).contiguous()
    flips = set()
    for seed in range(12):
        video = D.augment(clip, SPEC, np.random.default_rng(seed))
        assert video.shape == (3, 6, 32, 32) and video.dtype == torch.float32
        assert torch.equal(video[:, :1].expand_as(video), video)  # identical frames stay identical
        flips.add(bool(D.augment(clip, SPEC, np.random.default_rng(seed)).sum() == video.sum()))
    # Kinetics normalisation: a frame of the mean colour becomes zero.
    grey = torch.tensor([round(255 * m) for m in D.KINETICS_MEAN], dtype=torch.uint8).expand(2, 40, 40, 3)
    assert D.center(grey.contiguous(), D.ClipSpec(frames=2, size=16)).abs().max() < 0.01


def test_augment_flips_half_the_time_and_center_crops_the_middle() -> None:
    left_half = np.zeros((1, 32, 32, 3), np.uint8)
    left_half[:, :, :16] = 255
    clip = torch.from_numpy(left_half)
    spec = D.ClipSpec(frames=1, size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    brighter_left = [bool(D.augment(clip, spec, np.random.default_rng(s))[0, 0, :, :8].mean() > 0)
                     for s in range(40)]
    assert 10 < sum(brighter_left) < 30  # both orientations occur
    tall = torch.zeros(1, 64, 32, 3, dtype=torch.uint8)
    tall[:, 16:48] = 255  # the centre square is white, the rest black
    out = D.center(tall, D.ClipSpec(frames=1, size=32))  # base height 37: resize then crop
    assert out.shape == (3, 1, 32, 32)
    assert out[:, :, 8:24, 8:24].min() > 1.5  # white after normalisation


# ------------------------------------------------------------------------------ splits


def test_carve_val_is_stratified_deterministic_and_disjoint() -> None:
    labels = np.array([0] * 10 + [1] * 20 + [2])
    rows = np.arange(len(labels))
    train, val = D.carve_val(rows, labels, 0.1, seed=3)
    assert sorted(np.concatenate([train, val]).tolist()) == rows.tolist()
    assert np.bincount(labels[val], minlength=3).tolist() == [1, 2, 0]  # class 2 has one clip: stays
    again = D.carve_val(rows, labels, 0.1, seed=3)
    assert np.array_equal(again[1], val) and not np.array_equal(D.carve_val(rows, labels, 0.1, 4)[1], val)
    with pytest.raises(ConfigError, match="val_fraction"):
        D.carve_val(rows, labels, 1.0, 0)


def test_carve_val_keeps_a_training_clip_per_class_and_holds_out_one_of_small_classes() -> None:
    """The one hold-out rule (the trainer's carved val and `ccl-cache teach`): a class with clips
    always trains on at least one; a class of two or more gives at least one to validation."""
    labels = np.array([0, 1, 1, 2, 2, 2, 2, 2])
    held_out = {0.2: [0, 1, 1], 0.5: [0, 1, 2], 0.9: [0, 1, 4]}
    for fraction, counts in held_out.items():
        train, val = D.carve_val(np.arange(8), labels, fraction, seed=0)
        assert np.bincount(labels[train], minlength=3).min() >= 1
        assert np.bincount(labels[val], minlength=3).tolist() == counts
    # Pinned rows: the trainer's carved split of a seed must not move when this code does.
    pinned = np.array([0] * 10 + [1] * 20 + [2] + [3] * 2)
    assert D.carve_val(np.arange(len(pinned)), pinned, 0.1, seed=3)[1].tolist() == [9, 15, 17, 31]


def test_splits_use_the_manifest_val_and_exclude_failed_and_unfinished_rows(store: Path, tmp_path: Path) -> None:
    with open_store(store) as s:
        splits = D.make_splits(s, TEACHERS, seed=1)
    assert splits.val_source == "manifest" and splits.train.tolist() == [0, 1, 2, 5, 6, 7]
    assert splits.val.tolist() == [3, 8] and splits.test.tolist() == [4, 9] and splits.excluded == {}

    copy = build_store(store.parent, ["train"] * 10, ["a"] * 5 + ["b"] * 5, name="nval.zarr")
    with open_store(copy, "r+") as s:
        s.record_failure(1, "decode", "decode", "broken file")
        s.record_failure(2, "audio", "decode", "bad audio track")  # matters only to audio runs
        done = s.teacher("image/fake").done
        done[4:8] = np.array([True, False, True, True])  # row 5 not extracted yet
    with open_store(copy) as s:
        image_only = D.make_splits(s, {"image": "image/fake"}, val_fraction=0.25, seed=0)
        both = D.make_splits(s, TEACHERS, val_fraction=0.25, seed=0)
    assert image_only.excluded == {"failed (decode: decode)": 1, "image/fake not extracted": 1}
    assert both.excluded["failed (audio: decode)"] == 1
    assert image_only.val_source == "carved" and len(image_only.val) == 2  # one per class
    assert not set(image_only.val) & set(image_only.train) and not {1, 5} & set(image_only.train)


def test_split_aliases_are_read_and_unused_splits_are_named(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A manifest spelling "Train"/"validation" lost those clips from the run, and a misspelt
    split ("tarin") dropped its clips without a word; aliases now count, others are named."""
    from ccl_cache.search.gallery import split_rows

    spelled = ["Train", "train", "tarin", "Validation", "TEST", "pretrain"] * 2
    copy = build_store(store.parent, spelled, ["a"] * 6 + ["b"] * 6, name="aliases.zarr")
    with open_store(copy) as s, caplog.at_level("WARNING", logger="ccl_cache.data"):
        splits = D.make_splits(s, TEACHERS, seed=1)
        assert splits.val_source == "manifest"
        assert splits.train.tolist() == [0, 1, 6, 7] and splits.val.tolist() == [3, 9]
        assert splits.test.tolist() == [4, 10]
        assert split_rows(s, "val").tolist() == [3, 9] and split_rows(s, "validation").tolist() == [3, 9]
    warned = [r.getMessage() for r in caplog.records if "not used by the student run" in r.getMessage()]
    assert len(warned) == 1 and "2 clips in split 'tarin'" in warned[0] and "pretrain" not in warned[0]


def test_resolve_teachers_names_the_choices(store: Path) -> None:
    with open_store(store) as s:
        assert D.resolve_teachers(s, ["audio", "image/fake"]) == TEACHERS
        with pytest.raises(ConfigError, match="modality must be one of"):
            D.resolve_teachers(s, ["depth"])
        with pytest.raises(ConfigError, match="no teacher 'image/other'.*image/fake"):
            D.resolve_teachers(s, ["image/other"])


# ------------------------------------------------------------------------------ teacher alignment


def test_pick_slot_policies() -> None:
    times = np.array([[0.0, 0.5], [0.5, 1.0], [1.0, 1.5]])
    present = np.ones(3, bool)
    assert D.pick_slot(times, present, (0.6, 0.9), "overlap", None) == 1
    assert D.pick_slot(times, np.array([True, False, True]), (0.6, 0.9), "overlap", None) == 0  # nearest
    assert D.pick_slot(times, np.zeros(3, bool), (0.0, 2.0), "overlap", None) == -1
    points = np.array([[0.1, 0.1], [0.4, 0.4], [0.7, 0.7], [1.0, 1.0]])
    picks = {D.pick_slot(points, np.ones(4, bool), (0.3, 0.8), "inside", np.random.default_rng(s)) for s in range(30)}
    assert picks == {1, 2}  # random among the frames inside the window
    assert D.pick_slot(points, np.ones(4, bool), (1.2, 1.5), "inside", None) == 3  # none inside: nearest


def test_items_carry_the_teacher_rows_aligned_with_the_window(store: Path) -> None:
    ds = D.ClipDataset(store, [0, 1, 2], teachers=TEACHERS, spec=SPEC, seed=5)
    for i in range(3):
        item = ds[(0, i)]
        assert item["video"].shape == (3, 8, 32, 32) and item["index"] == i and item["row"] == ds.rows[i]
        row = int(item["row"])
        audio, image = item["teachers"]["audio"], item["teachers"]["image"]
        assert bool(item["masks"]["audio"]) == (row % 3 != 2) and audio.tolist() == [row, -row]
        assert image[0] == row and item["masks"]["image"]
        # The cached frame whose time lies inside the sampled window (index video: frame n at n / FPS).
        window = ds.reader.random_window(row, np.random.default_rng((5, 0, i)))
        first, last = decode_index(window.frames[0]), decode_index(window.frames[-1])
        assert last - first == 7 and np.allclose(window.times, (first + np.arange(8)) / FPS)
        k = int(image[1])
        centre = (k + 0.5) * FRAMES / FPS / K
        assert first / FPS - 1e-6 <= centre <= last / FPS + 1e-6
    # Same (epoch, index) → the same item; another epoch → another window or crop.
    assert torch.equal(ds[(0, 1)]["video"], ds[(0, 1)]["video"])
    assert not torch.equal(ds[(0, 1)]["video"], ds[(1, 1)]["video"])


def test_lazy_teacher_reads_equal_the_in_memory_ones(store: Path) -> None:
    ram = D.ClipDataset(store, [0, 2, 5], teachers=TEACHERS, spec=SPEC, teachers_in_ram=True)
    lazy = D.ClipDataset(store, [0, 2, 5], teachers=TEACHERS, spec=SPEC, teachers_in_ram=False)
    assert lazy.tables["image"].embedding is None and ram.tables["image"].embedding is not None
    for i in range(3):
        a, b = ram[(2, i)], lazy[(2, i)]
        for m in TEACHERS:
            assert torch.equal(a["teachers"][m], b["teachers"][m]) and a["masks"][m] == b["masks"][m]


def test_teachers_too_big_for_memory_are_read_lazily_with_a_message(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(teacher_table, "available_memory", lambda: 100)  # bytes: nothing fits
    with caplog.at_level("WARNING", logger="ccl_cache.data"):
        ds = D.ClipDataset(store, [0, 1], teachers=TEACHERS, spec=SPEC)
    assert all(t.embedding is None for t in ds.tables.values())
    assert "teacher image/fake needs" in caplog.text and "GiB" in caplog.text and "lazily" in caplog.text
    assert ds[(0, 1)]["teachers"]["audio"].tolist() == [1.0, -1.0]


# ------------------------------------------------------------------------------ windows and the frame cache


def test_evaluation_windows_cover_the_video(store: Path) -> None:
    every = D.VideoWindows(store, [0, 4], spec=SPEC)
    item = every[0]
    assert item["video"].shape == (FRAMES // 8, 3, 8, 32, 32)  # non-overlapping windows
    firsts = [decode_index(w.frames[0]) for w in every.reader.windows(0, None)]
    assert firsts == [0, 8, 16]
    spaced = [decode_index(w.frames[0]) for w in every.reader.windows(0, 3)]
    assert spaced == [0, 11, 22]  # evenly spaced, the last ends at the last frame
    assert len(every.reader.windows(0, None, max_windows=2)) == 2
    batch = D.collate_windows([every[0], every[1]])
    assert batch["video"].shape[0] == 6 and batch["owner"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["row"].tolist() == [0, 4]


def test_frame_cache_serves_the_same_frames_as_the_files(store: Path, tmp_path: Path) -> None:
    import shutil

    cached = tmp_path / "cached.zarr"
    shutil.copytree(store, cached)
    summary = build_frame_cache(cached, FrameCacheConfig(codec="raw", size=SPEC.base_size, workers=0, chunk_frames=8,
                                                             piece_frames=16))
    assert summary.cached == 10 and summary.frames == 10 * FRAMES and not summary.failed
    from_cache = D.ClipDataset(cached, [0, 3], teachers=TEACHERS, spec=SPEC, source="cache")
    from_file = D.ClipDataset(store, [0, 3], teachers=TEACHERS, spec=SPEC, source="file")
    assert from_cache.reader.cached(0) and not from_file.reader.cached(0)
    for i in range(2):
        a, b = from_cache[(0, i)], from_file[(0, i)]
        assert torch.equal(a["teachers"]["image"], b["teachers"]["image"])
        assert (a["video"] - b["video"]).abs().max() < 0.05  # same decoder, same resize
    wa = from_cache.reader.windows(0, None)
    wb = from_file.reader.windows(0, None)
    assert [decode_index(w.frames[3]) for w in wa] == [decode_index(w.frames[3]) for w in wb] == [3, 11, 19]
    assert np.allclose(np.concatenate([w.times for w in wa]), np.concatenate([w.times for w in wb]))
    # The end of a clip repeats its last frame, as read_clip(pad=True) does.
    tail = from_cache.reader.cache.read(from_cache.reader.store(), 0, FRAMES - 3, 8, 1)
    assert [decode_index(f) for f in tail.frames] == [27, 28, 29, 29, 29, 29, 29, 29]


def test_frame_cache_resumes_and_refuses_other_settings(store: Path, tmp_path: Path) -> None:
    import shutil

    cached = tmp_path / "resume.zarr"
    shutil.copytree(store, cached)
    config = FrameCacheConfig(codec="raw", size=(20, 24), fps=12.5, workers=0, chunk_frames=4, piece_frames=8)
    build_frame_cache(cached, config)
    with open_store(cached, "r+") as s:
        assert s.array("frames/planned")[:].tolist() == [math.floor(1.2 * 12.5)] * 10
        times = s.array("frames/times")[0:15]
        assert np.allclose(np.diff(times), 0.08)  # every second frame of the 25 fps video
        count = s.array("frames/count")
        count[4:8] = np.array([15, 0, 15, 15])  # as if interrupted before row 5 finished
    again = build_frame_cache(cached, config)
    assert (again.cached, again.skipped) == (1, 9)
    with pytest.raises(StoreMismatchError, match="fps: 12.5 \\(store\\) vs 25.0"):
        build_frame_cache(cached, FrameCacheConfig(codec="raw", size=(20, 24), fps=25.0, workers=0, chunk_frames=4,
                                                       piece_frames=8))
    result = CliRunner().invoke(cli, ["cache-clips", str(cached), "--size", "20x24", "--fps", "25",
                                      "--workers", "0", "--codec", "raw", "--overwrite", "--json"])
    assert result.exit_code == 0, result.output
    assert '"cached": 10' in result.output


def test_a_kill_while_replanning_the_frame_cache_leaves_no_usable_old_plan(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: --overwrite re-planned over the old plan, whose "format" marker stayed on the new,
    empty arrays, so a kill in between made training read black frames the old counts called cached."""
    import shutil

    from ccl_cache.store.base import Store

    cached = tmp_path / "replan.zarr"
    shutil.copytree(store, cached)
    config = FrameCacheConfig(codec="raw", size=(20, 24), workers=0, chunk_frames=4, piece_frames=8)
    assert build_frame_cache(cached, config).cached == 10
    real = Store.create_array

    def dies_before_count(self: Store, path: str, *args: object, **kwargs: object) -> object:
        if path == "frames/count":
            raise KeyboardInterrupt  # the process dies here, as under SIGKILL
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(Store, "create_array", dies_before_count)
    with pytest.raises(KeyboardInterrupt):
        build_frame_cache(cached, dataclasses.replace(config, size=(16, 16), overwrite=True))
    monkeypatch.setattr(Store, "create_array", real)
    with open_store(cached) as s:
        assert D.FrameCacheIndex.load(s) is None  # training reads the files, not half a plan
    again = build_frame_cache(cached, dataclasses.replace(config, size=(16, 16)))
    assert (again.cached, again.skipped) == (10, 0)


def test_an_overwrite_that_cannot_fit_keeps_the_frame_cache_there(store: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: --overwrite deleted the old cache, then found the disk too small for the new one."""
    import shutil

    from ccl_cache.store import space

    cached = tmp_path / "keep.zarr"
    shutil.copytree(store, cached)
    config = FrameCacheConfig(codec="raw", size=(20, 24), workers=0, chunk_frames=4, piece_frames=8)
    build_frame_cache(cached, config)
    free = 2 * 1024 * 1024  # room for the old cache's size again, not for a 10x larger one
    monkeypatch.setattr(space.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    with pytest.raises(StoreError, match="free disk space.*--size"):
        build_frame_cache(cached, dataclasses.replace(config, size=(200, 240), overwrite=True))
    with open_store(cached) as s:
        index = D.FrameCacheIndex.load(s)
        assert index is not None and index.size == (20, 24) and (index.count > 0).all()
    # What the old cache frees counts: the same size again fits in the space it gives back.
    assert build_frame_cache(cached, dataclasses.replace(config, overwrite=True)).cached == 10


def test_frame_cache_on_a_full_disk_keeps_the_rows_written_and_resumes(store: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os
    import shutil

    from ccl_cache.store import space
    from ccl_cache.store.base import Store

    cached = tmp_path / "full.zarr"
    shutil.copytree(store, cached)
    config = FrameCacheConfig(codec="raw", size=(20, 24), workers=0, chunk_frames=4, piece_frames=8)
    # Up front: a disk that cannot hold the planned frames is refused before anything is written.
    real_usage = space.shutil.disk_usage
    monkeypatch.setattr(space.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(StoreError, match="free disk space.*--max-frames"):
        build_frame_cache(cached, config)
    monkeypatch.setattr(space.shutil, "disk_usage", real_usage)
    with open_store(cached) as s:
        assert not s.has("frames/count")  # refused before the plan was written

    # Mid-run: the 7th piece finds the disk full (30 frames per row, 4 pieces: row 0 is complete).
    real_array, writes = Store.array, []

    class FullDisk:
        def __init__(self, arr: object) -> None:
            self.arr = arr

        def __getattr__(self, name: str) -> object:
            return getattr(self.arr, name)

        def __getitem__(self, key: object) -> object:
            return self.arr[key]  # type: ignore[index]

        def __setitem__(self, key: object, value: object) -> None:
            writes.append(key)
            if len(writes) > 6:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.arr[key] = value  # type: ignore[index]

    def array(self: Store, path: str) -> object:
        arr = real_array(self, path)
        return FullDisk(arr) if path == "frames/data" else arr

    monkeypatch.setattr(Store, "array", array)
    with pytest.raises(StoreError, match="the disk is full") as info:
        build_frame_cache(cached, config)
    assert str(cached) in str(info.value) and "rerun the same command" in str(info.value)
    monkeypatch.setattr(Store, "array", real_array)
    with open_store(cached) as s:
        assert s.array("frames/count")[:].tolist() == [30] + [0] * 9  # row 1 was never marked done
        assert s.leases() == []
    again = build_frame_cache(cached, config)
    assert (again.skipped, again.cached) == (1, 9)


# ------------------------------------------------------------------------------ sampler


def test_epoch_sampler_is_seeded_sharded_and_resumable() -> None:
    s = D.EpochSampler(10, seed=7)
    s.set_epoch(3)
    order = [i for _, i in s]
    assert sorted(order) == list(range(10)) and all(e == 3 for e, _ in s)
    s.set_epoch(3, skip=4)
    assert [i for _, i in s] == order[4:] and len(s) == 6
    s.set_epoch(4)
    assert [i for _, i in s] != order
    ranks = [D.EpochSampler(10, seed=7, rank=r, world=3) for r in range(3)]
    for r in ranks:
        r.set_epoch(3)
    shards = [[i for _, i in r] for r in ranks]
    assert all(len(x) == 4 for x in shards) and set(sum(shards, [])) == set(range(10))


def test_batched_lookups_agree_with_pick_slot_and_single_items(store: Path) -> None:
    """``TeacherTable.lookup_batch`` (one vectorised pass per batch) answers as ``pick_slot`` does
    row by row, including untimed, absent and frameless rows; ``__getitems__`` = single items."""
    rng = np.random.default_rng(0)
    n, k = 40, 5
    centres = np.sort(rng.uniform(0, 3, (n, k)), 1)
    times = np.stack([centres - 0.1, centres + 0.1], -1)
    times[3] = np.nan  # present but untimed frames: the first present one is used
    mask = rng.random((n, k)) < 0.7
    mask[5] = False  # no frame at all
    emb = torch.from_numpy(rng.standard_normal((n, k, 4)).astype(np.float32))
    rows = np.concatenate([[3, 5], rng.integers(0, n, 300)])
    starts = rng.uniform(-0.5, 3.2, len(rows))
    windows = np.stack([starts, starts + rng.uniform(0.0, 0.6, len(rows))], -1)
    for key, policy in (("image/x", "inside"), ("audio/x", "overlap")):
        table = D.TeacherTable(key, 4, k, times, mask, emb)
        got, present = table.lookup_batch(rows, windows, None)
        for i, row in enumerate(rows):
            slot = D.pick_slot(times[row], mask[row], tuple(windows[i]), policy, None)
            assert bool(present[i]) == (slot >= 0)
            assert torch.equal(got[i], emb[row, slot] if slot >= 0 else torch.zeros(4))
    # Random picks (training): always a frame inside the window when there is one, each reachable.
    table = D.TeacherTable("image/x", 4, k, times, mask, emb)
    row, window = 7, (0.0, 3.0)
    inside = {s for s in range(k) if mask[row, s]}
    draws = np.linspace(0, 0.999, 50)
    slots = table.pick_slots(np.full(50, row), np.tile(window, (50, 1)), draws)
    assert set(slots.tolist()) == inside
    emb_one, ok = table.lookup(row, window, np.random.default_rng(3))
    assert ok and any(torch.equal(emb_one, emb[row, s]) for s in inside)
    # The dataset's batched path gives each item exactly as a single fetch does.
    ds = D.ClipDataset(store, [0, 1, 2, 5], teachers=TEACHERS, spec=SPEC, seed=2)
    keys = [(0, 0), (0, 3), (1, 1), (0, 0)]
    for single, batched in zip([ds[key] for key in keys], ds.__getitems__(keys)):
        assert torch.equal(single["video"], batched["video"]) and single["row"] == batched["row"]
        for m in TEACHERS:
            assert torch.equal(single["teachers"][m], batched["teachers"][m])
            assert bool(single["masks"][m]) == bool(batched["masks"][m])
