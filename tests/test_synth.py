"""The synthetic dataset: real H.264/AAC files, exact rates, determinism and class cues."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from ccl_cache.errors import ConfigError
from ccl_cache.manifest import load_manifest
from ccl_cache.experiments.synth import (
    COLOURS, MAX_CLASSES, MOTIONS, MUSIC_NOTES_HZ, SynthConfig, appearance, class_names, generate,
    load_truth, sound, sound_group,
)

# Four classes: 0 red circle right | 1 red circle down | 2 green square up | 3 green square orbit.
# Sound groups: {0}, {1, 2}, {3}.
CONFIG = SynthConfig(classes=4, clips_per_class=4, pretrain_clips_per_class=1, duration=1.0, size=64,
                     gap=0.25, no_audio=0.25, val_fraction=0.25, test_fraction=0.25, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, CONFIG, workers=2)
    return out


def decode_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def decode_audio(path: Path) -> np.ndarray | None:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


def clips(dataset: Path) -> list[dict]:
    return load_truth(dataset)["clips"]


def test_files_are_h264_aac_mp4_with_the_configured_geometry(dataset: Path) -> None:
    for clip in clips(dataset):
        with av.open(str(dataset / clip["file"])) as container:
            video = container.streams.video[0]
            assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
            assert (video.codec_context.width, video.codec_context.height) == (64, 64)
            assert video.average_rate == 25 and video.frames == 25
            assert container.duration / av.time_base == pytest.approx(1.0, abs=0.1)
            audio = container.streams.audio
            assert len(audio) == int(clip["has_audio"])
            if audio:
                assert audio[0].codec_context.name == "aac" and audio[0].codec_context.sample_rate == 16000


def test_splits_gap_and_no_audio_counts_are_exact(dataset: Path) -> None:
    truth = load_truth(dataset)
    assert truth["config"] == json.loads(json.dumps(CONFIG.__dict__))
    student = [c for c in truth["clips"] if c["split"] != "pretrain"]
    assert truth["counts"]["by_split"] == {"pretrain": 4, "train": 8, "val": 4, "test": 4}
    # 16 student clips: round(0.25 * 16) = 4 without audio, 4 with a gap (2 music, 2 other class).
    assert sum(not c["has_audio"] for c in student) == 4 == truth["counts"]["no_audio"]
    gap = [c for c in student if c["gap"]]
    assert len(gap) == 4 == truth["counts"]["gap"]
    assert sum(c["audio_class"] == "music" for c in gap) == 2
    names = class_names(4)
    for c in gap:
        if c["audio_class"] != "music":
            assert sound_group(names.index(c["audio_class"])) != sound_group(names.index(c["video_class"]))
    pretrain = [c for c in truth["clips"] if c["split"] == "pretrain"]
    assert all(c["has_audio"] and not c["gap"] for c in pretrain)  # the teachers' data stays clean
    assert not [c for c in student if not c["has_audio"] and c["gap"]]


def test_manifests_agree_and_point_to_the_same_files(dataset: Path) -> None:
    generic = load_manifest(dataset / "manifest.csv")
    vgg = load_manifest(dataset / "vggsound.csv", format="vggsound")
    assert generic.splits() == ["pretrain", "train", "val", "test"]
    assert [(r.id, r.path, r.label, r.split) for r in generic.records] == [
        (r.id, r.path, r.label, r.split) for r in vgg.records]
    assert generic.classes == tuple(class_names(4)) and generic.sha256() == vgg.sha256()
    files = sorted(p.name for p in (dataset / "videos").iterdir())
    assert files == sorted(Path(r.path).name for r in generic.records)


def test_same_seed_same_bytes_and_frames_other_seed_other_content(dataset: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", CONFIG, workers=1)  # the in-process path must agree too
    for name in ("manifest.csv", "vggsound.csv", "synth.json"):
        assert (tmp_path / "again" / name).read_bytes() == (dataset / name).read_bytes()
    for record in again.records:
        original = dataset / "videos" / Path(record.path).name
        assert Path(record.path).read_bytes() == original.read_bytes()
    np.testing.assert_array_equal(decode_video(Path(again.records[0].path)),
                                  decode_video(dataset / "videos" / Path(again.records[0].path).name))
    other = generate(tmp_path / "other", SynthConfig(**{**CONFIG.__dict__, "seed": 4}), workers=1)
    first_other = decode_video(Path(other.records[0].path))
    first = decode_video(dataset / "videos" / Path(again.records[0].path).name)
    assert other.records[0].label == again.records[0].label
    assert np.abs(first_other.astype(int) - first.astype(int)).mean() > 5


def _object(frames: np.ndarray) -> np.ndarray:
    """Mask of saturated pixels (the coloured object; the background is muted)."""
    f = frames.astype(np.int16)
    return (f.max(-1) - f.min(-1)) > 110


def _steps(frames: np.ndarray) -> np.ndarray:
    """Per-frame displacement (x, y) of the object's centroid, wrap-aware (circular means)."""
    mask = _object(frames)
    size = frames.shape[1]
    angles = 2 * np.pi * np.arange(size) / size
    centres = []
    for m in mask:
        ys, xs = np.nonzero(m)
        cx = np.angle(np.exp(1j * angles[xs]).mean()) * size / (2 * np.pi)
        cy = np.angle(np.exp(1j * angles[ys]).mean()) * size / (2 * np.pi)
        centres.append((cx, cy))
    steps = np.diff(np.array(centres), axis=0)
    return (steps + size / 2) % size - size / 2


def test_appearance_cue_colour_is_shared_within_pairs(dataset: Path) -> None:
    colours = {}
    for clip in clips(dataset):
        frames = decode_video(dataset / clip["file"])
        mask = _object(frames)
        assert mask.mean() > 0.02  # the object is visible
        colours.setdefault(clip["video_class"], []).append(frames[mask].mean(axis=0))
    names = class_names(4)
    mean = {n: np.mean(colours[n], axis=0) for n in names}
    red, green = np.array(COLOURS["red"]), np.array(COLOURS["green"])
    for n in names[:2]:
        assert np.linalg.norm(mean[n] - red) < 40 < np.linalg.norm(mean[n] - green)
    for n in names[2:]:
        assert np.linalg.norm(mean[n] - green) < 40 < np.linalg.norm(mean[n] - red)


def test_motion_cue_separates_classes_with_the_same_look(dataset: Path) -> None:
    expected = {0: (1, 0), 1: (0, 1), 2: (0, -1)}  # right, down, up (image y grows downwards)
    names = class_names(4)
    for clip in clips(dataset):
        c = names.index(clip["video_class"])
        steps = _steps(decode_video(dataset / clip["file"]))
        cues = clip["cues"]["video"]
        if c in expected:
            np.testing.assert_allclose(steps.mean(axis=0), np.array(expected[c]) * cues["speed_px_s"] / 25, atol=0.25)
        else:  # orbit: the heading turns steadily, cues["rev_s"] turns per second
            path = np.cumsum(steps, axis=0)
            chords = path[3:] - path[:-3]  # over 3 frames: less pixel jitter than single steps
            heading = np.unwrap(np.arctan2(chords[:, 1], chords[:, 0]))
            turned = abs(heading[-1] - heading[0]) / (2 * np.pi)
            assert turned == pytest.approx(cues["rev_s"] * (len(chords) - 1) / 25, rel=0.25)


def _dominant_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def _gated_fraction(wave: np.ndarray, rate: int) -> float:
    """Share of 10 ms windows much quieter than the loudest: near 0.5 for beeps, 0 for a tone."""
    n = rate // 100
    energy = np.sqrt((wave[: len(wave) // n * n].reshape(-1, n) ** 2).mean(axis=1))
    return float((energy < 0.4 * energy.max()).mean())


def test_sound_cue_pitch_and_rhythm_follow_the_audio_class(dataset: Path) -> None:
    names = class_names(4)
    for clip in clips(dataset):
        wave = decode_audio(dataset / clip["file"])
        if not clip["has_audio"]:
            assert wave is None
            continue
        hz = _dominant_hz(wave, 16000)
        if clip["audio_class"] == "music":
            assert min(abs(hz - n) for n in MUSIC_NOTES_HZ) < 10
            continue
        pitch, rhythm = sound(names.index(clip["audio_class"]))
        assert hz == pytest.approx(pitch, rel=0.03)
        assert (_gated_fraction(wave, 16000) > 0.3) == (rhythm > 0)
    # Classes 1 and 2 share a sound (sound pair), classes 0, 1 and 3 do not.
    assert sound(1) == sound(2) and len({sound(0), sound(1), sound(3)}) == 3


def test_class_design_for_every_size() -> None:
    names = class_names(MAX_CLASSES)
    assert len(set(names)) == MAX_CLASSES and names == sorted(names)  # label id == design index
    for c in range(MAX_CLASSES):
        pair = c ^ 1  # appearance partner
        if pair < MAX_CLASSES:
            assert appearance(c) == appearance(pair) and MOTIONS[c % 6] != MOTIONS[pair % 6]
        others = [k for k in range(MAX_CLASSES) if k // 2 != c // 2]
        assert all(appearance(k) != appearance(c) for k in others)
        assert all(sound(k) != sound(c) for k in range(MAX_CLASSES) if sound_group(k) != sound_group(c))
    # Appearance and sound together identify every class; horizontal flips map no class to another.
    assert len({(appearance(c), sound(c)) for c in range(MAX_CLASSES)}) == MAX_CLASSES
    assert "left" not in MOTIONS


def test_unique_cues_give_every_class_its_own_appearance_and_sound() -> None:
    n = 32
    assert len({appearance(c, shared=False) for c in range(n)}) == n
    assert len({sound(c, shared=False) for c in range(n)}) == n
    assert appearance(1, shared=False) != appearance(0, shared=False) and appearance(1) == appearance(0)


def test_shape_cue_draws_the_colour_per_clip_and_keeps_the_shape(tmp_path: Path) -> None:
    config = SynthConfig(classes=2, clips_per_class=6, pretrain_clips_per_class=0, duration=0.2, size=32,
                         shared_cues=False, appearance_cue="shape", noise=0.0, seed=5)
    generate(tmp_path / "d", config, workers=1)
    truth = load_truth(tmp_path / "d")
    assert truth["config"]["appearance_cue"] == "shape" and truth["classes"][1]["appearance_group"] == 1
    by_class: dict[str, list[dict]] = {}
    for clip in truth["clips"]:
        by_class.setdefault(clip["video_class"], []).append(clip["cues"]["video"])
    for name, videos in by_class.items():
        assert len({v["shape"] for v in videos}) == 1  # the shape is the class's
        assert len({tuple(v["colour"]) for v in videos}) > 1  # the colour is not


@pytest.mark.parametrize(
    ("change", "message"),
    [({"size": 63}, "size=63"), ({"size": 100000}, "size=100000.*to 2048"), ({"gap": 0.7, "no_audio": 0.5}, "gap \\+ no_audio"),
     ({"classes": MAX_CLASSES + 1}, "classes="), ({"val_fraction": 0.5, "test_fraction": 0.5}, "train clip"),
     ({"sample_rate": 8000}, "sample_rate=8000"), ({"noise": -0.1}, "noise"),
     ({"appearance_cue": "texture"}, "appearance_cue"),
     ({"classes": 8, "shared_cues": False, "appearance_cue": "shape"}, "at most 7 distinct appearances"),
     ({"classes": 33, "shared_cues": False}, "at most 32 distinct sounds")],
)
def test_config_validation(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**change)


def test_refuses_non_empty_folder_and_overwrite_replaces_only_its_files(tmp_path: Path) -> None:
    tiny = SynthConfig(classes=2, clips_per_class=2, pretrain_clips_per_class=0, duration=0.4, size=32,
                       val_fraction=0, test_fraction=0)
    out = tmp_path / "d"
    generate(out, tiny, workers=1)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty.*--overwrite"):
        generate(out, tiny, workers=1)
    smaller = generate(out, SynthConfig(**{**tiny.__dict__, "clips_per_class": 1}), workers=1, overwrite=True)
    assert len(smaller) == 2 and len(list((out / "videos").iterdir())) == 2  # stale clips removed
    assert (out / "notes.txt").read_text() == "mine"
    calls: list[tuple[int, int]] = []
    generate(tmp_path / "p", tiny, workers=1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
