"""What the readers take and return: decode limits, stream and file descriptions, decoded frames,
and the time tolerances every reader shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

END_TOLERANCE_S = 0.05
"""Times up to this far past the end of a stream still count as inside it (rounding of
container durations, manifest end times); later ones raise ``MediaError(reason="window")``."""

AUDIO_PREROLL_S = 0.2
"""Audio decoding starts this long before a window so codecs with overlapping transforms (AAC,
MP3) are settled when the window begins."""

SEEK_GAP_S = 2.0
"""Without a seek index, jump ahead with a seek when the next wanted time is this far away."""

_EPS = 1e-6  # float slack when comparing timestamps converted from integer ticks


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on one reader call, so damaged files fail instead of hanging.

    The packet budget of a decoding pass is ``packet_slack * packet_rate * (window_end + 2 s) +
    min_packets``: enough to decode from the start of the file to the end of the window
    several times over.
    """

    open_timeout_s: float = 10.0  # av.open interrupt callback while opening/probing
    read_timeout_s: float = 10.0  # av.open interrupt callback for each blocking read
    wall_s: float = 120.0  # whole call
    packet_slack: float = 4.0
    min_packets: int = 512
    max_decode_errors: int = 200  # packets the decoder may reject before the call fails
    max_audio_samples: int = 2**27  # one read_audio result (512 MiB of float32, 70 min at 32 kHz)


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class VideoStreamInfo:
    """The video stream a reader uses. ``width``/``height`` are as displayed (after rotation);
    ``rotation`` is the counter-clockwise display rotation in degrees (0, 90, 180, 270), as
    PyAV's ``VideoFrame.rotation``; ``start_time`` is relative to the file's start."""

    index: int
    codec: str
    width: int
    height: int
    fps: float
    duration: float
    start_time: float
    rotation: int
    pix_fmt: str
    frames: int | None


@dataclass(frozen=True)
class AudioStreamInfo:
    """One audio stream; ``start_time`` is relative to the file's start."""

    index: int
    codec: str
    sample_rate: int
    channels: int
    duration: float
    start_time: float


@dataclass(frozen=True)
class MediaInfo:
    """What the decoder sees in a file. ``start_time`` is the file's absolute first timestamp
    (the origin of every time in this module); ``duration`` is measured from it."""

    path: str
    format: str
    size_bytes: int
    duration: float
    start_time: float
    video: VideoStreamInfo | None
    audio: tuple[AudioStreamInfo, ...]

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)

    @property
    def has_video(self) -> bool:
        return self.video is not None


@dataclass(frozen=True, eq=False)
class Frames:
    """Decoded frames: ``frames`` (T, H, W, 3) uint8 RGB, ``times`` (T,) float64 seconds (pts of
    each returned frame, relative to the file's start). ``decode_errors`` counts packets the
    decoder rejected or frames it flagged corrupt while producing them (0 for clean files).
    ``decoded_frames`` counts every frame the decoder produced for the call, including those
    decoded only to reach the asked times (the call's decoding work)."""

    frames: np.ndarray
    times: np.ndarray
    decode_errors: int = 0
    decoded_frames: int = 0


@dataclass(frozen=True)
class PacketScan:
    """What a demux-only scan of a file's packets found (:func:`~ccl_cache.media.scan_packets`).

    ``coverage`` is :func:`~ccl_cache.media.measure_coverage`'s answer; ``audio`` holds, for each
    audio stream in file order, the span ``(start, end)`` in seconds from the file's start that
    its packets cover (first packet's pts to the end of its last packet), or None when the stream
    has no packet. Packet times, not header claims: headers of AVI/MPEG-TS audio streams may not
    say where the audio ends, and Matroska's per-stream DURATION tag is not a length.
    ``video_coverage`` is the same score for the video stream readers use alone (None: no video):
    how much of the picture is there, whatever a shorter audio track does to ``coverage``.
    """

    coverage: float
    audio: tuple[tuple[float, float] | None, ...] = ()
    video_coverage: float | None = None

