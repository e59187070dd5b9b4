"""What was padded is recorded (issue: integrity): each clip's audio coverage, the fraction of its
window that the audio stream's packets cover, goes to ``extraction/audio_coverage``; a clip whose
audio covers less than ``--min-coverage`` is an ``audio``-stage ``partial-audio`` failure (its
image kept), and the rule is part of the audio teacher's fingerprint."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache import extract as ex
from ccl_cache import media
from ccl_cache.errors import StoreMismatchError
from ccl_cache.extract.decode import ClipTask, DecodeSpec, decode_clip
from ccl_cache.manifest import ClipRecord, Manifest, write_csv
from ccl_cache.store import open_store, summarize
from ccl_cache.store.schema import AUDIO_COVERAGE_PATH, teacher_path
from ccl_cache.testing import make_case, sine, write_video
from ccl_cache.testing.extraction import save_small_teachers
from ccl_cache_cli.main import cli

AUDIO_KEY, IMAGE_KEY = "audio/small_audio", "image/small_image"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three 10 fps videos: 0.05 s of audio in 4 s, audio from 1.0 s of 2 s, and full audio."""
    folder = tmp_path_factory.mktemp("partial")
    return {
        "blip": write_video(folder / "blip.mp4", size=(32, 32), num_frames=40, fps=10, audio=sine(440, 0.05)),
        "late": write_video(folder / "late.mp4", size=(32, 32), num_frames=20, fps=10, audio=sine(440, 1.0),
                            audio_start=1.0),
        "full": write_video(folder / "full.mp4", size=(32, 32), num_frames=40, fps=10, audio=sine(440, 4.0)),
        "mute": make_case("no_audio", folder),
    }


@pytest.fixture(scope="module")
def extracted(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[ex.ExtractConfig, Path]:
    folder = tmp_path_factory.mktemp("store")
    audio_w, image_w = save_small_teachers(folder, 0, 1)
    manifest = folder / "m.csv"
    write_csv(Manifest.from_records([ClipRecord(name, str(path), "a") for name, path in clips.items()]), manifest)
    config = ex.ExtractConfig(
        manifest=str(manifest), store=str(folder / "s.zarr"), audio_teacher="small_audio", audio_weights=str(audio_w),
        image_teacher="small_image", image_weights=str(image_w), image_size=32, frames_per_clip=2, batch_size=4,
        workers=0, device="cpu", dtype="float32",
    )  # fmt: skip
    summary = ex.run_extraction(config)
    assert summary.failures_by_reason == {"partial-audio": 1} and summary.missing_audio == 1
    return config, folder / "s.zarr"


def test_audio_covering_too_little_of_its_window_is_a_partial_audio_failure_with_its_coverage(
        extracted: tuple[ex.ExtractConfig, Path]) -> None:
    with open_store(extracted[1]) as s:
        [failure] = s.failures()
        assert (failure["id"], failure["stage"], failure["reason"]) == ("blip", "audio", "partial-audio")
        assert failure["coverage"] < 0.05 and "--min-coverage" in failure["message"]
        assert list(s.teacher(AUDIO_KEY).mask[:]) == [False, True, True, False]  # blip failed, mute missing
        assert s.teacher(IMAGE_KEY).mask[:].all()  # the image side is unaffected
        coverage = np.asarray(s.array(AUDIO_COVERAGE_PATH)[:])
    assert coverage[0] < 0.05  # 0.05 s (one 64 ms AAC frame) of 4 s
    assert coverage[1] == pytest.approx(0.5, abs=0.05)  # from 1.0 s of 2 s (AAC priming starts it 64 ms early)
    assert coverage[2] == pytest.approx(1.0)
    assert np.isnan(coverage[3])  # no audio stream: not measured (and not a failure)


def test_the_coverage_comes_from_packet_times_not_headers(tmp_path: Path) -> None:
    """AVI audio headers carry no end: the packets say where a short PCM track stops."""
    path = write_video(tmp_path / "short.avi", size=(32, 32), num_frames=40, fps=10, codec="mpeg4",
                       audio=sine(440, 1.0), audio_codec="pcm_s16le")
    info = media.probe(path)
    assert info.audio[0].duration > 3.5  # what the header suggests
    scan = media.scan_packets(path)
    assert scan.audio[0] == pytest.approx((0.0, 1.0), abs=0.01)
    assert scan.coverage == media.measure_coverage(path)


@pytest.mark.parametrize("name, options", [
    # AVI audio headers carry no end, so the short track's claim is the file's: it scored 0.5
    ("short.avi", dict(codec="mpeg4", audio=sine(440, 1.0))),
    # Matroska's DURATION tag was read as a length from the audio's start: 1.0 + 2.0 claimed
    ("late.mkv", dict(audio=sine(440, 1.0), audio_start=1.0)),
])
def test_the_picture_is_measured_on_the_video_and_the_audio_on_the_audio(tmp_path: Path, name: str,
                                                                         options: dict[str, object]) -> None:
    """A 2 s video with 1 s of audio: the image side keeps the whole window (coverage 1), the
    audio covers half of it."""
    path = write_video(tmp_path / name, size=(32, 32), num_frames=20, fps=10, audio_codec="pcm_s16le",
                       **options)  # type: ignore[arg-type]
    scan = media.scan_packets(path)
    assert scan.video_coverage == pytest.approx(1.0)
    spec = DecodeSpec(sample_rate=16000, frames_per_clip=2, image_size=32)
    clip = decode_clip(ClipTask(0, str(path), None, None, audio=True, image=True), spec)
    assert clip.failures == {}
    assert clip.window == pytest.approx((0.0, 2.0)) and clip.coverage == pytest.approx(1.0)
    assert clip.audio_coverage == pytest.approx(0.5)
    assert clip.frame_times is not None and list(clip.frame_times) == pytest.approx([0.5, 1.5], abs=0.051)
    assert clip.audio is not None and clip.audio.shape == (32000,)  # the window, zero-padded where silent


def test_info_summarises_audio_coverage(extracted: tuple[ex.ExtractConfig, Path]) -> None:
    with open_store(extracted[1]) as s:
        audio = summarize(s)["audio_coverage"]
    assert (audio["measured"], audio["full"], audio["partial"], audio["partial_accepted"]) == (3, 1, 2, 1)
    assert audio["partial_by_coverage"]["0-25%"] == 1 and audio["partial_by_coverage"]["50-75%"] == 1
    result = CliRunner().invoke(cli, ["info", str(extracted[1])])
    assert result.exit_code == 0, result.output
    assert "2 of 3 clips have audio for only part of their window" in " ".join(result.stderr.split())
    shown = json.loads(CliRunner().invoke(cli, ["info", str(extracted[1]), "--json"]).stdout)
    assert shown["audio_coverage"]["partial_accepted"] == 1


def test_a_lower_min_coverage_embeds_the_padded_audio_on_retry(extracted: tuple[ex.ExtractConfig, Path],
                                                               tmp_path: Path) -> None:
    config, store = extracted[0], tmp_path / "retry.zarr"
    shutil.copytree(extracted[1], store)
    summary = ex.run_extraction(dataclasses.replace(config, store=str(store), retry_failed=True, min_coverage=0.01))
    assert summary.failed_total == 0
    with open_store(store) as s:
        assert list(s.teacher(AUDIO_KEY).mask[:]) == [True, True, True, False]


def test_overwrite_of_one_teacher_clears_only_that_teachers_failures(extracted: tuple[ex.ExtractConfig, Path],
                                                                    tmp_path: Path) -> None:
    """``--overwrite`` with the image teacher alone keeps the audio teacher's partial-audio entry
    (its row stays masked and the ledger must say why); rerunning the audio teacher clears it."""
    config, store = extracted[0], tmp_path / "again.zarr"
    shutil.copytree(extracted[1], store)
    ex.run_extraction(dataclasses.replace(config, store=str(store), audio_teacher=None, overwrite=True))
    with open_store(store) as s:
        assert [(f["id"], f["stage"], f["reason"]) for f in s.failures()] == [("blip", "audio", "partial-audio")]
        assert list(s.teacher(AUDIO_KEY).mask[:]) == [False, True, True, False]
    # The audio teacher redone with a rule that now accepts the blip: its entry is stale and goes.
    ex.run_extraction(dataclasses.replace(config, store=str(store), image_teacher=None, overwrite=True,
                                          min_coverage=0.01))
    with open_store(store) as s:
        assert s.failures() == [] and list(s.teacher(AUDIO_KEY).mask[:]) == [True, True, True, False]


def test_stale_ledger_rows_after_a_rerun_follow_the_stage_precedence() -> None:
    from ccl_cache.store.failures import rows_stale_after_rerun

    ledger = [{"row": 0, "stage": "decode"}, {"row": 1, "stage": "image"}, {"row": 2, "stage": "audio"},
              {"row": 3, "stage": "teacher"}]
    both, image, audio = {IMAGE_KEY, AUDIO_KEY}, {IMAGE_KEY}, {AUDIO_KEY}
    assert list(rows_stale_after_rerun(ledger, both, both)) == [0, 1, 2, 3]
    assert list(rows_stale_after_rerun(ledger, both, image)) == [1]  # decode/teacher may be the audio's
    assert list(rows_stale_after_rerun(ledger, both, audio)) == [2]
    # a second audio teacher kept as it is still needs the audio entries
    assert list(rows_stale_after_rerun(ledger, both | {"audio/other"}, audio)) == []


def test_a_store_made_before_the_rule_is_refused_on_resume(extracted: tuple[ex.ExtractConfig, Path],
                                                           tmp_path: Path) -> None:
    """Its zero-padded rows were stored as present: mixing them with rows the rule fails is refused."""
    config, store = extracted
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    with open_store(old, "r+") as s:
        fingerprint = s.teacher(AUDIO_KEY).fingerprint
        assert fingerprint["extraction"]["audio_padding"] == ex.AUDIO_PADDING
        del fingerprint["extraction"]["audio_padding"]
        s._b.update_attrs(teacher_path(AUDIO_KEY), {"fingerprint": fingerprint})
    with pytest.raises(StoreMismatchError, match="audio_padding: <absent> \\(store\\)"):
        ex.run_extraction(dataclasses.replace(config, store=str(old)))
