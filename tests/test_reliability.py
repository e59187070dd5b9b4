"""Reliability (issue #7): bad inputs are recorded and the run goes on, faults lose nothing, files
are data. Each test here covers an item that the rooms' own tests leave open; docs/reliability.md
maps every item of the issue to the test that proves it.

Media are generated here (``ccl_cache.testing``), teachers are the small CPU ones with seeded
weights saved to files, and extraction decodes in-process (``workers=0``) unless a test is about
decode workers.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ccl_cache import extract as ex
from ccl_cache.extract import output as ex_output
from ccl_cache.extract import run as ex_run
from ccl_cache import media
from ccl_cache.errors import CheckpointError, IndexMismatchError, StoreError, StoreMismatchError, TeacherError
from ccl_cache.fileio import atomic_path, owner_tag, save_config
from ccl_cache.manifest import ClipRecord, Manifest, write_csv
from ccl_cache.store import open_store
from ccl_cache.teachers import build_teacher
from ccl_cache.testing import make_case, sine, write_video
from ccl_cache.testing import media_gen as mg
from ccl_cache.train.checkpoint import load_checkpoint, save_checkpoint
from ccl_cache_cli.main import cli
from ccl_cache.testing.extraction import save_small_teachers

AUDIO_KEY, IMAGE_KEY = "audio/small_audio", "image/small_image"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # random-weights / stale-lease notes


@dataclasses.dataclass(frozen=True)
class Data:
    folder: Path
    videos: dict[str, Path]  # clip id -> a healthy little video (with audio)
    audio_weights: Path
    image_weights: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    folder = tmp_path_factory.mktemp("reliability")
    videos = {}
    for i in range(4):
        rgb = np.array([60 * i, 255 - 50 * i, 120], np.uint8)  # a different colour per clip
        frames = np.broadcast_to(rgb, (10, 32, 32, 3)).copy()
        videos[f"good{i}"] = write_video(folder / f"good{i}.mp4", frames=frames, fps=20,
                                         audio=sine(300.0 + 100 * i, 0.5))  # fmt: skip
    return Data(folder, videos, *save_small_teachers(folder, 0, 1))


def manifest_of(folder: Path, clips: dict[str, Path], name: str = "manifest.csv") -> Path:
    """A CSV manifest of ``clips`` (id -> path), labels alternating between two classes."""
    records = [ClipRecord(cid, str(path), ("a", "b")[i % 2]) for i, (cid, path) in enumerate(clips.items())]
    path = folder / name
    write_csv(Manifest.from_records(records, ("a", "b")), path)
    return path


def config(data: Data, manifest: Path, store: Path, **changes: Any) -> ex.ExtractConfig:
    base = ex.ExtractConfig(
        manifest=str(manifest), store=str(store), audio_teacher="small_audio",
        audio_weights=str(data.audio_weights), image_teacher="small_image",
        image_weights=str(data.image_weights), image_size=32, frames_per_clip=2, batch_size=4,
        workers=0, device="cpu", timeout_s=30.0, dtype="float32",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def ledger(store: Path) -> dict[str, dict[str, Any]]:
    with open_store(store) as s:
        return {f["id"]: f for f in s.failures()}


# ============================================================================================
# Bad inputs (items 1-7): decoded correctly, or recorded with a reason while the run goes on


BROKEN_REASONS = {"zero_byte": "empty", "garbage": "unreadable", "text_as_mp4": "unreadable",
                  "truncated_moov_end": "unreadable", "dangling_symlink": "not-found", "directory": "not-a-file"}


def test_every_kind_of_bad_file_is_recorded_and_the_run_goes_on(data: Data, tmp_path: Path) -> None:
    cases = {name: make_case(name, tmp_path / "media") for name in
             [*BROKEN_REASONS, "audio_only", "silent_audio", "audio_short", "two_audio_tracks", "one_frame"]}
    clips = {"good0": data.videos["good0"], **cases, "good1": data.videos["good1"]}
    store = tmp_path / "bad.zarr"
    summary = ex.run_extraction(config(data, manifest_of(tmp_path, clips), store))
    assert summary.exit_code == 1 and summary.processed == len(clips)  # nothing stopped the run
    failures = ledger(store)
    # audio_short: its audio covers 0.4 of the window, below min_coverage 0.5: an audio failure
    assert {cid: f["reason"] for cid, f in failures.items()} == {**BROKEN_REASONS, "audio_only": "no-video",
                                                                  "audio_short": "partial-audio"}
    assert failures["audio_short"]["stage"] == "audio"
    assert failures["audio_short"]["coverage"] == pytest.approx(mg.AUDIO_SHORT_S, abs=0.05)
    assert all(str(clips[cid]) in f["message"] for cid, f in failures.items())  # each names its file
    with open_store(store) as s:
        row = s.clips.row_of()
        _, _, a_mask = s.load_teacher(AUDIO_KEY)
        _, _, i_mask = s.load_teacher(IMAGE_KEY)
        # an audio-only file keeps its audio embedding; its image is the failure
        assert a_mask[row["audio_only"]] and not i_mask[row["audio_only"]].any()
        # silence is audio (present, embedded), not a missing modality
        assert s.clips.has_audio[row["silent_audio"]] and a_mask[row["silent_audio"]]
        for cid in ("good0", "good1", "two_audio_tracks"):
            assert a_mask[row[cid]] and i_mask[row[cid]].all(), cid
        assert not a_mask[row["audio_short"]] and i_mask[row["audio_short"]].all()  # its image is kept
        assert not a_mask[row["one_frame"]] and i_mask[row["one_frame"]].all()  # no audio: masked, not failed
        for cid in BROKEN_REASONS:
            assert not a_mask[row[cid]] and not i_mask[row[cid]].any()
        assert all(s.teacher(k).done[:].all() for k in (AUDIO_KEY, IMAGE_KEY))
        # several audio tracks: the first one, and the store records that choice
        assert s.teacher(AUDIO_KEY).fingerprint["extraction"]["audio_stream"] == 0


def test_silent_and_short_audio_are_read_as_valid_samples(tmp_path: Path) -> None:
    silent = media.read_audio(make_case("silent_audio", tmp_path), sample_rate=16000)
    assert media.probe(tmp_path / "silent_audio.mp4").has_audio
    assert silent.shape == (16000,) and np.all(silent == 0.0)
    short = media.read_audio(make_case("audio_short", tmp_path), sample_rate=16000)
    end = int(mg.AUDIO_SHORT_S * 16000)
    assert short.shape == (16000,)  # the whole video window, zeros where the audio has ended
    assert np.abs(short[: end - 800]).max() > 0.3 and np.all(short[end + 800:] == 0.0)


def test_two_audio_tracks_pick_the_first_deterministically(tmp_path: Path) -> None:
    path = make_case("two_audio_tracks", tmp_path)
    first = [media.read_audio(path, sample_rate=16000) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    spectrum = np.abs(np.fft.rfft(first[0]))
    assert abs(np.fft.rfftfreq(len(first[0]), 1 / 16000)[np.argmax(spectrum)] - mg.CASE_TONE_HZ) < 5


@pytest.mark.parametrize("name, shape", [("portrait", (64, 48)), ("hd_1080p", (1080, 1920))])
def test_portrait_and_1080p_become_rgb_of_the_requested_size(name: str, shape: tuple[int, int],
                                                             tmp_path: Path) -> None:
    path = make_case(name, tmp_path)
    video = media.probe(path).video
    assert video is not None and (video.height, video.width) == shape
    out = media.read_frames(path, [0.0, 0.04], size=(40, 30))
    assert out.frames.shape == (2, 40, 30, 3) and out.frames.dtype == np.uint8
    if name == "hd_1080p":  # a known colour survives the 1080p → 40x30 conversion
        assert np.abs(out.frames[:, 5:-5, 5:-5].astype(int) - mg.COLOUR_PATCH_RGB).max() <= 6
    else:  # portrait stays upright: frame indices read back from the grid
        full = media.read_frames(path, [0.0, 0.2])
        assert [mg.decode_index(f) for f in full.frames] == [0, 5]


def test_a_one_frame_video_gives_full_training_windows(tmp_path: Path) -> None:
    """Item 7: the training reader pads (repeats the last frame), never an empty tensor."""
    from ccl_cache.data import ClipInfo, ClipSpec, FrameReader

    path = make_case("one_frame", tmp_path)
    spec = ClipSpec(frames=8, size=32)
    reader = FrameReader(tmp_path / "unused.zarr", [ClipInfo(str(path), 0.0, float("nan"), 0)], spec, None)
    window = reader.random_window(0, np.random.default_rng(0))
    assert window.frames.shape == (8, *spec.base_size, 3)
    assert np.array_equal(window.frames[0], window.frames[-1]) and window.frames.any()
    evaluation = reader.windows(0, None)
    assert len(evaluation) == 1 and evaluation[0].frames.shape[0] == 8
    with pytest.raises(Exception) as info:  # the explicit reject policy of the media layer
        media.read_clip(path, 0.0, 8, pad=False)
    assert getattr(info.value, "reason", None) == "window"


# ============================================================================================
# A decoder that hangs (item 8) and a teacher that returns NaN/inf (item 9), in full runs


HANGING_DECODE = """
import time
from ccl_cache.extract import decode_clip

def hanging_decode(task, spec):
    if task.path.endswith("good1.mp4"):
        time.sleep(3600)  # a decoder stuck on one file
    return decode_clip(task, spec)
"""


def test_a_hanging_decoder_times_out_and_the_run_goes_on(data: Data, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hanging_decode_mod.py").write_text(HANGING_DECODE)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned decode workers inherit sys.path
    from hanging_decode_mod import hanging_decode  # type: ignore[import-not-found]

    monkeypatch.setattr(ex_run, "DecodePool", functools.partial(ex.DecodePool, decode=hanging_decode))
    store = tmp_path / "hang.zarr"
    summary = ex.run_extraction(config(data, manifest_of(tmp_path, data.videos), store, workers=1, timeout_s=3.0))
    assert summary.exit_code == 1 and summary.failures_by_reason == {"timeout": 1}
    failures = ledger(store)
    assert set(failures) == {"good1"} and "--timeout" in failures["good1"]["message"]
    with open_store(store) as s:  # the clips after the hung one were decoded by a new worker
        mask = s.teacher(IMAGE_KEY).mask[:]
        assert [bool(mask[r].all()) for r in range(4)] == [True, False, True, True]


NAN_TEACHER = """
import torch
from torch import nn
from ccl_cache.teachers.base import image_preprocess

class NanForBright(nn.Module):
    dim = 8

    def forward(self, x):
        y = x.mean(dim=(2, 3)).repeat(1, 3)[:, :8]
        bright = x.mean(dim=(1, 2, 3)) > 1.0  # normalised pixels: a white frame is ~2
        y[bright] = float("nan")
        y[x.mean(dim=(1, 2, 3)) < -1.5] = float("inf")  # a black frame
        return y

def make(image_size=32):
    return NanForBright(), image_preprocess(image_size)
"""


def test_a_teacher_returning_nan_or_inf_writes_nothing_and_records_it(data: Data, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nan_teacher_mod.py").write_text(NAN_TEACHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    white = write_video(tmp_path / "white.mp4", frames=np.full((6, 32, 32, 3), 255, np.uint8), fps=20)
    black = write_video(tmp_path / "black.mp4", frames=np.zeros((6, 32, 32, 3), np.uint8), fps=20)
    clips = {"good0": data.videos["good0"], "white": white, "black": black, "good2": data.videos["good2"]}
    store = tmp_path / "nan.zarr"
    cfg = config(data, manifest_of(tmp_path, clips), store, audio_teacher=None,
                 image_teacher="nan_teacher_mod:make", image_weights=None)  # fmt: skip
    summary = ex.run_extraction(cfg)
    assert summary.failures_by_reason == {"teacher-nonfinite": 2} and summary.exit_code == 1
    assert {cid: f["stage"] for cid, f in ledger(store).items()} == {"white": "teacher", "black": "teacher"}
    with open_store(store) as s:
        (key,) = s.teacher_keys()
        emb, _, mask = s.load_teacher(key)
        assert np.all(np.isfinite(emb))  # nothing non-finite reached the store
        assert mask.all(axis=1).tolist() == [True, False, False, True]
        assert np.all(emb[[1, 2]] == 0) and np.all(np.abs(emb[[0, 3]]).sum(axis=(1, 2)) > 0)


# ============================================================================================
# Faults: ENOSPC and read-only output (item 14), a changed configuration (item 15)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_disk_full_mid_run_fails_cleanly_and_the_store_resumes(data: Data, tmp_path: Path, suffix: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ccl_cache.store.base import Store

    clips = {**data.videos, **{f"more{i}": data.videos[f"good{i}"] for i in range(4)}}  # two chunks
    manifest, store = manifest_of(tmp_path, clips), tmp_path / f"full{suffix}"
    real, calls = Store.write_rows, []

    def write_rows(self: Store, key: str, rows: slice, *args: Any, **kw: Any) -> None:
        calls.append(rows.start)
        if rows.start >= 4:  # the second chunk finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real(self, key, rows, *args, **kw)

    monkeypatch.setattr(Store, "write_rows", write_rows)
    with pytest.raises(StoreError) as info:
        ex.run_extraction(config(data, manifest, store))
    message = str(info.value)
    assert str(store) in message and "disk" in message and "free" in message and "rerun" in message
    monkeypatch.setattr(Store, "write_rows", real)
    with open_store(store) as s:
        done = s.teacher(IMAGE_KEY).done[:]
        assert done[:4].all() and not done[4:].any()  # the first chunk is kept, nothing half-marked
        assert s.leases() == []  # the failed run let go of the store
    resumed = ex.run_extraction(config(data, manifest, store))
    assert (resumed.skipped, resumed.processed, resumed.exit_code) == (4, 4, 0)


def test_read_only_store_fails_before_any_model_loads(data: Data, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, store = manifest_of(tmp_path, data.videos), tmp_path / "ro.zarr"
    ex.run_extraction(config(data, manifest, store, image_teacher=None))

    def no_models(*a: object, **k: object) -> None:
        raise AssertionError("models must not load before the output checks")

    monkeypatch.setattr(ex_run, "build_teachers", no_models)
    if os.geteuid() != 0:  # a real read-only store
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
    else:  # root writes through chmod: make the write probe inside the store fail as EROFS would
        real_mkstemp = ex_output.tempfile.mkstemp

        def mkstemp(*args: Any, dir: Any = None, **kw: Any) -> tuple[int, str]:  # noqa: A002
            if dir is not None and Path(dir).resolve() == store.resolve():
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
            return real_mkstemp(*args, dir=dir, **kw)

        monkeypatch.setattr(ex_output.tempfile, "mkstemp", mkstemp)
    try:
        with pytest.raises(StoreError, match="cannot write") as info:
            ex.run_extraction(config(data, manifest, store))
        assert str(store) in str(info.value)
    finally:
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_resuming_with_other_teacher_weights_lists_the_differing_field(data: Data, tmp_path: Path) -> None:
    manifest, store = manifest_of(tmp_path, data.videos), tmp_path / "w.zarr"
    ex.run_extraction(config(data, manifest, store, image_teacher=None))
    torch.manual_seed(99)
    other = tmp_path / "other_audio.pt"
    torch.save(build_teacher("small_audio", None).backbone.state_dict(), other)
    with pytest.raises(StoreMismatchError) as info:
        ex.run_extraction(config(data, manifest, store, image_teacher=None, audio_weights=str(other)))
    assert "weights:" in str(info.value) and "--overwrite" in str(info.value)


# ============================================================================================
# Atomic files under SIGKILL (item 12): checkpoints, indexes, exports


SLOW_SAVE = """
import io, sys, time
import torch
from ccl_cache.train import checkpoint

real_save = torch.save

def slow_save(obj, f):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    with open(f, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        print("half", flush=True)
        time.sleep(3600)  # killed here, half-way through the new file
        fh.write(data[len(data) // 2:])

torch.save = slow_save
checkpoint.save_checkpoint(sys.argv[1], {"step": 2, "weights": torch.full((250_000,), 2.0)})
"""


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.full((250_000,), 1.0)})
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "half"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    debris = [p for p in path.parent.iterdir() if p.name != "last.pt"]
    assert len(debris) == 1 and f"-{proc.pid}." in debris[0].name  # the dead writer's half file
    old = load_checkpoint(path)
    assert old["step"] == 1 and torch.equal(old["weights"], torch.full((250_000,), 1.0))
    save_checkpoint(path, {"step": 3, "weights": torch.zeros(1)})  # the next save sweeps the debris
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"] and load_checkpoint(path)["step"] == 3


def test_a_live_writers_temporary_is_never_swept(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    mine = tmp_path / f".table.csv.{owner_tag()}.abc123.tmp"  # this (live) process, mid-write
    mine.write_text("partial")
    other_host = tmp_path / ".table.csv.some-other-host-1.abc123.tmp"  # a writer on a shared FS
    other_host.write_text("partial")
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert mine.exists() and other_host.exists() and target.read_text() == "done"


def test_failure_between_temp_write_and_replace_keeps_files_and_leaves_no_temp(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports (manifest CSV, table, PNG), checkpoints and indexes share atomic_path."""
    from ccl_cache import fileio
    from ccl_cache.search.index import build_index, load_index
    from ccl_cache.search.index_types import IndexConfig

    rng = np.random.default_rng(0)
    out = tmp_path / "idx"
    build_index(rng.standard_normal((40, 8)).astype(np.float32), IndexConfig("flat")).save(out)
    export = tmp_path / "export.csv"
    write_csv(Manifest.from_records([ClipRecord("x", "/v/x.mp4", "a")]), export)
    before = export.read_bytes()
    real_replace, calls = os.replace, []

    def failing_replace(src: Any, dst: Any) -> None:
        calls.append(Path(dst).name)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    fail_at = 1
    with pytest.raises(OSError):
        write_csv(Manifest.from_records([ClipRecord("y", "/v/y.mp4", "b")]), export)
    assert export.read_bytes() == before
    calls.clear()
    with pytest.raises(OSError):  # the sidecar is replaced first: failing there keeps both old files
        build_index(rng.standard_normal((10, 8)).astype(np.float32), IndexConfig("flat")).save(out, overwrite=True)
    assert load_index(out).count == 40
    calls.clear()
    fail_at = 2  # new sidecar in place, index file not: refused with the path, never a wrong answer
    with pytest.raises(OSError):
        build_index(rng.standard_normal((10, 8)).astype(np.float32), IndexConfig("flat")).save(out, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(IndexMismatchError, match="index.faiss"):
        load_index(out)
    assert [p.name for p in tmp_path.rglob(".*.tmp")] == []  # failed writes clean up after themselves


# ============================================================================================
# Security (items 19, 20)


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_by_every_torch_load_site(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ccl-cache-checkpoint", "version": 1, "payload": _RunsCode(marker)}, evil)
    assert b"system" in evil.read_bytes()
    from ccl_cache.experiments.teach import load_head
    from ccl_cache.train import TrainConfig, embed_run

    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(evil)  # training resume and `ccl-cache embed`
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(evil.read_bytes())
    save_config(TrainConfig(store=str(tmp_path / "none.zarr")).to_dict(), run / "config.yaml")
    with pytest.raises(CheckpointError, match="refused to load"):
        embed_run(run, store=tmp_path / "none.zarr", device="cpu")
    with pytest.raises(TeacherError, match="refused to load"):
        load_head(evil)  # `ccl-cache teach` checkpoints
    with pytest.raises(TeacherError, match="refused to load"):
        build_teacher("small_image", evil)  # teacher weights
    assert not marker.exists()
    junk = tmp_path / "junk.pt"  # bytes that are not a pickle are damaged files, not refused objects
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(junk)
    with pytest.raises(TeacherError, match="cannot read"):
        load_head(junk)
    with pytest.raises(TeacherError, match="not a readable PyTorch weights file"):
        build_teacher("small_image", junk)


def _torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "load" and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"]


def _sources() -> list[Path]:
    return sorted([*(ROOT / "ccl_cache").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])


def test_every_torch_load_uses_weights_only_and_no_pickle_loader_exists() -> None:
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _torch_load_calls(tree):
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                f"{path}:{call.lineno}: torch.load without weights_only=True"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    assert not (kw.arg == "allow_pickle" and isinstance(kw.value, ast.Constant) and kw.value.value), \
                        f"{path}:{node.lineno}: allow_pickle=True"
                name = ast.unparse(node.func)
                assert name not in ("pickle.load", "pickle.loads", "torch.jit.load"), f"{path}:{node.lineno}: {name}"


SHELL_CALLS = {"os.system", "os.popen", "os.execv", "os.execvp", "os.execl", "os.execlp", "os.spawnv",
               "os.spawnl", "os.posix_spawn", "pty.spawn", "commands.getoutput"}


def test_no_shell_is_ever_invoked() -> None:
    """Item 20: manifest and store paths are only ever data (PyAV opens them; nothing runs them)."""
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert "subprocess" not in names and "pty" not in names, f"{path}:{node.lineno}: imports a spawner"
            if isinstance(node, ast.Call):
                assert ast.unparse(node.func) not in SHELL_CALLS, f"{path}:{node.lineno}: {ast.unparse(node.func)}"
                assert not any(kw.arg == "shell" for kw in node.keywords), f"{path}:{node.lineno}: shell="


def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_a_manifest_cannot_make_ccl_cache_write_outside_the_output(data: Data, tmp_path: Path) -> None:
    """Ids and labels that look like paths, and file names that look like shell, stay data."""
    from ccl_cache.extract import FrameCacheConfig, build_frame_cache

    media_dir = tmp_path / "media"
    shellish = media_dir / "$(touch pwned); rm -rf ~ `id`.mp4"
    shellish.parent.mkdir()
    shellish.write_bytes(data.videos["good0"].read_bytes())
    records = [
        ClipRecord("../../escape", str(shellish), "../../label"),
        ClipRecord("/tmp/absolute-id", str(data.videos["good1"]), "a"),
        ClipRecord("..", str(media_dir / "missing; touch pwned2.mp4"), "a"),
    ]
    manifest = tmp_path / "evil.csv"
    write_csv(Manifest.from_records(records), manifest)
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    before = _snapshot(tmp_path)
    store = out / "s.zarr"
    summary = ex.run_extraction(config(data, manifest, store))
    assert summary.processed == 3 and set(ledger(store)) == {".."}  # the missing file, recorded as data
    build_frame_cache(str(store), FrameCacheConfig(size=(32, 32), workers=0))
    created = _snapshot(tmp_path) - before
    assert created and all(out in p.parents for p in created), sorted(map(str, created - _snapshot(out)))
    for base in (out, store, Path.cwd()):  # wherever an id might have been joined to a folder
        assert not (base / "../../escape").resolve().exists() and not (base / "../../label").resolve().exists()
    assert not Path("/tmp/absolute-id").exists()
    assert not list(tmp_path.rglob("pwned*"))
    lines = [json.loads(x) for x in (out / "s.zarr.failures.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [".."]
    with open_store(store) as s:
        assert list(s.clips.id) == ["../../escape", "/tmp/absolute-id", ".."]
        assert s.teacher(IMAGE_KEY).mask[0].all()  # the shell-looking file was decoded as a file


# ============================================================================================
# `ccl-cache info`: failures by reason, partial clips by coverage (deliverable)


def test_info_reports_failures_by_reason_and_partial_clips_by_coverage(data: Data, tmp_path: Path) -> None:
    media_dir = tmp_path / "media"
    clips = {"good0": data.videos["good0"], "cut": make_case("truncated_faststart", media_dir),
             "empty": make_case("zero_byte", media_dir), "flipped": make_case("bitflip", media_dir)}
    store = tmp_path / "info.zarr"
    ex.run_extraction(config(data, manifest_of(tmp_path, clips), store, min_coverage=0.2))
    result = CliRunner().invoke(cli, ["info", str(store), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["failures"]["by_reason"] == {"empty": 1}
    coverage = summary["coverage"]
    assert (coverage["measured"], coverage["partial"], coverage["partial_accepted"]) == (3, 1, 1)
    # The cut file's picture decodes to 58% of it (its video packets; the audio's reach, 48%, counts
    # only against audio coverage since the picture's window is measured on the video stream).
    assert coverage["partial_by_coverage"]["50-75%"] == 1
    assert summary["decode_errors"]["clips"] == 1 and summary["decode_errors"]["errors"] > 0
    human = CliRunner().invoke(cli, ["info", str(store)])
    text = " ".join(human.stderr.split())
    assert "empty" in text and "1 of 3 clips decode only partly" in text and "decoder errors" in text


def test_failure_handling_doc_names_every_failure_reason() -> None:
    doc = (ROOT / "docs" / "failure-handling.md").read_text(encoding="utf-8")
    reasons = ["not-found", "not-a-file", "empty", "unreadable", "unsupported", "no-video", "stream", "window",
               "decode", "limit", "timeout", "crash", "partial", "teacher-nonfinite", "teacher-error", "error"]
    for reason in reasons:
        assert f"`{reason}`" in doc, reason
    for option in ("--retry-failed", "--min-coverage", "--strict", "--force", "--overwrite", "--timeout"):
        assert option in doc, option
    for status in ("| 0 |", "| 1 |", "| 2 |"):  # the exit statuses of `ccl-cache extract`
        assert status in doc, status


def test_a_store_creation_killed_midway_leaves_nothing_after_the_next_creation(tmp_path: Path) -> None:
    """Item 11 (no debris): a killed creator's temporary store is removed; a live one's is kept."""
    from ccl_cache.store import create_store

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = owner_tag().rpartition("-")[0]
    stale = tmp_path / f".s.{host}-{dead.stdout.strip()}-0badcafe.tmp.zarr"  # the killed creator's build
    (stale / "clips").mkdir(parents=True)
    (tmp_path / f".{stale.name}.ccl").mkdir()  # with its creation lock folder
    live = tmp_path / f".s.{owner_tag()}-00c0ffee.tmp.zarr"  # a racing creator, still at work
    live.mkdir()
    manifest = Manifest.from_records([ClipRecord("x", "/v/x.mp4", "a")])
    create_store(tmp_path / "s.zarr", manifest, chunk_rows=1).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s.zarr", live.name])


# ============================================================================================
# FAISS indexes (item 17): another FAISS version, fewer rows than the store holds now


def test_an_unreadable_index_from_another_faiss_version_is_refused_naming_both(tmp_path: Path) -> None:
    import faiss

    from ccl_cache.fileio import sha256_file
    from ccl_cache.search.index import build_index, load_index
    from ccl_cache.search.index_types import IndexConfig
    from ccl_cache.search.sidecar import INDEX_FILE, META_FILE

    out = tmp_path / "idx"
    build_index(np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32), IndexConfig("flat")).save(out)
    meta = json.loads((out / META_FILE).read_text())
    meta["faiss_version"] = "0.9.0"  # readable: FAISS reads older files; the version is noted
    (out / META_FILE).write_text(json.dumps(meta))
    assert any("FAISS 0.9.0" in note for note in load_index(out).notes)
    (out / INDEX_FILE).write_bytes(b"IxZZ" + bytes(200))  # a layout this FAISS does not know
    meta["index_sha256"] = sha256_file(out / INDEX_FILE)
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexMismatchError) as info:
        load_index(out)
    assert str(out / INDEX_FILE) in str(info.value) and "0.9.0" in str(info.value)
    assert faiss.__version__ in str(info.value) and "rebuild" in str(info.value)


def _index_store(path: Path) -> Any:
    """12 clips; teacher rows 0-7 extracted (the last chunk not yet), a student run."""
    from ccl_cache.store import create_store

    records = [ClipRecord(f"c{i}", f"/v/{i}.mp4", ("a", "b")[i % 2]) for i in range(12)]
    store = create_store(path, Manifest.from_records(records), chunk_rows=4)
    store.create_teacher("audio/t", dim=8, frames=None, dtype="float32", fingerprint={"arch": "t"})
    rng = np.random.default_rng(1)
    for lo in (0, 4):
        store.write_rows("audio/t", slice(lo, lo + 4), rng.standard_normal((4, 8)), None, np.ones(4, bool))
    store.write_student("run", rng.standard_normal((12, 8)).astype(np.float32), {"method": "ccl"})
    return store


def test_an_index_with_fewer_rows_than_the_store_now_holds_is_refused(tmp_path: Path) -> None:
    from ccl_cache.search.gallery import index_store
    from ccl_cache.search.index import load_index

    store = _index_store(tmp_path / "s.zarr")
    try:
        _, src = index_store(store, tmp_path / "teacher_idx", teacher="audio/t", split="all")
        _, _ = index_store(store, tmp_path / "student_idx", run="run", split="all")
        assert src.excluded["not_extracted"] == 4 and load_index(tmp_path / "teacher_idx", store=store).count == 8
        store.write_rows("audio/t", slice(8, 12), np.ones((4, 8)), None, np.ones(4, bool))  # extraction went on
        with pytest.raises(IndexMismatchError, match="audio/t") as info:
            load_index(tmp_path / "teacher_idx", store=store)
        assert "rebuild" in str(info.value) and str(tmp_path / "teacher_idx") in str(info.value)
        store.write_student("run", np.ones((12, 8), np.float32), {"method": "ccl", "epoch": 7})  # re-embedded
        with pytest.raises(IndexMismatchError, match="student"):
            load_index(tmp_path / "student_idx", store=store)
        index_store(store, tmp_path / "teacher_idx", teacher="audio/t", split="all", overwrite=True)
        assert load_index(tmp_path / "teacher_idx", store=store).count == 12  # rebuilt: accepted again
    finally:
        store.close()
