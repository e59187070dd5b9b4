"""Write real test media with PyAV: index-coded videos, sines, and every odd or broken file.

Videos made here carry their own ground truth:

* :func:`index_frame` draws a 4x4 grid whose top-left cell is a red orientation marker and whose
  other 15 cells spell the frame index in binary (white = 1), so a decoded frame tells which
  source frame it is (:func:`decode_index`) even after lossy coding, resizing or rotation.
* :func:`sine` gives audio of known frequency.
* :func:`make_case` writes one named odd/broken case (the list is :data:`CASES`).

Encoders are whatever the installed PyAV wheel carries; the default video codec is H.264
(``libx264``) with AAC audio, both present in the PyAV 18 wheels.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from ccl_cache.errors import ConfigError

COLOUR_PATCH_RGB: tuple[int, int, int] = (200, 60, 30)
"""The solid colour of the colour cases (``colour_patch``, ``full_range``, ``alpha*``)."""

MARKER_RGB: tuple[int, int, int] = (255, 0, 0)
"""Colour of the orientation marker cell at the top-left of every :func:`index_frame`."""

CASE_SIZE: tuple[int, int] = (48, 64)
"""(height, width) of the :func:`make_case` videos unless a case says otherwise."""
CASE_FPS = 25
CASE_FRAMES = 25
CASE_SAMPLE_RATE = 16000
CASE_TONE_HZ = 440.0
SECOND_TONE_HZ = 880.0
"""Frequency of the second audio track of ``two_audio_tracks``."""
AUDIO_LATE_S = 0.5
AUDIO_SHORT_S = 0.4
"""Where the audio of ``audio_short`` ends (its video lasts 1 s)."""
NONZERO_START_S = 1.6
VFR_TIMES: tuple[float, ...] = (0.0, 0.04, 0.1, 0.12, 0.3, 0.32, 0.5, 0.56, 0.8, 0.96)
"""Frame times (seconds) of the ``vfr`` case."""
NONASCII_NAME = "vidéo été 日本 (1).mp4"

CASES: dict[str, str] = {
    "zero_byte": "an empty .mp4 file (0 bytes)",
    "garbage": "20 kB of random bytes named .mp4",
    "text_as_mp4": "a plain text file named .mp4",
    "truncated_moov_end": "2 s mp4 with the index (moov) at the end, cut in half: cannot be opened",
    "truncated_faststart": "2 s faststart mp4 cut mid-data: opens, claims 2 s, decodes about 1 s",
    "bitflip": "2 s mp4 with one byte in 200 of the media data flipped",
    "audio_only": "1 s AAC in mp4, no video stream",
    "one_frame": "a video of a single frame (no audio)",
    "tiny_16x16": "16x16 H.264",
    "odd_101x77": "101x77 (odd width and height) MPEG-4 part 2 with PCM audio in AVI",
    "ten_bit": "10-bit H.264 (yuv420p10le)",
    "yuv444": "H.264 4:4:4 (yuv444p)",
    "full_range": "full-range (JPEG) H.264 of the colour patch",
    "gray": "FFV1 gray in Matroska (decodes to a gray pixel format)",
    "alpha": "FFV1 yuva420p in Matroska: the colour patch with an alpha plane",
    "alpha_rgba": "PNG rgba in QuickTime: the colour patch with an alpha channel",
    "two_audio_tracks": "video with two AAC tracks: 440 Hz then 880 Hz",
    "surround_51": "video with 5.1 AAC at 48 kHz",
    "audio_8k": "video with 8 kHz AAC",
    "audio_late": "video 0-1 s, audio 0.5-1.5 s",
    "nonzero_start": "video whose first timestamp is 1.6 s (no audio)",
    "rotated_90": "display matrix rotation 90 (counter-clockwise, as PyAV reports it)",
    "rotated_180": "display matrix rotation 180",
    "rotated_270": "display matrix rotation 270 (stored as -90)",
    "vfr": "variable frame rate: frames at VFR_TIMES",
    "nonascii": "a normal file whose name has accents, CJK characters and spaces",
    "dangling_symlink": "a symlink to a file that does not exist",
    "directory": "a directory named like a video",
    "no_audio": "video without any audio stream",
    "colour_patch": "solid COLOUR_PATCH_RGB frames (yuv420p, limited range)",
    "unknown_codec": "mp4 whose video sample entry names an unknown codec ('zzzz')",
    "mpeg4_avi": "MPEG-4 part 2 (Xvid-like) with PCM audio in AVI, as in UCF101",
    "silent_audio": "video with a valid AAC track of digital silence (audio present, all zeros)",
    "audio_short": f"video 0-1 s whose audio stops at {AUDIO_SHORT_S} s",
    "portrait": "portrait 64x48 (height x width) H.264 with audio",
    "hd_1080p": "1080p (1080x1920) H.264 of the colour patch, 3 frames",
}

_FORMATS = {".mp4": "mp4", ".m4a": "mp4", ".mov": "mov", ".mkv": "matroska",
            ".webm": "webm", ".avi": "avi", ".ts": "mpegts"}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
_AUDIO_CHUNK = 1024
_DEFAULT_CODEC_OPTIONS = {
    # High quality so index cells survive; scenecut=0 so `gop` alone decides keyframes;
    # "veryfast" keeps B-frames (pts != dts), which the readers must handle.
    "libx264": {"crf": "12", "preset": "veryfast", "x264-params": "scenecut=0"},
    "mpeg4": {"qscale": "2"},
}


def index_frame(index: int, size: tuple[int, int] = CASE_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 frame whose 4x4 grid spells ``index`` in binary (red marker top-left)."""
    if not 0 <= index < 2**15:
        raise ConfigError(f"frame index {index} cannot be drawn: expected 0 <= index < 32768")
    height, width = size
    rows = np.linspace(0, height, 5).round().astype(int)
    cols = np.linspace(0, width, 5).round().astype(int)
    img = np.zeros((height, width, 3), np.uint8)
    img[rows[0]:rows[1], cols[0]:cols[1]] = MARKER_RGB
    for bit in range(15):
        if index >> bit & 1:
            r, c = divmod(bit + 1, 4)
            img[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = 255
    return img


def index_frames(num_frames: int, size: tuple[int, int] = CASE_SIZE) -> np.ndarray:
    """(T, H, W, 3) uint8: frame ``i`` is :func:`index_frame` ``(i)``."""
    return np.stack([index_frame(i, size) for i in range(num_frames)])


def decode_index(frame: np.ndarray) -> int:
    """Read the index drawn by :func:`index_frame` from a decoded (H, W, 3) or (H, W) frame."""
    luma = frame.astype(np.float32)
    if luma.ndim == 3:
        luma = luma.mean(axis=2)
    height, width = luma.shape
    rows = np.linspace(0, height, 5)
    cols = np.linspace(0, width, 5)
    index = 0
    for bit in range(15):
        r, c = divmod(bit + 1, 4)
        # The central half of each cell: edges blur under chroma subsampling and resizing.
        r0, r1 = _centre(rows[r], rows[r + 1])
        c0, c1 = _centre(cols[c], cols[c + 1])
        if luma[r0:r1, c0:c1].mean() > 127.5:
            index |= 1 << bit
    return index


def _centre(lo: float, hi: float) -> tuple[int, int]:
    quarter = (hi - lo) / 4
    a, b = int(round(lo + quarter)), int(round(hi - quarter))
    return a, max(b, a + 1)


def sine(freq: float, duration: float, sample_rate: int = CASE_SAMPLE_RATE,
         amplitude: float = 0.5, channels: int = 1) -> np.ndarray:
    """A sine of ``freq`` Hz: (S,) float32 for one channel, (C, S) with the same tone in each."""
    t = np.arange(int(round(duration * sample_rate))) / sample_rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.tile(wave, (channels, 1))


@dataclass(frozen=True)
class _VideoSpec:
    frames: np.ndarray  # (T, H, W, 3|4) uint8
    pts: tuple[int, ...]  # per frame, in time_base units, start offset included
    time_base: Fraction
    rate: Fraction
    codec: str
    pix_fmt: str
    options: dict[str, str]
    rotation: int
    gop: int | None


@dataclass(frozen=True)
class _AudioSpec:
    samples: np.ndarray  # (C, S) float32
    sample_rate: int
    codec: str
    first_pts: int  # in 1/sample_rate units


def write_video(
    path: str | Path,
    *,
    frames: np.ndarray | None = None,
    size: tuple[int, int] = CASE_SIZE,
    num_frames: int = CASE_FRAMES,
    fps: float = CASE_FPS,
    frame_times: Sequence[float] | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    codec_options: dict[str, str] | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int = CASE_SAMPLE_RATE,
    audio_codec: str = "aac",
    audio_start: float = 0.0,
    extra_audio_tracks: Sequence[np.ndarray] = (),
    rotation: int = 0,
    start_time: float = 0.0,
    gop: int | None = None,
    faststart: bool = False,
    container_format: str | None = None,
) -> Path:
    """Encode a video (and optional audio tracks) to ``path`` and return the path.

    ``frames`` is (T, H, W, 3) RGB or (T, H, W, 4) RGBA uint8; without it, ``num_frames``
    :func:`index_frame` frames of ``size`` = (H, W) are drawn. Frames are at ``i / fps`` unless
    ``frame_times`` (seconds, increasing) makes the file variable-frame-rate. ``audio`` is (S,)
    or (C, S) float32 (C in 1, 2, 6) starting ``audio_start`` s after the video;
    ``extra_audio_tracks`` become further audio streams with the same timing. ``start_time``
    shifts every timestamp (rounded to the video time base); ``rotation`` (degrees
    counter-clockwise, a multiple of 90) is written as a display matrix; ``gop`` is the keyframe
    interval in frames; ``codec_options`` override the encoder defaults (libx264: crf 12,
    preset veryfast, which keeps B-frames, scenecut off); ``faststart`` moves the mp4 index to
    the front. The container comes from
    the suffix (.mp4 .m4a .mov .mkv .webm .avi .ts) unless ``container_format`` names it.

    AVI cannot store a start offset: pair it with PCM audio, since the negative timestamp of an
    AAC/MP3 encoder's priming packet makes FFmpeg's AVI muxer shift all but the first video frame.
    """
    if frames is None:
        frames = index_frames(num_frames, size)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ConfigError(f"frames must be (T, H, W, 3|4) uint8, got {frames.dtype} {frames.shape}")
    video = _video_spec(frames, fps, frame_times, codec, pix_fmt, codec_options, rotation,
                        gop, start_time)
    tracks = [audio, *extra_audio_tracks] if audio is not None else list(extra_audio_tracks)
    first = int(round((start_time + audio_start) * sample_rate))
    specs = [_AudioSpec(_as_channels(a), sample_rate, audio_codec, first) for a in tracks]
    return _write(Path(path), video, specs, faststart, container_format)


def write_audio(path: str | Path, audio: np.ndarray, *, sample_rate: int = CASE_SAMPLE_RATE,
                codec: str = "aac", start_time: float = 0.0,
                container_format: str | None = None) -> Path:
    """Encode an audio-only file ((S,) or (C, S) float32) and return its path."""
    spec = _AudioSpec(_as_channels(audio), sample_rate, codec, int(round(start_time * sample_rate)))
    return _write(Path(path), None, [spec], False, container_format)


def _video_spec(frames: np.ndarray, fps: float, frame_times: Sequence[float] | None, codec: str,
                pix_fmt: str, codec_options: dict[str, str] | None, rotation: int,
                gop: int | None, start_time: float) -> _VideoSpec:
    if rotation % 90:
        raise ConfigError(f"rotation={rotation} is not a multiple of 90 degrees")
    rate = Fraction(fps).limit_denominator(1001)
    if frame_times is None:
        time_base = 1 / rate
        times = [i / rate for i in range(len(frames))]
    else:
        if len(frame_times) != len(frames) or np.any(np.diff(frame_times) <= 0):
            raise ConfigError("frame_times must be increasing, one per frame")
        time_base = Fraction(1, 1000)  # millisecond ticks represent any VFR schedule we write
        times = [Fraction(t).limit_denominator(1000) for t in frame_times]
    # Round the offset once: rounding each (t + offset) would make half-tick offsets collide.
    offset = int(round(Fraction(start_time).limit_denominator(1000) / time_base))
    pts = tuple(offset + int(round(t / time_base)) for t in times)
    options = dict(_DEFAULT_CODEC_OPTIONS.get(codec, {}))
    options.update(codec_options or {})
    return _VideoSpec(frames, pts, time_base, rate, codec, pix_fmt, options, rotation, gop)


def _as_channels(audio: np.ndarray) -> np.ndarray:
    data = np.asarray(audio, dtype=np.float32)
    data = data[None] if data.ndim == 1 else data
    if data.ndim != 2 or data.shape[0] not in _LAYOUTS:
        raise ConfigError(f"audio must be (S,) or (C, S) with C in 1, 2, 6; got {data.shape}")
    return np.ascontiguousarray(data)


def _write(path: Path, video: _VideoSpec | None, audio: list[_AudioSpec], faststart: bool,
           container_format: str | None) -> Path:
    fmt = container_format or _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{path}: unknown container suffix; use one of {sorted(_FORMATS)} "
                          "or pass container_format")
    options = {"movflags": "+faststart"} if faststart else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with av.open(str(tmp), "w", format=fmt, options=options) as container:
            vstream = _add_video(container, video) if video is not None else None
            astreams = [_add_audio(container, spec) for spec in audio]
            _encode_interleaved(container, vstream, video, astreams, audio)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _add_video(container: av.container.OutputContainer, spec: _VideoSpec) -> av.VideoStream:
    stream = container.add_stream(spec.codec, rate=spec.rate)
    stream.height, stream.width = spec.frames.shape[1:3]
    stream.pix_fmt = spec.pix_fmt
    stream.codec_context.time_base = spec.time_base
    if spec.gop is not None:
        stream.codec_context.gop_size = spec.gop
    if spec.options:
        stream.options = spec.options
    if spec.rotation:
        stream.set_display_rotation(spec.rotation)
    return stream


def _add_audio(container: av.container.OutputContainer, spec: _AudioSpec) -> av.AudioStream:
    stream = container.add_stream(spec.codec, rate=spec.sample_rate)
    stream.layout = _LAYOUTS[spec.samples.shape[0]]
    stream.codec_context.time_base = Fraction(1, spec.sample_rate)
    return stream


def _encode_interleaved(container: av.container.OutputContainer, vstream: av.VideoStream | None,
                        video: _VideoSpec | None, astreams: list[av.AudioStream],
                        audio: list[_AudioSpec]) -> None:
    """Encode frames and audio chunks in time order, then mux every packet in decoding order.

    Muxing only after all encoders have spoken matters: an audio encoder's priming packet has a
    negative timestamp, and muxers that shift timestamps to be non-negative (AVI) would
    otherwise shift every packet but those already written.
    """
    events: list[tuple[Fraction, int, int]] = []
    for track, spec in enumerate(audio):
        for k in range(0, spec.samples.shape[1], _AUDIO_CHUNK):
            events.append((Fraction(spec.first_pts + k, spec.sample_rate), track, k))
    if video is not None:
        events += [(p * video.time_base, len(audio), i) for i, p in enumerate(video.pts)]
    packets: list[av.Packet] = []
    for _, kind, item in sorted(events):
        if kind < len(audio):
            packets += astreams[kind].encode(_audio_frame(audio[kind], item))
        else:
            assert vstream is not None and video is not None
            packets += vstream.encode(_video_frame(video, item))
    for stream in astreams + ([vstream] if vstream is not None else []):
        packets += stream.encode(None)
    order = sorted(range(len(packets)), key=lambda i: (_dts_seconds(packets[i]), i))
    for i in order:
        container.mux(packets[i])


def _dts_seconds(packet: av.Packet) -> Fraction:
    ts = packet.dts if packet.dts is not None else packet.pts
    return Fraction(ts or 0) * (packet.time_base or 1)


def _video_frame(spec: _VideoSpec, i: int) -> av.VideoFrame:
    image = spec.frames[i]
    frame = av.VideoFrame.from_ndarray(image, format="rgb24" if image.shape[-1] == 3 else "rgba")
    frame.pts = spec.pts[i]
    # A fixed time base: the stream's own one changes when the header is written.
    frame.time_base = spec.time_base
    return frame


def _audio_frame(spec: _AudioSpec, start: int) -> av.AudioFrame:
    chunk = np.ascontiguousarray(spec.samples[:, start:start + _AUDIO_CHUNK])
    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=_LAYOUTS[chunk.shape[0]])
    frame.sample_rate = spec.sample_rate
    frame.pts = spec.first_pts + start
    frame.time_base = Fraction(1, spec.sample_rate)
    return frame


# --------------------------------------------------------------------------- odd and broken cases


def make_case(name: str, directory: str | Path) -> Path:
    """Write the case ``name`` (a key of :data:`CASES`) under ``directory``; return its path."""
    if name not in CASES:
        raise ConfigError(f"unknown media case {name!r}; choose one of: {', '.join(CASES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return _CASE_WRITERS[name](directory / _case_filename(name))


def _case_filename(name: str) -> str:
    suffix = {"odd_101x77": ".avi", "mpeg4_avi": ".avi", "gray": ".mkv", "alpha": ".mkv",
              "alpha_rgba": ".mov"}.get(name, ".mp4")
    return NONASCII_NAME if name == "nonascii" else f"{name}{suffix}"


def _tone(duration: float = CASE_FRAMES / CASE_FPS, freq: float = CASE_TONE_HZ,
          sample_rate: int = CASE_SAMPLE_RATE, channels: int = 1) -> np.ndarray:
    return sine(freq, duration, sample_rate, channels=channels)


def _patch(num_frames: int = CASE_FRAMES, alpha: bool = False,
           size: tuple[int, int] = CASE_SIZE) -> np.ndarray:
    colour = COLOUR_PATCH_RGB + ((255,) if alpha else ())
    return np.broadcast_to(np.array(colour, np.uint8),
                           (num_frames, *size, len(colour))).copy()


def _standard(path: Path, **kw: object) -> Path:
    kw.setdefault("audio", _tone())
    return write_video(path, **kw)  # type: ignore[arg-type]


def _mp4_boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """Top-level ISO-BMFF boxes: type -> (offset, size)."""
    boxes: dict[str, tuple[int, int]] = {}
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        boxes[kind.decode("latin-1")] = (pos, size)
        pos += max(size, 8)
    return boxes


def _truncated(path: Path, faststart: bool) -> Path:
    _standard(path, num_frames=2 * CASE_FRAMES, audio=_tone(2.0), faststart=faststart)
    data = path.read_bytes()
    start, size = _mp4_boxes(data)["mdat"]
    # Keep the header (and, for faststart, the whole index) and half of the media data.
    path.write_bytes(data[:start + size // 2])
    return path


def _bitflip(path: Path) -> Path:
    _standard(path, num_frames=2 * CASE_FRAMES, audio=_tone(2.0))
    data = bytearray(path.read_bytes())
    start, size = _mp4_boxes(bytes(data))["mdat"]
    rng = np.random.default_rng(7)
    for pos in range(start + 64, start + size, 200):
        data[pos] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))
    return path


def _unknown_codec(path: Path) -> Path:
    _standard(path)
    data = bytearray(path.read_bytes())
    stsd = data.find(b"stsd")
    entry = data.find(b"avc1", stsd)  # the sample entry, not the 'avc1' brand in ftyp
    data[entry:entry + 4] = b"zzzz"
    path.write_bytes(bytes(data))
    return path


def _dangling(path: Path) -> Path:
    if path.is_symlink():
        path.unlink()
    path.symlink_to(path.with_name("missing_target.mp4"))
    return path


def _directory(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


def _bytes(data: bytes):  # noqa: ANN202 - returns a case writer
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


_CASE_WRITERS = {
    "zero_byte": _bytes(b""),
    "garbage": _bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes()),
    "text_as_mp4": _bytes(b"This is not a video. It is a text file with a video name.\n" * 40),
    "truncated_moov_end": lambda p: _truncated(p, faststart=False),
    "truncated_faststart": lambda p: _truncated(p, faststart=True),
    "bitflip": _bitflip,
    "audio_only": lambda p: write_audio(p, _tone()),
    "one_frame": lambda p: write_video(p, num_frames=1),
    "tiny_16x16": lambda p: _standard(p, size=(16, 16)),
    "odd_101x77": lambda p: _standard(p, size=(77, 101), codec="mpeg4",
                                     audio_codec="pcm_s16le"),
    "ten_bit": lambda p: _standard(p, pix_fmt="yuv420p10le"),
    "yuv444": lambda p: _standard(p, pix_fmt="yuv444p"),
    "full_range": lambda p: _standard(p, frames=_patch(), pix_fmt="yuvj420p"),
    "gray": lambda p: write_video(p, codec="ffv1", pix_fmt="gray"),
    "alpha": lambda p: write_video(p, frames=_patch(alpha=True), codec="ffv1", pix_fmt="yuva420p"),
    "alpha_rgba": lambda p: write_video(p, frames=_patch(alpha=True), codec="png", pix_fmt="rgba"),
    "two_audio_tracks": lambda p: _standard(p, extra_audio_tracks=[_tone(freq=SECOND_TONE_HZ)]),
    "surround_51": lambda p: _standard(p, audio=_tone(sample_rate=48000, channels=6),
                                       sample_rate=48000),
    "audio_8k": lambda p: _standard(p, audio=_tone(sample_rate=8000), sample_rate=8000),
    "audio_late": lambda p: _standard(p, audio_start=AUDIO_LATE_S),
    "nonzero_start": lambda p: write_video(p, start_time=NONZERO_START_S),
    "rotated_90": lambda p: _standard(p, rotation=90),
    "rotated_180": lambda p: _standard(p, rotation=180),
    "rotated_270": lambda p: _standard(p, rotation=270),
    "vfr": lambda p: _standard(p, frames=index_frames(len(VFR_TIMES)), frame_times=VFR_TIMES),
    "nonascii": _standard,
    "dangling_symlink": _dangling,
    "directory": _directory,
    "no_audio": lambda p: write_video(p),
    "colour_patch": lambda p: _standard(p, frames=_patch()),
    "unknown_codec": _unknown_codec,
    "mpeg4_avi": lambda p: _standard(p, codec="mpeg4", audio_codec="pcm_s16le"),
    "silent_audio": lambda p: _standard(p, audio=np.zeros(CASE_SAMPLE_RATE, np.float32)),
    "audio_short": lambda p: _standard(p, audio=_tone(AUDIO_SHORT_S)),
    "portrait": lambda p: _standard(p, size=(64, 48)),
    "hd_1080p": lambda p: write_video(p, frames=_patch(3, size=(1080, 1920))),
}
