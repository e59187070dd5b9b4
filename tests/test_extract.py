"""The extraction pipeline on tiny generated media: content, masks, failures, resume rules, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ccl_cache import extract as ex
from ccl_cache.extract import run as ex_run
from ccl_cache import hardware, media
from ccl_cache.errors import ConfigError, StoreError, StoreLockedError, StoreMismatchError, TeacherError
from ccl_cache.manifest import ClipRecord, Manifest, load_manifest, write_csv
from ccl_cache.store import open_store
from ccl_cache.store import space
from ccl_cache.store.schema import COVERAGE_PATH
from ccl_cache.experiments.synth import SynthConfig, generate, load_truth
from ccl_cache.teachers import build_teacher
from ccl_cache.testing import make_case, sine, write_video
from ccl_cache_cli.main import cli
from ccl_cache.testing.extraction import save_small_teachers

AUDIO_KEY, IMAGE_KEY = "audio/small_audio", "image/small_image"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # stale-lease / random-weights notes


@dataclasses.dataclass(frozen=True)
class Data:
    folder: Path
    manifest: Path
    audio_weights: Path
    image_weights: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    folder = tmp_path_factory.mktemp("extract")
    config = SynthConfig(classes=3, clips_per_class=4, duration=0.6, size=32, pretrain_clips_per_class=0,
                         no_audio=0.25, val_fraction=0.0, test_fraction=0.25, seed=3)
    generate(folder / "synth", config, workers=1)
    audio_w, image_w = save_small_teachers(folder, 0, 1)
    return Data(folder, folder / "synth" / "manifest.csv", audio_w, image_w)


def make_config(data: Data, store: Path, **changes: object) -> ex.ExtractConfig:
    base = ex.ExtractConfig(
        manifest=str(data.manifest), store=str(store), audio_teacher="small_audio",
        audio_weights=str(data.audio_weights), image_teacher="small_image",
        image_weights=str(data.image_weights), image_size=32, frames_per_clip=3, batch_size=4,
        workers=1, device="cpu", timeout_s=30.0, dtype="float32",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def cli_args(data: Data, manifest: Path, store: Path, *extra: str) -> list[str]:
    return ["extract", str(manifest), "--store", str(store), "--audio-teacher", "small_audio",
            "--audio-weights", str(data.audio_weights), "--image-teacher", "small_image",
            "--image-weights", str(data.image_weights), "--image-size", "32", "--frames-per-clip", "3",
            "--batch-size", "4", "--workers", "1", "--device", "cpu", "--dtype", "float32", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished float32 Zarr store that several tests read."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    summary = ex.run_extraction(make_config(data, store))
    assert summary.exit_code == 0 and summary.failed == 0
    return store


def expected_embeddings(data: Data, path: str, frames: int = 3) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """What the teachers say about one clip when run by hand on media.read_* (one clip per batch)."""
    audio_t = build_teacher("small_audio", str(data.audio_weights))
    image_t = build_teacher("small_image", str(data.image_weights), image_size=32)
    info = media.probe(path)
    times = ex.frame_times((0.0, info.duration * media.measure_coverage(path)), frames)
    decoded = media.read_frames(path, times, size=ex.frame_size(info, 32))
    with torch.inference_mode():
        image = image_t(image_t.prepare(decoded.frames)).numpy()
        audio = None
        if info.has_audio:
            wave = media.read_audio(path, sample_rate=16000, start=0.0, end=info.duration)
            audio = audio_t(audio_t.prepare(wave)[None])[0].numpy()
    return audio, image, np.asarray(decoded.times)


def test_embeddings_match_the_teachers_run_by_hand(data: Data, reference: Path) -> None:
    truth = {c["id"]: c for c in load_truth(data.folder / "synth")["clips"]}
    with open_store(reference) as store:
        assert set(store.teacher_keys()) == {AUDIO_KEY, IMAGE_KEY}
        a_emb, a_times, a_mask = store.load_teacher(AUDIO_KEY)
        i_emb, i_times, i_mask = store.load_teacher(IMAGE_KEY)
        assert a_emb.shape == (store.n, 512) and i_emb.shape == (store.n, 3, 512)
        assert store.teacher(AUDIO_KEY).done[:].all() and store.teacher(IMAGE_KEY).done[:].all()
        assert store.failures() == []
        clips = store.clips
        for row in (0, 5, store.n - 1):
            audio, image, pts = expected_embeddings(data, str(clips.path[row]))
            np.testing.assert_allclose(i_emb[row], image, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(i_times[row, :, 0], pts)  # the frames' presentation times
            assert i_mask[row].all()
            if audio is None:
                assert not a_mask[row]
            else:
                np.testing.assert_allclose(a_emb[row], audio, rtol=1e-4, atol=1e-4)
                assert a_mask[row] and a_times[row, 0, 0] == 0.0
        # the clips table learnt the probed columns
        np.testing.assert_allclose(clips.duration, 0.6, atol=0.05)
        assert [bool(h) for h in clips.has_audio] == [truth[str(i)]["has_audio"] for i in clips.id]


def test_missing_audio_is_masked_not_failed(data: Data, reference: Path) -> None:
    with open_store(reference) as store:
        emb, _, mask = store.load_teacher(AUDIO_KEY)
        no_audio = ~store.clips.has_audio
        assert no_audio.sum() >= 2, "the synthetic set should hold clips without audio"
        assert not mask[no_audio].any() and mask[~no_audio].all()
        assert np.all(emb[no_audio] == 0.0) and np.all(np.linalg.norm(emb[~no_audio], axis=1) > 0)
        assert store.failure_rows().size == 0


def test_frame_times_are_uniform_centres_inside_the_clip(reference: Path) -> None:
    with open_store(reference) as store:
        times = store.teacher(IMAGE_KEY).times[:]
        duration = store.clips.duration
    assert np.all(np.diff(times[:, :, 0], axis=1) > 0)
    assert np.all(times[:, :, 0] >= 0) and np.all(times[:, :, 0] < duration[:, None])
    assert ex.frame_times((1.0, 4.0), 3) == [1.5, 2.5, 3.5]


def test_float16_keeps_cosine_with_float32(data: Data, reference: Path, tmp_path: Path) -> None:
    store16 = tmp_path / "half.zarr"
    ex.run_extraction(make_config(data, store16, dtype="float16", workers=0))
    with open_store(reference) as a, open_store(store16) as b:
        for key in (AUDIO_KEY, IMAGE_KEY):
            x, _, mask = a.load_teacher(key)
            y, _, mask16 = b.load_teacher(key)
            assert b.teacher(key).dtype == "float16"
            np.testing.assert_array_equal(mask, mask16)
            x, y = x[mask].reshape(-1, 512), y[mask].reshape(-1, 512)
            cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
            assert cos.min() >= 0.999


def test_rerun_skips_done_rows_and_both_backends_agree(data: Data, reference: Path, tmp_path: Path) -> None:
    h5 = tmp_path / "same.h5"
    first = ex.run_extraction(make_config(data, h5))
    again = ex.run_extraction(make_config(data, h5))
    assert first.processed == first.rows and again.processed == 0 and again.skipped == again.rows
    with open_store(reference) as z, open_store(h5) as h:
        assert h.backend == "hdf5" and z.backend == "zarr"
        for key in (AUDIO_KEY, IMAGE_KEY):
            for a, b in zip(z.load_teacher(key), h.load_teacher(key)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert Path(str(h5) + ".extract.yaml").is_file()


def bad_manifest(data: Data, folder: Path) -> tuple[Path, dict[str, str]]:
    """The synthetic clips plus broken files; returns the manifest and {clip id: case}."""
    good = load_manifest(data.manifest)
    cases = {"bad_zero": "zero_byte", "bad_garbage": "garbage", "bad_trunc": "truncated_moov_end",
             "bad_partial": "truncated_faststart"}
    extra = [ClipRecord(cid, str(make_case(case, folder)), good.records[0].label) for cid, case in cases.items()]
    extra.append(ClipRecord("bad_missing", str(folder / "does-not-exist.mp4"), good.records[0].label))
    records = list(good.records[:3]) + extra[:2] + list(good.records[3:6]) + extra[2:]
    path = folder / "with_bad.csv"
    write_csv(Manifest.from_records(records, good.classes), path)
    return path, {**cases, "bad_missing": "missing"}


def test_bad_files_become_ledger_entries_and_the_run_goes_on(data: Data, tmp_path: Path) -> None:
    manifest, cases = bad_manifest(data, tmp_path)
    store = tmp_path / "bad.zarr"
    result = CliRunner().invoke(cli, cli_args(data, manifest, store, "--min-coverage", "0.9", "--json"))
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["failed"] == len(cases) and summary["processed"] == 6 + len(cases)
    with open_store(store) as s:
        failures = {f["id"]: f for f in s.failures()}
        assert set(failures) == set(cases)
        assert failures["bad_missing"]["reason"] == "not-found"
        assert failures["bad_partial"]["reason"] == "partial" and 0.2 < failures["bad_partial"]["coverage"] < 0.9
        for key in (AUDIO_KEY, IMAGE_KEY):
            emb, _, mask = s.load_teacher(key)
            rows = [s.clips.row_of()[cid] for cid in cases]
            assert not mask[rows].any() and np.all(emb[rows] == 0)
            assert s.teacher(key).done[:].all()  # failures are data: done, masked, in the ledger
        good_rows = [i for i, cid in enumerate(s.clips.id) if cid not in cases]
        assert s.teacher(IMAGE_KEY).mask[:][good_rows].all()
    lines = [json.loads(line) for line in Path(str(store) + ".failures.jsonl").read_text().splitlines()]
    assert {line["id"] for line in lines} == set(cases) and all(line["message"] for line in lines)


def test_retry_failed_redoes_only_failed_rows(data: Data, tmp_path: Path) -> None:
    manifest, cases = bad_manifest(data, tmp_path)
    store = tmp_path / "retry.zarr"
    config = make_config(data, store, manifest=str(manifest), workers=0, min_coverage=0.9)
    assert ex.run_extraction(config).failed == len(cases)
    zero = next(r.path for r in load_manifest(manifest, check_files=False).records if r.id == "bad_zero")
    shutil.copyfile(load_manifest(data.manifest).records[0].path, zero)  # repair one file
    again = ex.run_extraction(config)
    assert again.processed == 0 and again.exit_code == 1  # a plain rerun leaves failures alone
    retried = ex.run_extraction(dataclasses.replace(config, retry_failed=True))
    assert retried.processed == len(cases) and retried.failed == len(cases) - 1
    with open_store(store) as s:
        assert "bad_zero" not in {f["id"] for f in s.failures()}
        row = s.clips.row_of()["bad_zero"]
        assert s.teacher(IMAGE_KEY).mask[row].all() and s.teacher(AUDIO_KEY).mask[row]


def test_changed_teacher_settings_are_refused_unless_overwrite(data: Data, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "prov.zarr"
    shutil.copytree(reference, store)
    with pytest.raises(StoreMismatchError, match="frames_per_clip"):
        ex.run_extraction(make_config(data, store, frames_per_clip=2, audio_teacher=None))
    result = CliRunner().invoke(cli, cli_args(data, data.manifest, store, "--image-size", "48"))
    assert result.exit_code != 0 and "image_size" in str(result.exception)
    done = ex.run_extraction(make_config(data, store, frames_per_clip=2, audio_teacher=None, overwrite=True))
    assert done.processed == done.rows
    with open_store(store) as s:
        assert s.teacher(IMAGE_KEY).embedding.shape[1] == 2
        assert s.teacher(IMAGE_KEY).fingerprint["extraction"]["frames_per_clip"] == 2


def test_live_lease_refuses_a_second_writer_unless_force(data: Data, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "lease.zarr"
    shutil.copytree(reference, store)
    with open_store(store, "r+") as held:
        held.acquire_lease()
        with pytest.raises(StoreLockedError, match="--force"):
            ex.run_extraction(make_config(data, store))
        assert ex.run_extraction(make_config(data, store, force=True)).exit_code == 0


STALLING_DECODE = """
import os, time
from ccl_cache.extract import decode_clip

def stalling_decode(task, spec):
    if task.row == 1:  # hangs: a stalled network mount in miniature
        time.sleep(3600)
    if task.row == 3:  # the decoder process dies (a segfault in miniature)
        os._exit(3)
    return decode_clip(task, spec)
"""


def test_a_hanging_or_crashing_clip_is_recorded_and_its_worker_replaced(
    data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decode function lives in a tiny module so that spawned workers import it quickly
    # (spawned children get the parent's sys.path).
    (tmp_path / "stalling_decode_mod.py").write_text(STALLING_DECODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from stalling_decode_mod import stalling_decode  # type: ignore[import-not-found]

    records = load_manifest(data.manifest).records[:6]
    tasks = [ex.ClipTask(i, r.path, r.start, r.end, image=True) for i, r in enumerate(records)]
    spec = ex.DecodeSpec(image_size=32, frames_per_clip=2)
    with ex.DecodePool(spec, workers=2, timeout_s=2.0, decode=stalling_decode) as pool:
        pool.start(tasks)
        clips = {c.row: c for c in (pool.get() for _ in tasks)}
    assert clips[1].failures["image"].reason == "timeout" and "--timeout" in clips[1].failures["image"].message
    assert clips[3].failures["image"].reason == "crash"
    assert pool.replaced == 2
    for row in (0, 2, 4, 5):
        assert not clips[row].failures and clips[row].frames.shape == (2, 32, 32, 3)


TORCH_PROBE = """
import sys
from ccl_cache.extract import decode_clip

def decode_and_report(task, spec):
    clip = decode_clip(task, spec)
    clip.failures = {"torch": "torch" in sys.modules}  # what the worker process has imported
    return clip
"""


@pytest.mark.parametrize("module", ["ccl_cache.extract.decode", "ccl_cache.extract.frame_cache", "ccl_cache.workers",
                                    "ccl_cache.experiments.synth"])
def test_what_decode_workers_import_leaves_torch_out(module: str) -> None:
    """Workers import the module of the function they run (forkserver): it must not pull in torch."""
    import ccl_cache

    root = str(Path(ccl_cache.__file__).resolve().parents[1])  # this checkout, whatever PYTHONPATH says
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    code = f"import {module}, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_decode_worker_processes_run_without_torch(data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "torch_probe_mod.py").write_text(TORCH_PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from torch_probe_mod import decode_and_report  # type: ignore[import-not-found]

    records = load_manifest(data.manifest).records[:2]
    tasks = [ex.ClipTask(i, r.path, r.start, r.end, image=True) for i, r in enumerate(records)]
    spec = ex.DecodeSpec(image_size=32, frames_per_clip=2)
    with ex.DecodePool(spec, workers=1, timeout_s=60.0, decode=decode_and_report) as pool:
        pool.start(tasks)
        clips = [pool.get() for _ in tasks]
    assert [c.failures for c in clips] == [{"torch": False}] * 2
    assert all(c.frames is not None and c.frames.shape == (2, 32, 32, 3) for c in clips)


def test_audio_segments(data: Data, tmp_path: Path) -> None:
    store = tmp_path / "seg.zarr"
    ex.run_extraction(make_config(data, store, audio_segment=0.25, image_teacher=None))
    with open_store(store) as s:
        t = s.teacher(AUDIO_KEY)
        assert t.frames == 2 and t.embedding.shape == (s.n, 2, 512)  # 0.6 s -> two 0.25 s segments
        has = s.clips.has_audio
        np.testing.assert_array_equal(t.mask[:], np.repeat(has[:, None], 2, axis=1))
        np.testing.assert_allclose(t.times[:][has][:, :, 0], np.tile([0.0, 0.25], (has.sum(), 1)))


def test_fails_early_before_loading_models(data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_models(*a: object, **k: object) -> None:
        raise AssertionError("models must not load before the output checks")

    monkeypatch.setattr(ex_run, "build_teachers", no_models)
    with pytest.raises(ConfigError, match="does not exist"):
        ex.run_extraction(make_config(data, tmp_path / "missing" / "s.zarr"))
    with pytest.raises(StoreError, match="cannot write"):
        ex.run_extraction(make_config(data, Path("/proc/ccl-test.zarr")))
    monkeypatch.setattr(space.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(StoreError, match="free disk space"):
        ex.run_extraction(make_config(data, tmp_path / "full.zarr"))


def test_a_teacher_that_cannot_load_leaves_no_empty_store(data: Data, tmp_path: Path) -> None:
    """Bad weights (here a tag the teacher does not have) used to fail after the store was made,
    leaving an empty store behind; a new store now waits for its teachers."""
    store = tmp_path / "never.zarr"
    with pytest.raises(TeacherError, match="no built-in weights 'imagenet'.*'none'"):
        ex.run_extraction(make_config(data, store, image_weights="imagenet"))
    assert not store.exists()
    assert ex.run_extraction(make_config(data, store)).exit_code == 0
    # --overwrite of a store of another manifest: the old store is kept when the teachers fail.
    other = tmp_path / "other.csv"
    lines = data.manifest.read_text().splitlines()
    other.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(TeacherError):
        ex.run_extraction(make_config(data, store, manifest=str(other), image_weights="imagenet", overwrite=True))
    with open_store(store) as s:
        assert s.n == len(lines) - 1 and set(s.teacher_keys()) == {AUDIO_KEY, IMAGE_KEY}
        assert s.teacher(IMAGE_KEY).done[:].all()


def test_config_validation_and_shard_paths() -> None:
    with pytest.raises(ConfigError, match="no teacher"):
        ex.ExtractConfig("m.csv", "s.zarr", audio_teacher=None, image_teacher=None).validate()
    with pytest.raises(ConfigError, match="I/N"):
        ex.ExtractConfig("m.csv", "s.zarr", shard="2-of-3").validate()
    assert ex.store_path_for("out/x.h5", (1, 4)) == Path("out/x.shard-1-of-4.h5")
    assert ex.store_path_for("out/x.zarr", (1, 4)) == Path("out/x.zarr")
    assert ex.resolve_shard("0/1") is None and ex.resolve_shard("2/3") == (2, 3)


def test_torchrun_environment_picks_the_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert ex.resolve_shard(None) == (1, 3)
    assert ex.resolve_shard("0/2") == (0, 2)  # an explicit --shard wins


@pytest.mark.parametrize("visible, expected", [(1, "cuda:0"), (4, "cuda:3"), (2, None)])
def test_torchrun_local_rank_picks_a_visible_gpu(visible: int, expected: str | None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher that shows each process only its own GPU (CUDA_VISIBLE_DEVICES per rank) makes
    LOCAL_RANK 3 mean cuda:0; more ranks than GPUs is a ConfigError, not a raw CUDA error. Extraction
    and the trainer resolve the same way (hardware.resolve_device)."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    if expected is None:
        with pytest.raises(ConfigError, match="LOCAL_RANK=3 but this process sees 2 GPU"):
            hardware.resolve_device("cuda")
        with pytest.raises(ConfigError, match="LOCAL_RANK=3 but this process sees 2 GPU"):
            hardware.resolve_device("cuda", hardware.Launch(3, 4, 3))
    else:
        assert hardware.resolve_device("cuda") == torch.device(expected)
        assert hardware.resolve_device("cuda", hardware.Launch(3, 4, 3)) == torch.device(expected)


def test_cli_help_documents_exit_status() -> None:
    result = CliRunner().invoke(cli, ["extract", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "0 every clip has its embeddings; 1 some clips failed" in text and "small_audio" in text


def test_clip_window_is_honoured(data: Data, tmp_path: Path) -> None:
    """A clip window [start, end) is honoured: audio times and frame times stay inside it."""
    path = write_video(tmp_path / "long.mp4", size=(32, 32), num_frames=50, fps=25, audio=sine(440, 2.0))
    good = load_manifest(data.manifest)
    rec = ClipRecord("window", str(path), good.records[0].label, start=0.5, end=1.5)
    manifest = tmp_path / "win.csv"
    write_csv(Manifest.from_records([rec], good.classes), manifest)
    store = tmp_path / "win.zarr"
    ex.run_extraction(make_config(data, store, manifest=str(manifest), workers=0))
    with open_store(store) as s:
        a_times = s.teacher(AUDIO_KEY).times[:]
        i_times = s.teacher(IMAGE_KEY).times[:]
    np.testing.assert_allclose(a_times[0, 0], [0.5, 1.5])
    assert np.all((i_times[0, :, 0] >= 0.5 - 0.04) & (i_times[0, :, 0] < 1.5))


class Glitchy(torch.nn.Module):
    """Mean colour per image, 6-d; NaN for white images, huge for red ones, raises on green ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red, green = x[:, 0].mean(dim=(1, 2)), x[:, 1].mean(dim=(1, 2))  # normalised: > 1.5 is bright
        if ((green > 1.5) & (red < 0)).any():
            raise RuntimeError("green input breaks this network")
        y = x.mean(dim=(2, 3)).repeat(1, 2)
        y[x.amin(dim=(1, 2, 3)) > 1.5] = float("nan")
        y[(red > 1.5) & (green < 0)] *= 1e6
        return y


def glitchy_clip(row: int, rgb: tuple[int, int, int]) -> ex.DecodedClip:
    frames = np.broadcast_to(np.array(rgb, dtype=np.uint8), (2, 32, 32, 3)).copy()
    return ex.DecodedClip(row=row, window=(0.0, 1.0), frames=frames, frame_times=np.array([0.25, 0.75]))


def test_teacher_outputs_are_checked_and_a_breaking_clip_is_isolated() -> None:
    from ccl_cache.teachers import Teacher
    from ccl_cache.teachers.base import image_preprocess

    teacher = Teacher(name="glitchy", arch="glitchy", backbone=Glitchy(), dim=6, preprocess=image_preprocess(32))
    runner = ex.TeacherRunner("image/glitchy", teacher.eval(), "cpu", amp=False, dtype="float16", slots=2)
    clips = [glitchy_clip(10, (40, 40, 40)), glitchy_clip(11, (255, 255, 255)), glitchy_clip(12, (255, 0, 0)),
             glitchy_clip(13, (0, 255, 0)), glitchy_clip(14, (90, 60, 30))]
    out = runner.run(clips)
    reasons = {row: f.reason for row, f in out.failures.items()}
    assert reasons == {11: "teacher-nonfinite", 12: "teacher-nonfinite", 13: "teacher-error"}
    assert "float16" in out.failures[12].message and "green" in out.failures[13].message
    assert out.mask.tolist() == [[True, True], [False, False], [False, False], [False, False], [True, True]]
    assert np.all(out.embedding[1:4] == 0) and np.all(np.isfinite(out.embedding))
    np.testing.assert_allclose(out.times[0, :, 0], [0.25, 0.75])
    # the clips that share a batch with a breaking one still get their embeddings
    plan = ex.ChunkPlan(slice(10, 15), {"image/glitchy": np.arange(10, 15)}, retry=np.array([10, 13]))
    job = ex_run._infer_chunk(plan, clips, [runner])
    assert sorted(job.failures) == [11, 12, 13] and job.clear == [10]


class RationedMemory(torch.nn.Module):
    """Mean colour per image; "runs out of device memory" on batches of more than ``limit`` images,
    or raises a fatal device error when told to."""

    def __init__(self, limit: int, fatal: bool = False) -> None:
        super().__init__()
        self.limit, self.fatal, self.batches = limit, fatal, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fatal:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} images")
        return x.mean(dim=(2, 3)).repeat(1, 2)


def rationed_runner(limit: int, fatal: bool = False) -> ex.TeacherRunner:
    from ccl_cache.teachers import Teacher
    from ccl_cache.teachers.base import image_preprocess

    teacher = Teacher(name="rationed", arch="rationed", backbone=RationedMemory(limit, fatal), dim=6,
                      preprocess=image_preprocess(32))
    return ex.TeacherRunner("image/rationed", teacher.eval(), "cpu", amp=False, dtype="float32", slots=2,
                            max_items=16)


def test_out_of_device_memory_halves_the_batches_and_a_fatal_device_error_stops() -> None:
    clips = [glitchy_clip(row, (10 * row, 40, 40)) for row in range(8)]  # 2 frames each: 16 images
    reference = rationed_runner(limit=16).run(clips)
    runner = rationed_runner(limit=5)
    out = runner.run(clips)
    assert not out.failures and np.array_equal(out.embedding, reference.embedding) and out.mask.all()
    assert runner.teacher.backbone.batches == [16, 8, 4, 4, 4, 4]  # 8 clips, then 4, then 2 at a time
    assert runner.max_items == 4  # later chunks start at the size that fitted
    alone = rationed_runner(limit=1).run(clips[:1])  # one clip's 2 frames never fit
    assert alone.failures[0].reason == "teacher-error" and "out of device memory" in alone.failures[0].message
    with pytest.raises(torch.AcceleratorError, match="illegal memory access"):
        rationed_runner(limit=16, fatal=True).run(clips)  # not 8 clips marked failed and done


def test_strict_turns_decoder_errors_into_failures(data: Data, tmp_path: Path) -> None:
    good = load_manifest(data.manifest)
    flipped = make_case("bitflip", tmp_path)
    manifest = tmp_path / "flip.csv"
    write_csv(Manifest.from_records([ClipRecord("flip", str(flipped), good.records[0].label)], good.classes), manifest)
    lenient = ex.run_extraction(make_config(data, tmp_path / "lenient.zarr", manifest=str(manifest), workers=0,
                                            audio_teacher=None))  # fmt: skip
    strict = ex.run_extraction(make_config(data, tmp_path / "strict.zarr", manifest=str(manifest), workers=0,
                                           audio_teacher=None, strict=True))  # fmt: skip
    assert lenient.failed == 0 and strict.failures_by_reason == {"decode": 1}
    with open_store(tmp_path / "strict.zarr") as s:
        assert "--strict" in s.failures()[0]["message"]


def test_coverage_is_recorded_for_every_decoded_clip(data: Data, reference: Path, tmp_path: Path) -> None:
    with open_store(reference) as s:
        np.testing.assert_allclose(s.array(COVERAGE_PATH)[:], 1.0, atol=0.05)
    good = load_manifest(data.manifest)
    part = make_case("truncated_faststart", tmp_path)
    manifest = tmp_path / "part.csv"
    write_csv(Manifest.from_records([ClipRecord("part", str(part), good.records[0].label)], good.classes), manifest)
    store = tmp_path / "part.zarr"
    summary = ex.run_extraction(make_config(data, store, manifest=str(manifest), workers=0, min_coverage=0.2))
    assert summary.failed == 0  # accepted: above min_coverage, embedded from its decodable part
    with open_store(store) as s:
        coverage = float(s.array(COVERAGE_PATH)[0])
        times = s.teacher(IMAGE_KEY).times[0, :, 0]
        assert 0.2 < coverage < 0.9 and s.teacher(IMAGE_KEY).mask[0].all()
        assert times.max() < coverage * s.clips.duration[0]


def _cosines(a: Path, b: Path) -> dict[str, np.ndarray]:
    """Per-row cosine of each teacher's embeddings in two stores of the same clips."""
    out = {}
    with open_store(a) as sa, open_store(b) as sb:
        for key in (AUDIO_KEY, IMAGE_KEY):
            x, _, mask = sa.load_teacher(key)
            y, _, mask_b = sb.load_teacher(key)
            np.testing.assert_array_equal(mask, mask_b)
            x, y = x[mask].reshape(-1, 512), y[mask].reshape(-1, 512)
            out[key] = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return out


@pytest.mark.skipif(not hardware.cpu_has_bf16(), reason="this CPU has no bfloat16 units (amp stays float32 here)")
def test_cpu_amp_uses_bfloat16_and_agrees_with_float32(data: Data, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "amp.zarr"
    assert ex.run_extraction(make_config(data, store, amp=True)).failed == 0
    cosines = _cosines(reference, store)
    for key, cos in cosines.items():
        assert cos.min() >= 0.999, key  # bfloat16 autocast vs float32, same CPU
    # bfloat16 really ran: the embeddings differ from float32 beyond float rounding.
    assert min(cos.min() for cos in cosines.values()) < 1 - 1e-7
    # The compute precision is part of the fingerprint: a float32 resume must not mix its rows in.
    with open_store(store) as s, open_store(reference) as r:
        assert all(s.teacher(k).fingerprint["extraction"]["compute"] == "bfloat16" for k in s.teacher_keys())
        assert all("compute" not in r.teacher(k).fingerprint["extraction"] for k in r.teacher_keys())
    with pytest.raises(StoreMismatchError, match=r'extraction.compute: "bfloat16" \(store\) vs <absent> \(now\)'):
        ex.run_extraction(make_config(data, store, amp=False))


def test_cpu_autocast_only_where_the_cpu_has_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = build_teacher("small_image", None, image_size=32)
    cpu = torch.device("cpu")
    off = ex.TeacherRunner("image/small", teacher, "cpu", amp=False, dtype="float32", slots=1)
    on = ex.TeacherRunner("image/small", teacher, "cpu", amp=True, dtype="float32", slots=1)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert on._autocast(cpu) == (True, torch.bfloat16) and off._autocast(cpu)[0] is False
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)  # emulated bfloat16 would be slower
    assert on._autocast(cpu)[0] is False


def test_cpu_teachers_run_channels_last_with_the_same_values(data: Data) -> None:
    teachers = ex.build_teachers(make_config(data, Path("unused.zarr")), "cpu")
    x = torch.rand(4, 3, 32, 32)
    conv = next(m for m in teachers["image"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = build_teacher("small_image", str(data.image_weights), image_size=32).eval()
    with torch.inference_mode():
        torch.testing.assert_close(teachers["image"](x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_with_amp_agrees_with_cpu(data: Data, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "gpu.zarr"
    summary = ex.run_extraction(make_config(data, store, device="cuda", amp=True))
    assert summary.failed == 0
    for cos in _cosines(reference, store).values():
        assert cos.min() >= 0.99  # bfloat16/float16 autocast vs float32 on CPU


def test_a_kill_between_the_clip_columns_and_the_done_flags_is_redone_on_resume(
        data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer commits the per-clip columns (duration, coverage) before the done flags, so a run
    that dies in between resumes that chunk instead of skipping it with NaN coverage (seen once in
    the SIGKILL test of tests/test_reliability_slow.py, where a whole chunk kept NaN coverage)."""
    store = tmp_path / "cols.zarr"
    config = make_config(data, store, audio_teacher=None, workers=0)
    real, calls = ex.StoreWriter._record_clips, []

    def dies_on_the_second_chunk(self: ex.StoreWriter, rows: slice, decoded: list) -> None:
        calls.append(rows.start)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here, as under SIGKILL
        real(self, rows, decoded)

    monkeypatch.setattr(ex.StoreWriter, "_record_clips", dies_on_the_second_chunk)
    with pytest.raises((KeyboardInterrupt, StoreError)):
        ex.run_extraction(config)
    monkeypatch.setattr(ex.StoreWriter, "_record_clips", real)
    resumed = ex.run_extraction(config)
    assert resumed.skipped == 4  # only the first chunk was committed
    with open_store(store) as s:
        assert np.isfinite(np.asarray(s.array(COVERAGE_PATH)[:])).all()
        assert np.isfinite(s.clips.duration).all()


def test_a_failure_recorded_by_a_killed_run_is_cleared_when_the_row_succeeds_on_resume(
        data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the writer records a chunk's failures before its data and done flags, so a row
    that failed for a passing reason (a timeout) in a run killed in between kept its ledger entry
    after succeeding on resume: excluded from training and counted as failed."""
    store = tmp_path / "stale.zarr"
    config = make_config(data, store, audio_teacher=None, workers=0)
    real = ex.StoreWriter._commit

    def dies_after_the_ledger(self: ex.StoreWriter, job: ex.ChunkJob) -> None:
        if job.rows.start == 4:
            self.store.record_failure(5, "decode", "timeout", "decoder stuck")  # transient
            raise KeyboardInterrupt  # the process dies here, as under SIGKILL
        real(self, job)

    monkeypatch.setattr(ex.StoreWriter, "_commit", dies_after_the_ledger)
    with pytest.raises((KeyboardInterrupt, StoreError)):
        ex.run_extraction(config)
    monkeypatch.setattr(ex.StoreWriter, "_commit", real)
    with open_store(store) as s:
        assert s.failure_rows() == [5]
    resumed = ex.run_extraction(config)
    assert resumed.failed == 0
    with open_store(store) as s:
        assert s.failures() == [] and s.teacher(IMAGE_KEY).done[:].all()


def test_a_damaged_store_is_replaced_by_extract_overwrite_as_its_message_says(data: Data, tmp_path: Path) -> None:
    """Regression: the damaged-store error advised `extract --overwrite`, which then gave the same error."""
    store = tmp_path / "damaged.zarr"
    store.mkdir()
    (store / "junk").write_text("not a store")
    config = make_config(data, store, audio_teacher=None, workers=0)
    with pytest.raises(StoreError, match="damaged.*--overwrite"):
        ex.run_extraction(config)
    assert ex.run_extraction(dataclasses.replace(config, overwrite=True)).failed == 0
    with open_store(store) as s:
        assert s.teacher(IMAGE_KEY).done[:].all()


def test_a_missing_root_is_refused_before_a_store_of_not_found_clips_is_made(data: Data, tmp_path: Path) -> None:
    for command in (["extract", str(data.manifest), "--store", str(tmp_path / "s.zarr")],
                    ["teach", str(data.manifest), "--modality", "image", "--arch", "small_image",
                     "--out", str(tmp_path / "t.pt")]):
        result = CliRunner().invoke(cli, [*command, "--root", str(tmp_path / "nodir")])
        assert result.exit_code == 2 and "does not exist" in result.output, result.output
    assert not (tmp_path / "s.zarr").exists()


def test_resume_redoes_only_unfinished_chunks_including_an_odd_tail(data: Data, tmp_path: Path) -> None:
    good = load_manifest(data.manifest)
    manifest = tmp_path / "eleven.csv"
    write_csv(Manifest.from_records(good.records[:11], good.classes), manifest)  # chunks 4 + 4 + 3
    store = tmp_path / "tail.zarr"
    config = make_config(data, store, manifest=str(manifest), audio_teacher=None, workers=0)
    ex.run_extraction(config)
    with open_store(store, "r+") as s:
        before = s.load_teacher(IMAGE_KEY)[0]
        done = s.teacher(IMAGE_KEY).done
        done[8:11] = np.zeros(3, dtype=bool)  # as if killed before the tail chunk was committed
        s.array(f"teachers/{IMAGE_KEY}/embedding")[8:11] = np.zeros((3, 3, 512), dtype=np.float32)
    resumed = ex.run_extraction(config)
    assert (resumed.processed, resumed.skipped) == (3, 8)
    with open_store(store) as s:
        np.testing.assert_array_equal(s.load_teacher(IMAGE_KEY)[0], before)


def test_inference_threads_leave_the_decode_workers_their_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ex.ExtractConfig(manifest="m.csv", store="s.zarr", workers=2)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: set(range(6)), raising=False)
    assert ex.inference_threads(base, "cpu") == 4
    assert ex.inference_threads(dataclasses.replace(base, workers=8), "cpu") == 1  # at least one
    assert ex.inference_threads(dataclasses.replace(base, threads=3), "cpu") == 3  # asked for
    assert ex.inference_threads(base, "cuda:0") is None  # torch's default on CUDA
    with pytest.raises(ConfigError, match="threads=0: need at least 1"):
        dataclasses.replace(base, threads=0).validate()


def test_extraction_sets_its_threads_records_them_and_restores_the_callers(data: Data, tmp_path: Path) -> None:
    store = tmp_path / "threads.zarr"
    before = torch.get_num_threads()
    seen: list[int] = []
    config = make_config(data, store, image_teacher=None, threads=1 if before > 1 else 2)
    ex.run_extraction(config, progress=lambda event: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {config.threads}  # inference ran with the asked threads
    assert torch.get_num_threads() == before  # and the caller's setting is back
    saved = (ex.config_path_for(store, None)).read_text()
    assert f"threads: {config.threads}" in saved


@pytest.mark.parametrize("replaced", [False, True])
def test_ctrl_c_hint_drops_overwrite_only_once_the_old_store_was_replaced(
        data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replaced: bool) -> None:
    """Before the first progress event (manifest, space check, teachers loading) nothing was
    replaced: a rerun without --overwrite would be refused, so the hint keeps the same command."""
    from ccl_cache_cli import extract as extract_cli

    def interrupted(config: ex.ExtractConfig, progress: Any = None) -> None:
        if replaced:
            progress(ex.ProgressEvent(done=0, total=12, processed=0, skipped=0, failed=0, missing_audio=0,
                                      elapsed=0.0))
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_cli, "run_extraction", interrupted)
    result = CliRunner().invoke(cli, cli_args(data, data.manifest, tmp_path / "s.zarr", "--overwrite", "--quiet"))
    assert "Aborted" in result.output
    assert ("rerun the same command without --overwrite to resume" in result.output) is replaced
    assert "rerun the same command" in result.output


def test_the_ledger_keeps_the_failure_that_rules_out_most(data: Data, reference: Path, tmp_path: Path) -> None:
    """One failure per row: the audio runner's came first and hid an image one (the student then
    read frames that were not there); and a run adding a teacher overwrote an earlier image failure."""
    from types import SimpleNamespace

    audio = ex.Failure("audio", "decode", "bad audio")
    image = ex.Failure("image", "no-video", "no video stream")

    class Stub:
        def __init__(self, key: str, failure: ex.Failure) -> None:
            self.key, self.failure, self.modality = key, failure, key.split("/")[0]

        def run(self, clips: list[Any]) -> Any:
            return SimpleNamespace(failures={0: self.failure})

    plan = ex.ChunkPlan(slice(0, 4), {AUDIO_KEY: np.array([0]), IMAGE_KEY: np.array([0])}, np.array([], dtype=int))
    clips = [SimpleNamespace(row=0, failures={})]
    job = ex_run._infer_chunk(plan, clips, [Stub(AUDIO_KEY, audio), Stub(IMAGE_KEY, image)])
    assert job.failures[0] is image
    # Across runs: row 1 holds an image failure; a later run's audio failure leaves it, unless
    # that run redoes the row (--retry-failed).
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    with open_store(store, "r+") as s:
        s.record_failure(1, "image", "no-video", "no video stream")
        writer = ex.StoreWriter.__new__(ex.StoreWriter)
        writer.store = s
        later = ex.ChunkJob(slice(0, 4), {}, {1: audio, 2: audio}, [], [])
        assert writer._ledger_entries(later) == {2: audio}
        redone = ex.ChunkJob(slice(0, 4), {}, {1: audio}, [], [], frozenset({1}))
        assert writer._ledger_entries(redone) == {1: audio}


def test_an_audio_only_extraction_still_records_files_without_video(data: Data, tmp_path: Path) -> None:
    """Without an image teacher nothing read the frames, so an audio-only file was not in the
    ledger, and a distill run on the store failed on it in its loader."""
    from ccl_cache.manifest import load_manifest
    from ccl_cache.testing import make_case

    first = load_manifest(data.manifest).records[0]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,path,label\nok,{first.path},{first.label}\n"
                        f"sound,{make_case('audio_only', tmp_path)},{first.label}\n")
    store = tmp_path / "a.zarr"
    summary = ex.run_extraction(make_config(data, store, manifest=str(manifest), image_teacher=None))
    assert summary.exit_code == 1 and summary.failures_by_reason == {"no-video": 1}
    with open_store(store) as s:
        assert [(f["row"], f["stage"], f["reason"]) for f in s.failures()] == [(1, "image", "no-video")]
        assert s.teacher(AUDIO_KEY).mask[:].all()  # its audio embedding is kept
