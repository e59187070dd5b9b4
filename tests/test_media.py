"""ccl_cache.media on real files written by ccl_cache.testing.media_gen (every odd/broken case).

Frames carry their own index (a binary grid), so every test checks *which* frame came back.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ccl_cache import media
from ccl_cache.errors import ConfigError, MediaError, NoAudioError
from ccl_cache.media import decoder as media_decoder
from ccl_cache.media import keyframes as media_keyframes
from ccl_cache.testing import media_gen as mg

FPS = mg.CASE_FPS
VIDEO_CASES = ["tiny_16x16", "odd_101x77", "ten_bit", "yuv444", "gray", "two_audio_tracks",
               "surround_51", "audio_8k", "audio_late", "nonzero_start", "nonascii", "no_audio",
               "mpeg4_avi", "bitflip", "truncated_faststart"]
BROKEN = {  # case -> reason every reader reports
    "zero_byte": "empty",
    "garbage": "unreadable",
    "text_as_mp4": "unreadable",
    "truncated_moov_end": "unreadable",
    "dangling_symlink": "not-found",
    "directory": "not-a-file",
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media_cases")
    return {name: mg.make_case(name, root) for name in mg.CASES}


def _indices(frames: media.Frames) -> list[int]:
    return [mg.decode_index(f) for f in frames.frames]


def _shown_at(t: float, num_frames: int = mg.CASE_FRAMES) -> int:
    """Index of the CFR frame displayed at t (last frame with pts <= t)."""
    return min(max(int(np.floor(t * FPS + 1e-6)), 0), num_frames - 1)


def _dominant_hz(x: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sample_rate)[np.argmax(spectrum)])


# --------------------------------------------------------------------------- the generator


def test_generator_lists_every_case_and_index_frames_round_trip() -> None:
    assert len(mg.CASES) >= 30 and "truncated_faststart" in mg.CASES
    for size in [(16, 16), (48, 64), (77, 101)]:
        for i in [0, 1, 5, 1234, 2**15 - 1]:
            assert mg.decode_index(mg.index_frame(i, size)) == i
    assert tuple(mg.index_frame(0)[0, 0]) == mg.MARKER_RGB
    with pytest.raises(ConfigError):
        mg.index_frame(2**15)
    with pytest.raises(ConfigError, match="unknown media case"):
        mg.make_case("nope", "/tmp")


def test_generated_files_have_what_they_claim(cases: dict[str, Path]) -> None:
    with av.open(str(cases["no_audio"])) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    assert any(p.pts != p.dts for p in packets), "H.264 cases must contain B-frames"
    data = cases["truncated_faststart"].read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # index first, so it opens although cut
    assert cases["nonascii"].name == mg.NONASCII_NAME and cases["dangling_symlink"].is_symlink()


# --------------------------------------------------------------------------- broken inputs


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_media_error_naming_the_file(name: str, cases: dict[str, Path]) -> None:
    path = cases[name]
    calls = [lambda: media.probe(path), lambda: media.read_frames(path, [0.0]),
             lambda: media.read_clip(path, 0.0, 4), lambda: media.read_audio(path),
             lambda: media.measure_coverage(path)]
    for call in calls:
        with pytest.raises(MediaError) as info:
            call()
        assert info.value.reason == BROKEN[name]
        assert str(path) in str(info.value) and info.value.path == str(path)


def test_missing_path_with_non_ascii_name(tmp_path: Path) -> None:
    path = tmp_path / "nowhere été.mp4"
    with pytest.raises(MediaError, match="does not exist") as info:
        media.probe(path)
    assert info.value.reason == "not-found" and "nowhere été.mp4" in str(info.value)


def test_unknown_codec_is_unsupported_for_video_but_audio_still_reads(cases: dict[str, Path]) -> None:
    path = cases["unknown_codec"]
    for call in (lambda: media.probe(path), lambda: media.read_frames(path, [0.1]),
                 lambda: media.read_clip(path, 0.0, 2)):
        with pytest.raises(MediaError) as info:
            call()
        assert info.value.reason == "unsupported" and "codec" in str(info.value)
    assert media.read_audio(path, 16000).shape == (16000,)


def test_truncated_faststart_opens_and_reports_its_missing_half(cases: dict[str, Path]) -> None:
    path = cases["truncated_faststart"]
    info = media.probe(path)
    assert info.duration == pytest.approx(2.0, abs=0.05)  # it still claims the full length
    coverage = media.measure_coverage(path)
    assert 0.2 < coverage < 0.8
    span = coverage * info.duration  # about where the decodable data ends
    assert media.read_frames(path, [span - 0.05]).times[0] > span - 0.2
    assert _indices(media.read_frames(path, [0.3])) == [_shown_at(0.3)]
    for call in (lambda: media.read_frames(path, [0.2, 1.8]),
                 lambda: media.read_clip(path, 1.8, 4, pad=True)):
        with pytest.raises(MediaError, match="truncated") as err:
            call()
        assert err.value.reason == "window"
    clip = media.read_clip(path, 0.6, 16, pad=True)  # runs off the decodable end: padded
    assert len(clip.frames) == 16 and clip.times[-1] == clip.times[-2]
    with pytest.raises(MediaError) as err:
        media.read_clip(path, 0.6, 16, pad=False)
    assert err.value.reason == "window"


def test_bit_flipped_file_decodes_leniently_or_fails_cleanly(cases: dict[str, Path]) -> None:
    path = cases["bitflip"]
    try:
        frames = media.read_frames(path, [0.1, 0.9, 1.7], size=(24, 32))
    except MediaError as exc:  # an acceptable outcome, as long as it is ours
        assert exc.reason in {"decode", "window"}
    else:
        assert frames.frames.shape == (3, 24, 32, 3) and frames.decode_errors >= 0
    assert media.probe(path).has_video


def test_mutated_files_never_leak_foreign_exceptions(cases: dict[str, Path], tmp_path: Path) -> None:
    """Cut, bit-flipped and overwritten files: every reader returns or raises MediaError."""
    rng = np.random.default_rng(3)
    sources = [cases["two_audio_tracks"], cases["mpeg4_avi"], cases["gray"]]
    outcomes: set[str] = set()
    for k in range(24):
        data = bytearray(sources[k % 3].read_bytes())
        if k % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 30))):
                data[pos] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"mutant{k}{sources[k % 3].suffix}"
        path.write_bytes(bytes(data))
        calls = [lambda: media.probe(path), lambda: media.measure_coverage(path),
                 lambda: media.read_frames(path, [0.0, 0.5, 0.9], size=(16, 16)),
                 lambda: media.read_clip(path, 0.3, 4, stride=2, size=(16, 16)),
                 lambda: media.read_audio(path, 16000)]
        for call in calls:
            try:
                result = call()
            except MediaError as exc:
                outcomes.add(exc.reason)
                assert str(path) in str(exc)
            else:
                outcomes.add("ok")
                if isinstance(result, media.Frames):
                    assert result.frames.shape[1:] == (16, 16, 3)
    assert "ok" in outcomes and len(outcomes) > 1  # some damage was survivable, some was not


def test_decoding_is_bounded(cases: dict[str, Path]) -> None:
    path = cases["no_audio"]
    tiny = media.DecodeLimits(packet_slack=0.0, min_packets=2)
    with pytest.raises(MediaError) as info:
        media.read_clip(path, 0.8, 2, limits=tiny)
    assert info.value.reason == "limit"
    with pytest.raises(MediaError) as info:
        media.read_frames(path, [0.5], limits=media.DecodeLimits(wall_s=0.0))
    assert info.value.reason == "timeout"
    with pytest.raises(MediaError, match="max_audio_samples") as info:
        media.read_audio(path.with_name("colour_patch.mp4"), limits=media.DecodeLimits(
            max_audio_samples=1000))
    assert info.value.reason == "limit"


# --------------------------------------------------------------------------- probe


def test_probe_describes_streams(cases: dict[str, Path]) -> None:
    info = media.probe(cases["two_audio_tracks"])
    assert info.format.startswith("mov") and info.size_bytes == cases["two_audio_tracks"].stat().st_size
    assert info.duration == pytest.approx(1.0, abs=0.05) and info.start_time == 0.0
    v = info.video
    assert v is not None and (v.codec, v.width, v.height, v.rotation) == ("h264", 64, 48, 0)
    assert v.fps == pytest.approx(25.0) and v.frames == 25 and v.pix_fmt == "yuv420p"
    assert [(a.codec, a.sample_rate, a.channels) for a in info.audio] == [("aac", 16000, 1)] * 2
    assert info.has_audio and info.has_video
    surround = media.probe(cases["surround_51"]).audio[0]
    assert (surround.sample_rate, surround.channels) == (48000, 6)
    audio_only = media.probe(cases["audio_only"])
    assert not audio_only.has_video and audio_only.video is None and audio_only.has_audio
    assert not media.probe(cases["no_audio"]).has_audio
    assert media.probe(cases["odd_101x77"]).video.width == 101  # type: ignore[union-attr]


def test_probe_pixel_formats(cases: dict[str, Path]) -> None:
    expected = {"ten_bit": "yuv420p10le", "yuv444": "yuv444p", "gray": "gray", "alpha": "yuva420p",
                "alpha_rgba": "rgba", "full_range": "yuvj420p"}
    for name, pix_fmt in expected.items():
        assert media.probe(cases[name]).video.pix_fmt == pix_fmt  # type: ignore[union-attr]


def test_coverage_of_healthy_files_is_full(cases: dict[str, Path]) -> None:
    for name in ("no_audio", "audio_late", "audio_only", "vfr"):
        assert media.measure_coverage(cases[name]) == pytest.approx(1.0, abs=0.05)


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize("name", VIDEO_CASES)
def test_frames_and_clips_are_the_right_frames(name: str, cases: dict[str, Path]) -> None:
    path = cases[name]
    times = [0.5, 0.0, 0.3, 0.31, 0.5]  # unsorted, with a duplicate: order must be kept
    frames = media.read_frames(path, times, size=(32, 40))
    assert frames.frames.shape == (5, 32, 40, 3) and frames.frames.dtype == np.uint8
    assert _indices(frames) == [_shown_at(t) for t in times]
    assert np.allclose(frames.times, [_shown_at(t) / FPS for t in times], atol=1e-6)
    clip = media.read_clip(path, 0.2, 4, stride=2)
    h, w = media.probe(path).video.height, media.probe(path).video.width  # type: ignore[union-attr]
    assert clip.frames.shape == (4, h, w, 3)
    assert _indices(clip) == [5, 7, 9, 11]
    assert np.allclose(clip.times, np.array([5, 7, 9, 11]) / FPS)


def test_gray_source_gives_equal_channels(cases: dict[str, Path]) -> None:
    frame = media.read_frames(cases["gray"], [0.4]).frames[0].astype(int)
    assert np.array_equal(frame[..., 0], frame[..., 1]) and np.array_equal(frame[..., 1], frame[..., 2])


@pytest.mark.parametrize("name", ["colour_patch", "full_range", "alpha", "alpha_rgba"])
def test_colour_survives_conversion(name: str, cases: dict[str, Path]) -> None:
    frame = media.read_frames(cases[name], [0.2], size=(20, 20)).frames[0]
    mean = frame.reshape(-1, 3).mean(axis=0)
    # Full range read as limited would be off by 14+ on these channels.
    assert np.all(np.abs(mean - np.array(mg.COLOUR_PATCH_RGB)) < 6), mean


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_is_applied_like_a_player(degrees: int, cases: dict[str, Path]) -> None:
    path = cases[f"rotated_{degrees}"]
    video = media.probe(path).video
    assert video is not None and video.rotation == degrees
    assert (video.height, video.width) == ((64, 48) if degrees in (90, 270) else (48, 64))
    frame = media.read_frames(path, [0.4]).frames[0]
    assert frame.shape == (video.height, video.width, 3)
    # The red marker (top-left of the coded picture) turned counter-clockwise by `degrees`:
    # to the bottom-left, bottom-right, top-right corner.
    row, col = {90: (-3, 2), 180: (-3, -3), 270: (2, -3)}[degrees]
    r, g, b = frame[row, col]
    assert r > 200 and g < 60 and b < 60
    assert mg.decode_index(np.rot90(frame, -degrees // 90)) == 10
    resized = media.read_clip(path, 0.0, 2, size=(30, 20))
    assert resized.frames.shape == (2, 30, 20, 3)


def test_variable_frame_rate_uses_pts(cases: dict[str, Path]) -> None:
    path = cases["vfr"]
    stamps = np.array(mg.VFR_TIMES)
    asked = [0.0, 0.05, 0.1, 0.29, 0.3, 0.55, 0.79, 0.97]
    frames = media.read_frames(path, asked)
    expected = [int(np.searchsorted(stamps, t + 1e-6) - 1) for t in asked]
    assert _indices(frames) == expected
    assert np.allclose(frames.times, stamps[expected])
    clip = media.read_clip(path, 0.2, 3, stride=2)
    assert _indices(clip) == [4, 6, 8] and np.allclose(clip.times, [0.3, 0.5, 0.8])


def test_nonzero_start_is_time_zero(cases: dict[str, Path]) -> None:
    path = cases["nonzero_start"]
    info = media.probe(path)
    assert info.start_time == pytest.approx(mg.NONZERO_START_S)
    assert info.video is not None and info.video.start_time == pytest.approx(0.0)
    frames = media.read_frames(path, [0.0, 0.5])
    assert _indices(frames) == [0, 12] and frames.times[0] == pytest.approx(0.0)


def test_time_before_first_frame_clamps_to_it(cases: dict[str, Path]) -> None:
    # audio_late has its video from 0; with the audio track starting at 0.436 s (AAC priming)
    # the file starts at 0 too, so use a video that starts after its audio instead.
    path = mg.write_video(cases["no_audio"].parent / "video_late.mkv", audio=mg.sine(440, 1.5),
                          audio_start=-0.5, start_time=0.5)
    info = media.probe(path)
    assert info.video is not None and info.video.start_time == pytest.approx(0.5, abs=0.03)
    frames = media.read_frames(path, [0.0, 0.2, info.video.start_time + 0.21])
    assert _indices(frames) == [0, 0, 5]


def test_window_errors_and_argument_checks(cases: dict[str, Path]) -> None:
    path = cases["no_audio"]
    for bad in ([1.2], [-0.5], [float("nan")]):
        with pytest.raises(MediaError) as info:
            media.read_frames(path, bad)
        assert info.value.reason == "window" and str(path) in str(info.value)
    with pytest.raises(MediaError, match="past the end") as info:
        media.read_clip(path, 2.0, 4)
    assert _indices(media.read_frames(path, [1.0])) == [24]  # the end itself is the last frame
    with pytest.raises(ConfigError):
        media.read_frames(path, [])
    with pytest.raises(ConfigError):
        media.read_frames(path, [0.1], size=(0, 10))
    with pytest.raises(ConfigError):
        media.read_clip(path, 0.0, 0)
    with pytest.raises(ConfigError):
        media.read_clip(path, 0.0, 2, stride=0)


def test_audio_only_file_has_no_video(cases: dict[str, Path]) -> None:
    for call in (lambda: media.read_frames(cases["audio_only"], [0.1]),
                 lambda: media.read_clip(cases["audio_only"], 0.0, 2)):
        with pytest.raises(MediaError) as info:
            call()
        assert info.value.reason == "no-video"


def test_one_frame_video_pads_and_clamps(cases: dict[str, Path]) -> None:
    path = cases["one_frame"]
    clip = media.read_clip(path, 0.0, 16)
    assert clip.frames.shape[0] == 16 and np.all(clip.times == 0.0)
    assert np.array_equal(clip.frames[0], clip.frames[-1])
    assert _indices(media.read_frames(path, [0.0, 0.03])) == [0, 0]
    with pytest.raises(MediaError) as info:
        media.read_clip(path, 0.0, 2, pad=False)
    assert info.value.reason == "window"
    with pytest.raises(MediaError):
        media.read_frames(path, [0.5])


def test_clip_padding_policy(cases: dict[str, Path]) -> None:
    path = cases["no_audio"]
    clip = media.read_clip(path, 0.8, 8, stride=1)  # only frames 20..24 remain
    assert _indices(clip) == [20, 21, 22, 23, 24, 24, 24, 24]
    with pytest.raises(MediaError, match="pad=True") as info:
        media.read_clip(path, 0.8, 8, pad=False)
    assert info.value.reason == "window"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_seeking_matches_sequential_decoding(suffix: str, tmp_path: Path) -> None:
    """Frames read through seeks equal the frames a plain sequential decode shows at t."""
    path = mg.write_video(tmp_path / f"seek{suffix}", num_frames=100, gop=12,
                          audio=mg.sine(440, 4.0))
    origin = media.probe(path).start_time
    with av.open(str(path)) as container:
        sequential = [(float(f.pts * f.time_base) - origin, f.to_ndarray(format="rgb24"))
                      for f in container.decode(video=0)]
    stamps = np.array([t for t, _ in sequential])
    rng = np.random.default_rng(0)
    keyframes = np.arange(1, 9) * 12 / FPS  # times just before/at each keyframe are the hard ones
    asked = np.concatenate([rng.uniform(0, 3.99, 12), keyframes - 0.01, keyframes])
    got = media.read_frames(path, asked)
    for t, frame, stamp in zip(asked, got.frames, got.times):
        i = max(int(np.searchsorted(stamps, t + 1e-6)) - 1, 0)
        assert stamp == pytest.approx(stamps[i]) and np.array_equal(frame, sequential[i][1])
    for start in rng.uniform(0, 3.0, 4):
        clip = media.read_clip(path, float(start), 6, stride=3)
        first = int(np.searchsorted(stamps, start - 1e-6))
        want = [min(first + 3 * k, len(stamps) - 1) for k in range(6)]
        assert np.allclose(clip.times, stamps[want])
        assert all(np.array_equal(f, sequential[i][1]) for f, i in zip(clip.frames, want))


# --------------------------------------------------------------------------- audio


def test_resampling_keeps_frequency_and_duration(tmp_path: Path) -> None:
    path = mg.write_video(tmp_path / "tone48k.mp4", audio=mg.sine(1000.0, 1.0, 48000),
                          sample_rate=48000)
    wave = media.read_audio(path, 32000)
    assert wave.shape == (32000,) and wave.dtype == np.float32
    assert abs(_dominant_hz(wave, 32000) - 1000.0) < 2.0
    assert 0.2 < np.sqrt(np.mean(wave[3200:-3200] ** 2)) < 0.5  # 0.5 amplitude sine: 0.35 rms
    assert np.abs(wave).max() <= 1.0


@pytest.mark.parametrize("name,rate,hz", [("audio_8k", 16000, 440.0), ("surround_51", 16000, 440.0),
                                          ("odd_101x77", 8000, 440.0)])
def test_rates_and_channel_layouts(name: str, rate: int, hz: float, cases: dict[str, Path]) -> None:
    wave = media.read_audio(cases[name], rate)
    assert wave.shape == (rate,) and abs(_dominant_hz(wave, rate) - hz) < 3.0
    assert np.sqrt(np.mean(wave ** 2)) > 0.1


def test_audio_track_selection(cases: dict[str, Path]) -> None:
    path = cases["two_audio_tracks"]
    assert abs(_dominant_hz(media.read_audio(path, 16000), 16000) - mg.CASE_TONE_HZ) < 3
    second = media.read_audio(path, 16000, stream=1)
    assert abs(_dominant_hz(second, 16000) - mg.SECOND_TONE_HZ) < 3
    with pytest.raises(MediaError, match="out of range") as info:
        media.read_audio(path, stream=2)
    assert info.value.reason == "stream"


@pytest.mark.parametrize("start_time", [0.0, 0.5])
def test_matroska_audio_that_starts_late_ends_where_its_duration_tag_says(tmp_path: Path, start_time: float) -> None:
    # Matroska's per-stream DURATION tag is where the stream ends on the file's clock (and its
    # segment duration runs from timestamp 0), not a length from the stream's start.
    path = mg.write_video(tmp_path / "late.mkv", size=(32, 32), num_frames=20, fps=10, audio=mg.sine(440, 1.0),
                          audio_start=1.0, audio_codec="pcm_s16le", start_time=start_time)
    info = media.probe(path)
    assert info.start_time == pytest.approx(start_time) and info.duration == pytest.approx(2.0)
    assert info.video is not None and info.video.duration == pytest.approx(2.0)
    assert info.audio[0].start_time == pytest.approx(1.0) and info.audio[0].duration == pytest.approx(1.0)
    scan = media.scan_packets(path)
    assert scan.audio[0] == pytest.approx((1.0, 2.0))
    assert scan.coverage == pytest.approx(1.0) and scan.video_coverage == pytest.approx(1.0)


def test_late_audio_is_zero_padded_and_aligned(cases: dict[str, Path]) -> None:
    wave = media.read_audio(cases["audio_late"], 16000)
    assert wave.shape == (24000,)  # the file lasts 1.5 s
    assert np.abs(wave[:6800]).max() == 0.0  # before the stream (0.436 s incl. AAC priming)
    assert np.sqrt(np.mean(wave[8800:23000] ** 2)) > 0.3


def test_audio_onset_lands_on_its_sample(tmp_path: Path) -> None:
    rate = 48000
    burst = np.zeros(rate, np.float32)
    burst[rate // 2: rate // 2 + 4800] = 0.8 * np.sin(2 * np.pi * 1000 * np.arange(4800) / rate)
    path = mg.write_video(tmp_path / "burst.mp4", audio=burst, sample_rate=rate)
    wave = media.read_audio(path, 32000)
    onset = int(np.argmax(np.abs(wave) > 0.05))
    assert abs(onset - 16000) <= 32  # within 1 ms of 0.5 s
    window = media.read_audio(path, 32000, start=0.45, end=0.6)
    assert window.shape == (4800,)
    assert abs(int(np.argmax(np.abs(window) > 0.05)) - 1600) <= 32


def test_audio_window_matches_whole_file_read(cases: dict[str, Path]) -> None:
    path = cases["mpeg4_avi"]  # PCM: decoding from a seek is sample-exact
    whole = media.read_audio(path, 16000)
    part = media.read_audio(path, 16000, start=0.25, end=0.75)
    assert part.shape == (8000,) and np.allclose(part, whole[4000:12000], atol=1e-4)
    aac = media.read_audio(cases["colour_patch"], 16000, 0.25, 0.75)
    ref = media.read_audio(cases["colour_patch"], 16000)[4000:12000]
    assert np.corrcoef(aac, ref)[0, 1] > 0.99
    assert media.read_audio(path, 16000, 0.5, 0.5).shape == (0,)


def test_audio_window_errors(cases: dict[str, Path]) -> None:
    path = cases["colour_patch"]
    for start, end in ((0.0, 1.5), (0.6, 0.4), (-1.0, 0.5)):
        with pytest.raises(MediaError) as info:
            media.read_audio(path, 16000, start, end)
        assert info.value.reason == "window"
    with pytest.raises(ConfigError):
        media.read_audio(path, 0)
    for name in ("no_audio", "one_frame"):
        with pytest.raises(NoAudioError) as err:
            media.read_audio(cases[name])
        assert err.value.reason == "no-audio" and isinstance(err.value, MediaError)


def test_non_ascii_path_reads_everything(cases: dict[str, Path]) -> None:
    path = cases["nonascii"]
    assert " " in str(path) and "日本" in str(path)
    assert media.probe(path).has_video
    assert media.read_audio(path, 8000).shape == (8000,)
    assert _indices(media.read_clip(path, 0.0, 3)) == [0, 1, 2]


# --------------------------------------------------------------------------- keyframes

KEY_GOP = 10  # a keyframe every 10 frames: at 0, 0.4, ..., 2.8 s in a 3 s, 25 fps file
KEY_FRAMES = 75


def _keyframe_video(folder: Path, suffix: str = ".mp4", rotation: int = 0) -> Path:
    """3 s, 25 fps, 64x64, keyframe every KEY_GOP frames, each frame drawing its own index."""
    return mg.write_video(folder / f"keys{rotation}{suffix}", size=(64, 64), num_frames=KEY_FRAMES,
                          gop=KEY_GOP, rotation=rotation)


def _keyframe_times(path: Path) -> list[float]:
    """The pts (relative to the file's start) of the packets the container flags as keyframes."""
    origin = media.probe(path).start_time
    with av.open(str(path)) as container:
        return sorted(float(p.pts * p.time_base) - origin for p in container.demux(video=0)
                      if p.size and p.is_keyframe)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _keyframe_video(tmp_path_factory.mktemp("keyframes"))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_keyframes_are_the_frames_read_frames_shows_at_their_times(suffix: str, tmp_path: Path) -> None:
    path = _keyframe_video(tmp_path, suffix)
    keys = _keyframe_times(path)
    assert len(keys) == KEY_FRAMES // KEY_GOP + 1  # the encoder honoured the GOP
    asked = [2.9, 0.1, 1.3, 0.55, 2.1]  # unsorted: the answer follows the asked order
    got = media.read_keyframes(path, asked, size=(48, 40))
    assert got.frames.shape == (5, 48, 40, 3) and got.frames.dtype == np.uint8
    assert all(min(abs(t - k) for k in keys) < 1e-6 for t in got.times)  # only keyframe times
    nearest = [keys[int(np.argmin([abs(t - k) for k in keys]))] for t in asked]
    assert np.allclose(got.times, nearest, atol=1e-6)  # these nearest ones are distinct
    same = media.read_frames(path, got.times, size=(48, 40))
    assert np.array_equal(same.times, got.times) and np.array_equal(same.frames, got.frames)
    full = media.read_keyframes(path, asked)  # the drawn index says which frame came back
    assert _indices(full) == [int(round(t * FPS)) for t in full.times]


def test_keyframes_are_distinct_while_enough_then_repeat(keyed: Path) -> None:
    keys = _keyframe_times(keyed)
    for count in (2, 5, len(keys)):
        times = [3.0 * (k + 0.5) / count for k in range(count)]  # extraction's uniform centres
        got = media.read_keyframes(keyed, times)
        assert len(set(got.times)) == count and np.all(np.diff(got.times) > 0)
    # 0.35 and 0.45 are both nearest to 0.4: the span 0.0-1.2 holds enough keyframes, so one moves
    got = media.read_keyframes(keyed, [0.85, 0.45, 0.35])
    assert list(got.times) == pytest.approx([0.8, 0.4, 0.0])
    # Within one GOP the span (keyframe before to keyframe after) holds 2: nearest, repeated
    got = media.read_keyframes(keyed, [1.0, 1.05, 1.1, 1.15])
    assert list(got.times) == pytest.approx([0.8, 1.2, 1.2, 1.2])  # 1.0 is a tie: the earlier
    many = [3.0 * (k + 0.5) / 12 for k in range(12)]  # more times than keyframes: nearest, repeated
    got = media.read_keyframes(keyed, many)
    assert len(set(got.times)) < 12 and set(np.round(got.times, 6)) <= set(np.round(keys, 6))
    nearest = [keys[int(np.argmin([abs(t - k) for k in keys]))] for t in many]
    assert np.allclose(got.times, nearest, atol=1e-6)
    again = media.read_keyframes(keyed, many)
    assert np.array_equal(again.times, got.times) and np.array_equal(again.frames, got.frames)


def test_keyframe_assignment_is_the_closest_in_order() -> None:
    """Against brute force: distinct, in time order, least total distance, earlier on ties;
    and pruning the pass's keyframes (memory bound) never changes the answer."""
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(300):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        targets = sorted(rng.choice(np.arange(0.0, 4.0, 0.25), n).tolist())
        keys = sorted(set(rng.choice(np.arange(0.0, 4.0, 0.5), m).tolist()))
        slots = media_keyframes._assign_keyframes(targets, keys)
        if len(keys) >= n:
            best = min(itertools.combinations(range(len(keys)), n),
                       key=lambda c: (sum(abs(t - keys[j]) for t, j in zip(targets, c)), c))
            assert sum(abs(t - keys[j]) for t, j in zip(targets, slots)) == pytest.approx(
                sum(abs(t - keys[j]) for t, j in zip(targets, best)))
            assert slots == sorted(set(slots))
        else:
            assert all(abs(t - keys[j]) == min(abs(t - k) for k in keys) for t, j in zip(targets, slots))
        pruner = media_keyframes._KeyframeCandidates(targets)
        for k in keys:
            pruner.add(media_decoder._Decoded(k, 0.04, None))  # type: ignore[arg-type]
        kept = [d.time for d in pruner.chosen()]
        assert set(kept) <= set(keys) and (len(kept) >= n) == (len(keys) >= n)
        assert [kept[j] for j in media_keyframes._assign_keyframes(targets, kept)] == [keys[j] for j in slots]


def test_keyframes_window_errors_like_read_frames(keyed: Path) -> None:
    assert media.read_keyframes(keyed, [3.0]).times[0] == pytest.approx(2.8)  # the end itself
    for bad in ([3.5], [0.2, 3.2], [-0.5], [float("nan")]):
        with pytest.raises(MediaError) as info:
            media.read_keyframes(keyed, bad)
        assert info.value.reason == "window" and str(keyed) in str(info.value)
        with pytest.raises(MediaError) as same:
            media.read_frames(keyed, bad)
        assert same.value.reason == "window"
    with pytest.raises(ConfigError):
        media.read_keyframes(keyed, [])
    with pytest.raises(MediaError) as info:
        media.read_keyframes(keyed.parent / "missing.mp4", [0.0])
    assert info.value.reason == "not-found"


def test_keyframes_decode_fewer_frames(keyed: Path) -> None:
    times = [3.0 * (k + 0.5) / 8 for k in range(8)]
    spread = media.read_frames(keyed, times)
    keys = media.read_keyframes(keyed, times)
    # Each spread time decodes from the keyframe before it (35 frames here); the keyframe pass
    # decodes the 8 keyframes once, nothing else.
    assert keys.decode_errors == 0 and spread.decoded_frames > 2 * len(times)
    assert keys.decoded_frames == len(_keyframe_times(keyed)) < spread.decoded_frames


def test_keyframes_follow_rotation(tmp_path: Path) -> None:
    path = _keyframe_video(tmp_path, rotation=90)
    got = media.read_keyframes(path, [0.45], size=(32, 48))
    want = media.read_frames(path, got.times, size=(32, 48))
    assert got.frames.shape == (1, 32, 48, 3) and np.array_equal(got.frames, want.frames)


def test_keyframes_fall_back_to_read_frames_without_keyframes(keyed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream in which no keyframe decodes on its own (simulated: the keyframe pass sees none)."""
    timed = media_decoder._VideoDecoder.timed

    def no_keyframes(self: media_decoder._VideoDecoder, until: float):  # noqa: ANN202
        for decoded in timed(self, until):
            if not self.keyframes_only:
                yield decoded

    monkeypatch.setattr(media_decoder._VideoDecoder, "timed", no_keyframes)
    times = [2.1, 0.3]
    got = media.read_keyframes(keyed, times)
    want = media.read_frames(keyed, times)
    assert np.array_equal(got.times, want.times) and np.array_equal(got.frames, want.frames)
    assert _indices(got) == [_shown_at(t, KEY_FRAMES) for t in times]
    with pytest.raises(MediaError) as info:
        media.read_keyframes(keyed, [3.5])
    assert info.value.reason == "window"


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_decoder_threads_setting_decodes_the_same_frames(threads: int, cases: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One decode thread per worker process (extract, DataLoader) must not change what is read."""
    seen: list[tuple[int, str]] = []
    bind = media_decoder._Decoder._bind

    def spy(self: media_decoder._Decoder, stream: av.stream.Stream) -> av.stream.Stream:
        stream = bind(self, stream)
        if stream.type == "video":
            seen.append((stream.codec_context.thread_count, str(stream.thread_type)))
        return stream

    monkeypatch.setattr(media_decoder._Decoder, "_bind", spy)
    monkeypatch.setattr(media_decoder, "_decoder_threads", 0)
    reference = media.read_frames(cases["odd_101x77"], [0.5, 0.1], size=(32, 40)).frames
    media.set_decoder_threads(threads)
    seen.clear()
    frames = media.read_frames(cases["odd_101x77"], [0.5, 0.1], size=(32, 40)).frames
    np.testing.assert_array_equal(frames, reference)
    assert seen and all(count == threads for count, _ in seen)
    assert all(("NONE" in kind) == (threads == 1) for _, kind in seen)


def test_decoder_threads_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="decoder threads must be >= 0"):
        media.set_decoder_threads(-1)
