"""Media reading with PyAV: probe files, read audio windows, frames at given times, and clips.

The contract is docs/api.md, section ``ccl_cache.media``. The rules every reader follows:

* **Times** are seconds relative to the file's start time (the container's first timestamp, the
  earliest of all streams): a file whose first pts is 1.5 s has its first frame at t = 0.0.
  Frame times come from ``pts * time_base`` (variable-frame-rate files exist), never from
  ``index / fps``.
* **Frames** come out as a player shows them: display-matrix rotation applied, RGB uint8,
  resized to ``size = (height, width)`` with one reused swscale context per call (10-bit,
  4:4:4, full-range, gray and alpha sources are all converted by swscale using the frame's own
  colour range and matrix; alpha is dropped).
* **Seeking**: readers seek to the keyframe before a window and decode forward; when the
  keyframe found by the demuxer starts after the asked time (B-frame reordering, imprecise
  indexes) they seek further back until the window is covered. ``read_keyframes`` instead makes
  one pass that decodes keyframes only and answers each time with a keyframe near it.
* **Bounded**: every call has a wall-clock deadline and a packet budget derived from the window
  and the stream's packet rate (generous slack, :class:`DecodeLimits`), opens files with
  ``av.open(timeout=...)`` and gives up after too many decoder errors, so a broken file cannot
  hang a worker. Lenient decoding of damaged data is allowed; the number of packets the decoder
  rejected is reported in :attr:`Frames.decode_errors`.
* **Errors**: failures raise :class:`~ccl_cache.errors.MediaError` whose ``reason`` is one of
  ``not-found``, ``not-a-file``, ``empty``, ``unreadable``, ``unsupported``, ``no-video``,
  ``no-audio`` (:class:`~ccl_cache.errors.NoAudioError`, audio readers only), ``stream``,
  ``window``, ``decode``, ``limit``, ``timeout``. No ``av.*`` exception leaves this module.
"""

from __future__ import annotations

import collections
import logging
import math
import operator
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from ccl_cache.errors import CclCacheError, ConfigError, MediaError, NoAudioError

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- opening files


@dataclass
class _Input:
    path: Path
    container: av.container.InputContainer
    origin: float  # absolute seconds of t = 0
    duration: float  # seconds from the origin
    limits: DecodeLimits
    deadline: float  # time.monotonic() after which the call gives up

    def reopen(self) -> None:
        """Close and reopen the file: the one rewind that is exact in every format (an MPEG-TS
        seek to the first timestamp lands on the second keyframe)."""
        self.container.close()
        self.container = _av_open(self.path, self.limits)

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise MediaError(self.path, "timeout",
                             f"reading took longer than {self.limits.wall_s:g} s; the file may be "
                             "damaged (or huge: raise DecodeLimits.wall_s)")


def _checked_path(path: str | os.PathLike[str]) -> Path:
    """Refuse what cannot be a readable media file before FFmpeg sees it (a FIFO would block)."""
    p = Path(path)
    if not os.path.lexists(p):
        raise MediaError(p, "not-found", f"does not exist (working directory {os.getcwd()}); "
                                         "check the path or the manifest's root")
    if p.is_symlink() and not p.exists():
        raise MediaError(p, "not-found", f"is a symlink to {os.readlink(p)!r}, which does not "
                                         "exist; fix or remove the link")
    if p.is_dir():
        raise MediaError(p, "not-a-file", "is a directory, not a media file; point at a file")
    if not p.is_file():
        raise MediaError(p, "not-a-file", "is not a regular file (device, FIFO or socket); "
                                          "copy the media to a regular file")
    if p.stat().st_size == 0:
        raise MediaError(p, "empty", "is empty (0 bytes); the download or copy probably failed; "
                                     "fetch the file again")
    if not os.access(p, os.R_OK):
        raise MediaError(p, "unreadable", "cannot be read by this user (permission denied); "
                                          "fix its permissions")
    return p


def _av_open(p: Path, lim: DecodeLimits) -> av.container.InputContainer:
    try:
        # metadata_errors="replace": damaged tags must not stop the media from being read.
        return av.open(str(p), "r", timeout=(lim.open_timeout_s, lim.read_timeout_s),
                       metadata_errors="replace")
    except av.error.ExitError as exc:
        raise MediaError(p, "timeout", f"opening took longer than {lim.open_timeout_s:g} s; "
                                       "is it on a stalled network mount?") from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(p, "unreadable", f"is not a media file FFmpeg can open ({_describe(exc)})"
                                          "; check it is a complete audio/video file (a file cut "
                                          "short before its index looks like this)") from exc


@contextmanager
def _open_input(path: str | os.PathLike[str], limits: DecodeLimits | None) -> Iterator[_Input]:
    """Open ``path`` with PyAV; map every av/OS error raised inside to a ``MediaError``."""
    lim = limits or DEFAULT_LIMITS
    p = _checked_path(path)
    deadline = time.monotonic() + lim.wall_s
    container = _av_open(p, lim)
    origin = _origin(container)
    inp = _Input(p, container, origin, _duration(container, origin), lim, deadline)
    try:
        yield inp
    except CclCacheError:
        raise
    except av.error.ExitError as exc:
        raise MediaError(p, "timeout", f"a read took longer than {lim.read_timeout_s:g} s; "
                                       "is it on a stalled network mount?") from exc
    except (av.FFmpegError, OSError, ValueError, OverflowError) as exc:
        # PyAV raises plain ValueError/OverflowError on some damaged data (odd tags, sizes).
        raise MediaError(p, "decode", f"decoding failed ({_describe(exc)}); the file is "
                                      "probably damaged: re-encode or re-download it") from exc
    finally:
        inp.container.close()


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}"


def _origin(container: av.container.InputContainer) -> float:
    if container.start_time is not None:
        return container.start_time / av.time_base
    starts = [float(s.start_time * s.time_base) for s in container.streams
              if s.start_time is not None and s.time_base is not None]
    return min(starts, default=0.0)


def _duration(container: av.container.InputContainer, origin: float) -> float:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    ends = [_stream_end(s, origin) for s in container.streams]
    return max((e for e in ends if e is not None), default=0.0)


def _stream_start(stream: av.stream.Stream, origin: float) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base) - origin


def _stream_end(stream: av.stream.Stream, origin: float) -> float | None:
    """Where the stream's header says it ends (seconds from the origin), if it says."""
    if stream.duration and stream.time_base is not None:
        return _stream_start(stream, origin) + float(stream.duration * stream.time_base)
    tag = _tag_seconds(stream.metadata.get("DURATION"))  # Matroska keeps it as a tag
    return None if tag is None else _stream_start(stream, origin) + tag


def _tag_seconds(text: str | None) -> float | None:
    """Parse an ``HH:MM:SS.fraction`` duration tag."""
    try:
        hours, minutes, seconds = (text or "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


# --------------------------------------------------------------------------- streams


def _moving_video(container: av.container.InputContainer) -> list[av.VideoStream]:
    """Video streams that are not cover art (an attached picture is a one-packet video stream)."""
    return [s for s in container.streams.video
            if not s.disposition & av.stream.Disposition.attached_pic]


def _video_stream(inp: _Input) -> av.VideoStream:
    """The first video stream that is not cover art; refuse files without a decodable one."""
    for stream in _moving_video(inp.container):
        if stream.codec_context is None:
            raise MediaError(inp.path, "unsupported", f"video stream #{stream.index} uses a codec "
                             "this FFmpeg build cannot decode; re-encode it (e.g. to H.264)")
        return stream
    raise MediaError(inp.path, "no-video", "has no video stream (audio only?); drop it from "
                                           "video inputs or use read_audio")


def _audio_stream(inp: _Input, stream: int) -> av.AudioStream:
    """The ``stream``-th audio stream (0 = first, in file order)."""
    streams = list(inp.container.streams.audio)
    if not streams:
        raise NoAudioError(inp.path)
    if not 0 <= stream < len(streams):
        raise MediaError(inp.path, "stream", f"has {len(streams)} audio stream(s); stream={stream} "
                                             f"is out of range, pick 0..{len(streams) - 1}")
    chosen = streams[stream]
    if chosen.codec_context is None:
        raise MediaError(inp.path, "unsupported", f"audio stream #{chosen.index} uses a codec "
                         "this FFmpeg build cannot decode; re-encode it (e.g. to AAC)")
    return chosen


def _video_rate(stream: av.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def _video_end(inp: _Input, stream: av.VideoStream) -> float:
    """Where the video claims to end (seconds from the origin)."""
    end = _stream_end(stream, inp.origin)
    return end if end is not None else inp.duration


def _normalise_rotation(degrees: float) -> int:
    return int(round(degrees / 90.0)) * 90 % 360


def _display_rotation(frame: av.VideoFrame, tag_rotation: int) -> int:
    """The frame's display-matrix rotation, else the stream's legacy tag (0/90/180/270, CCW)."""
    return _normalise_rotation(frame.rotation) if frame.rotation else tag_rotation


def _tag_rotation(stream: av.VideoStream) -> int:
    """Counter-clockwise rotation from a legacy ``rotate`` tag (which is clockwise)."""
    try:
        return _normalise_rotation(-float(stream.metadata.get("rotate", 0)))
    except ValueError:
        return 0


# --------------------------------------------------------------------------- decoding


@dataclass
class _Decoded:
    time: float  # seconds from the origin
    duration: float
    frame: av.VideoFrame

    @property
    def end(self) -> float:
        """When the frame stops being shown (seconds from the origin)."""
        return self.time + self.duration


_decoder_threads = 0  # see set_decoder_threads


def set_decoder_threads(count: int) -> None:
    """Threads per video decoder opened in this process from now on.

    0 (the default) lets FFmpeg choose (frame + slice threads: the shortest wall time for a
    decoder that has the machine to itself). 1 decodes in the calling thread, which costs less
    CPU per clip (measured on 10 s 360p clips: 257-261 vs 293-299 ms for 8 spread frames, 68-69
    vs 71-73 ms with keyframes) and so gives more clips/s wherever there are as many decoding
    processes as cores: ``extract``'s decode workers and the training DataLoader's workers set it.
    """
    global _decoder_threads
    if count < 0:
        raise ConfigError(f"decoder threads must be >= 0 (0: FFmpeg's choice), got {count}")
    _decoder_threads = count


class _Decoder:
    """Demux and decode one stream: seeks, packet budget, deadline and decoder-error count.

    ``keyframes_only``: the decoder gets only the packets the container flags as keyframes and
    is told to discard any other frame (``skip_frame="NONKEY"``), so it decodes keyframes only.
    ``decoded`` counts the frames the decoder produced; ``end_ticks``/``last_pts_ticks`` (stream
    ticks) say where the demuxed packets stop, even when their frames are not decoded.
    """

    def __init__(self, inp: _Input, stream: av.stream.Stream, packet_rate: float,
                 keyframes_only: bool = False) -> None:
        self.inp = inp
        self.index = stream.index  # kept: a stream object must not be touched once closed
        self.keyframes_only = keyframes_only
        self.stream = self._bind(stream)
        self.packet_rate = max(packet_rate, 30.0)
        self.start = _stream_start(stream, inp.origin)
        self.errors = 0
        self.corrupt = 0
        self.decoded = 0
        self.end_ticks: int | None = None  # max pts + duration of the packets demuxed
        self.last_pts_ticks: int | None = None  # max pts of the packets demuxed
        self.last_dts: int | None = None
        self.fresh = True  # nothing demuxed yet: the demuxer is at the start of the file

    def ticks(self, t: float) -> int:
        return int(math.floor((t + self.inp.origin) / float(self.stream.time_base) + 1e-6))

    def _bind(self, stream: av.stream.Stream) -> av.stream.Stream:
        """Configure a (re)opened stream's decoder; runs again after every reopen."""
        if stream.type == "video":
            if _decoder_threads == 1:
                stream.thread_type = "NONE"
                stream.codec_context.thread_count = 1
            else:
                stream.thread_type = "AUTO"  # frame + slice threads: decoding is the hot loop
                stream.codec_context.thread_count = _decoder_threads
            if self.keyframes_only:
                # Belt and braces with the packet filter in frames(): a container that flags
                # every packet as a keyframe still gets only real keyframes decoded.
                stream.codec_context.skip_frame = "NONKEY"
        return stream

    def seek(self, t: float) -> bool:
        """Go to the keyframe at/before ``t``; True when decoding restarts at the stream start.

        Timestamp seeks may land after the asked keyframe (MPEG-TS does); callers check the first
        frame and ask again further back. A rewind to the start reopens the file, and so does a
        format that cannot seek: decoding from the start is slower but still right.
        """
        at_start = t <= self.start + _EPS
        if not at_start:
            try:
                self.inp.container.seek(self.ticks(t), stream=self.stream, backward=True)
            except av.error.ExitError:
                raise
            except av.FFmpegError:
                at_start = True
                self.fresh = False  # a failed seek may have moved the reader: reopen
        if at_start and not self.fresh:
            self.inp.reopen()
            self.stream = self._bind(self.inp.container.streams[self.index])
        self.last_dts = None
        self.fresh = at_start
        return at_start

    def frames(self, until: float) -> Iterator[av.frame.Frame]:
        """Decoded frames from the current position; the budget covers a pass up to ``until``."""
        lim = self.inp.limits
        span = max(until, 0.0) + 2.0
        budget = int(lim.packet_slack * self.packet_rate * span) + lim.min_packets
        packets = self.inp.container.demux(self.stream)
        self.fresh = False
        for _ in range(budget):
            self.inp.check_deadline()
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.ExitError:
                raise
            except (av.FFmpegError, IndexError):
                # Damaged or cut container: what was read is all there is. (PyAV raises
                # IndexError for a packet of a stream that appeared after opening, as in
                # damaged MPEG-TS; its demux generator is finished either way.)
                yield from self._decode(None)
                return
            self.last_dts = packet.dts if packet.dts is not None else self.last_dts
            if packet.pts is not None:
                stop = packet.pts + (packet.duration or 0)
                self.end_ticks = stop if self.end_ticks is None else max(self.end_ticks, stop)
                last = self.last_pts_ticks
                self.last_pts_ticks = packet.pts if last is None else max(last, packet.pts)
            if self.keyframes_only and packet.size and not packet.is_keyframe:
                continue  # skip_frame would discard it after parsing; not sending it saves that too
            yield from self._decode(packet)
        raise MediaError(self.inp.path, "limit",
                         f"demuxed {budget} packets without reaching t={until:.3f} s; the "
                         "timestamps are probably broken (raise DecodeLimits.packet_slack if not)")

    def _decode(self, packet: av.Packet | None) -> list[av.frame.Frame]:
        try:
            out = self.stream.decode(packet)
        except (av.error.ExitError, av.error.EOFError):
            raise
        except av.FFmpegError as exc:
            self.errors += 1
            if self.errors > self.inp.limits.max_decode_errors:
                raise MediaError(self.inp.path, "decode",
                                 f"more than {self.inp.limits.max_decode_errors} packets failed "
                                 f"to decode ({_describe(exc)}); the file is damaged: re-encode "
                                 "or re-download it") from exc
            return []
        self.corrupt += sum(1 for f in out if f.is_corrupt)
        self.decoded += len(out)
        return out

    @property
    def problems(self) -> int:
        return self.errors + self.corrupt


class _VideoDecoder(_Decoder):
    """Video frames with their times, and a positioned decode ("what is shown at t")."""

    def __init__(self, inp: _Input, stream: av.VideoStream, keyframes_only: bool = False) -> None:
        self.rate = _video_rate(stream)
        super().__init__(inp, stream, self.rate, keyframes_only)
        self.frame_step = 1.0 / self.rate if self.rate > 0 else 0.04

    def timed(self, until: float) -> Iterator[_Decoded]:
        prev: float | None = None
        tb = self.stream.time_base
        for frame in self.frames(until):
            if self.keyframes_only and not frame.key_frame:
                continue  # a decoder that ignores skip_frame still decodes the others: drop them
            if frame.pts is not None and tb is not None:
                t = float(frame.pts * tb) - self.inp.origin
            else:  # no timestamp: assume the nominal frame step (rare: some raw/AVI streams)
                t = self.start if prev is None else prev + self.frame_step
            dur = float(frame.duration * tb) if frame.duration and tb is not None else 0.0
            prev = t
            yield _Decoded(t, dur if dur > 0 else self.frame_step, frame)

    def decode_from(self, t: float, until: float) -> Iterator[_Decoded]:
        """Yield the frame shown at ``t`` (the first frame when ``t`` precedes the video), then
        every later frame. Seeks back further while the demuxer's keyframe starts after ``t``."""
        back = 0.0
        while True:
            at_start = self.seek(t - back)
            frames = self.timed(until)
            first = next(frames, None)
            if first is not None and (first.time <= t + _EPS or at_start):
                break
            if first is None and at_start:
                raise MediaError(self.inp.path, "decode", "no video frame could be decoded; the "
                                 "file is damaged or empty: re-encode or re-download it")
            back = max(1.0, 2.0 * back)
        shown = first
        for cur in frames:
            if cur.time > t + _EPS:
                yield shown
                yield cur
                yield from frames
                return
            shown = cur
        yield shown

    def data_end(self) -> float | None:
        """Where the demuxed packets end (seconds from the origin), None before any packet.

        A latest packet without a duration is taken to last the nominal frame step (as a frame
        without one is in :meth:`timed`)."""
        tb = self.stream.time_base
        if self.end_ticks is None or self.last_pts_ticks is None or tb is None:
            return None
        end = float(self.end_ticks * tb) - self.inp.origin
        last = float(self.last_pts_ticks * tb) - self.inp.origin
        return max(end, last + self.frame_step) if end <= last + _EPS else end

    def should_seek(self, t: float) -> bool:
        """True when a keyframe lies between the current position and ``t`` (a seek saves work)."""
        entries = self.stream.index_entries
        if len(entries) and self.last_dts is not None:
            i = entries.search_timestamp(self.ticks(t), backward=True)
            return i >= 0 and entries[i].timestamp > self.last_dts
        if self.last_dts is None or self.stream.time_base is None:
            return False
        here = float(self.last_dts * self.stream.time_base) - self.inp.origin
        return t - here > SEEK_GAP_S


class _Converter:
    """Frame -> displayed RGB array, resized with ONE reused swscale context per call.

    Reusing a ``VideoReformatter`` keeps its SwsContext between frames; ``to_ndarray(width=,
    height=)`` builds a new one per frame (1.9-2.5x slower on 360p -> 112x112, measured).
    swscale runs single-threaded: the decoder's threads and data-loader workers already use the
    cores, and slicing a small output across threads cost more than it saved (measured).
    """

    def __init__(self, size: tuple[int, int] | None, tag_rotation: int) -> None:
        self.size = size
        self.tag_rotation = tag_rotation
        self.reformatter = VideoReformatter()
        self._last: tuple[av.VideoFrame, np.ndarray] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._last is not None and self._last[0] is frame:
            return self._last[1]  # the same frame shown at several asked times
        k = _display_rotation(frame, self.tag_rotation) // 90
        if self.size is None:
            width, height = frame.width, frame.height
        else:
            height, width = self.size if k % 2 == 0 else self.size[::-1]
        rgb = self.reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                        threads=1)
        array = rgb.to_ndarray()
        if k:
            # np.rot90 turns counter-clockwise, the direction of the display matrix angle.
            array = np.ascontiguousarray(np.rot90(array, k))
        self._last = (frame, array)
        return array


# --------------------------------------------------------------------------- probe


def probe(path: str | os.PathLike[str], *, limits: DecodeLimits | None = None) -> MediaInfo:
    """Describe ``path``: container, duration, start, the video stream readers use, audio streams.

    Decodes the first video frame (its display matrix gives the rotation, and it proves the video
    decodes); nothing else is decoded, so probing a damaged file stays fast.
    """
    with _open_input(path, limits) as inp:
        container = inp.container
        video = _video_info(inp) if _moving_video(container) else None
        audio = tuple(_audio_info(inp, s) for s in container.streams.audio)
        return MediaInfo(path=str(inp.path), format=container.format.name,
                         size_bytes=inp.path.stat().st_size, duration=inp.duration,
                         start_time=inp.origin, video=video, audio=audio)


def _video_info(inp: _Input) -> VideoStreamInfo:
    stream = _video_stream(inp)
    decoder = _VideoDecoder(inp, stream)
    first = next(decoder.timed(until=0.0), None)
    if first is None:
        raise MediaError(inp.path, "decode", "its video stream has no decodable frame; the file "
                                             "is damaged: re-encode or re-download it")
    rotation = _display_rotation(first.frame, _tag_rotation(stream))
    ctx = stream.codec_context
    width, height = first.frame.width, first.frame.height
    if rotation in (90, 270):
        width, height = height, width
    start = _stream_start(stream, inp.origin)
    return VideoStreamInfo(index=stream.index, codec=ctx.name, width=width, height=height,
                           fps=_video_rate(stream), duration=_video_end(inp, stream) - start,
                           start_time=start, rotation=rotation,
                           pix_fmt=ctx.pix_fmt or first.frame.format.name,
                           frames=stream.frames or None)


def _audio_info(inp: _Input, stream: av.AudioStream) -> AudioStreamInfo:
    ctx = stream.codec_context
    start = _stream_start(stream, inp.origin)
    end = _stream_end(stream, inp.origin)
    return AudioStreamInfo(index=stream.index, codec=ctx.name if ctx is not None else "unknown",
                           sample_rate=int(ctx.sample_rate or 0) if ctx is not None else 0,
                           channels=int(ctx.channels or 0) if ctx is not None else 0,
                           duration=(end if end is not None else inp.duration) - start,
                           start_time=start)


def measure_coverage(path: str | os.PathLike[str], *,
                     limits: DecodeLimits | None = None) -> float:
    """Fraction in [0, 1] of the file that its packets actually cover.

    A demux-only timestamp scan (no decoding, no conversion). Each audio/video stream scores
    (end of its last packet) / (end its header claims), capped at 1, and the file scores its
    worst stream: a file cut short after its index was written (e.g. a faststart mp4 whose
    download stopped) opens, claims its full duration, and scores well below 1, while a healthy
    file whose audio outlasts its video still scores 1. ``coverage * probe(path).duration`` is
    about where decodable data ends.
    """
    with _open_input(path, limits) as inp:
        streams = [*_moving_video(inp.container), *inp.container.streams.audio]
        if not streams:
            return 0.0
        ends = _scan_packet_ends(inp, streams)
        scores = []
        for stream in streams:
            claimed = _stream_end(stream, inp.origin)
            claimed = inp.duration if claimed is None else claimed
            scores.append(1.0 if claimed <= 0 else ends.get(stream.index, 0.0) / claimed)
        return float(min(1.0, max(0.0, min(scores))))


def _scan_packet_ends(inp: _Input, streams: list[av.stream.Stream]) -> dict[int, float]:
    """stream index -> end (seconds from the origin) of its last demuxed packet."""
    lim = inp.limits
    rate = sum(_packet_rate(s) for s in streams)
    budget = int(lim.packet_slack * rate * (inp.duration + 2.0)) + lim.min_packets
    ends: dict[int, float] = {}
    packets = inp.container.demux(*streams)
    for _ in range(budget):
        inp.check_deadline()
        try:
            packet = next(packets)
        except StopIteration:
            return ends
        except av.error.ExitError:
            raise
        except (av.FFmpegError, IndexError):  # the data stops here (see _Decoder.frames)
            return ends
        if packet.size and packet.pts is not None and packet.time_base is not None:
            stop = float((packet.pts + (packet.duration or 0)) * packet.time_base) - inp.origin
            index = packet.stream.index
            ends[index] = max(ends.get(index, 0.0), stop)
    raise MediaError(inp.path, "limit", f"more than {budget} packets in a {inp.duration:.1f} s "
                                        "file; its timestamps are probably broken")


def _packet_rate(stream: av.stream.Stream) -> float:
    """Packets per second to budget for (an overestimate is harmless: it only bounds loops)."""
    if stream.type == "video":
        return max(_video_rate(stream), 30.0)
    ctx = stream.codec_context
    rate = float(ctx.sample_rate or 48000) if ctx is not None else 48000.0
    frame_size = (ctx.frame_size if ctx is not None else 0) or 256  # PCM: no fixed frame size
    return max(rate / frame_size, 50.0)


# --------------------------------------------------------------------------- audio


def read_audio(path: str | os.PathLike[str], sample_rate: int = 32000, start: float | None = None,
               end: float | None = None, stream: int = 0, *,
               limits: DecodeLimits | None = None) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``sample_rate`` for the window [start, end) seconds.

    ``start``/``end`` default to the file's start and end. ``stream`` picks the audio stream
    (0 = the first in file order). Channels are downmixed and the rate converted by FFmpeg's
    resampler (``av.AudioResampler(format="flt", layout="mono")``). The result has exactly
    ``round((end - start) * sample_rate)`` samples aligned to the window: where the audio stream
    starts after ``start`` or ends before ``end`` (audio shorter than the video, or starting
    late) the samples are zeros. The window itself must lie within the file's duration (plus
    ``END_TOLERANCE_S``): zeros are never invented past the end of the file. Raises
    :class:`NoAudioError` when the file has no audio stream.
    """
    sample_rate = _positive_int(sample_rate, "sample_rate (Hz)")
    with _open_input(path, limits) as inp:
        chosen = _audio_stream(inp, stream)
        t0, t1 = _audio_window(inp, start, end)
        count = int(round((t1 - t0) * sample_rate))
        if count > inp.limits.max_audio_samples:
            # Damaged headers can claim days of audio in a small file: refuse before allocating.
            raise MediaError(inp.path, "limit", f"the audio window [{t0:.3f}, {t1:.3f}) s is "
                             f"{count} samples at {sample_rate} Hz, more than "
                             f"DecodeLimits.max_audio_samples={inp.limits.max_audio_samples}; "
                             "read shorter windows (or check the file's duration)")
        out = np.zeros(count, np.float32)
        if len(out):
            _fill_audio(inp, chosen, t0, sample_rate, out)
        return np.clip(out, -1.0, 1.0, out=out)


def _positive_int(value: object, what: str) -> int:
    """``value`` as an int > 0 (numpy integers welcome; bools and floats are mistakes)."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if isinstance(value, bool) or number <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return number


def _audio_window(inp: _Input, start: float | None, end: float | None) -> tuple[float, float]:
    t0 = 0.0 if start is None else float(start)
    t1 = inp.duration if end is None else float(end)
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 < -_EPS or t1 < t0:
        raise MediaError(inp.path, "window", f"audio window [{t0}, {t1}) is invalid: expected "
                                             f"0 <= start <= end <= {inp.duration:.3f} s")
    if t1 > inp.duration + END_TOLERANCE_S:
        raise MediaError(inp.path, "window", f"audio window ends at {t1:.3f} s, past the end of "
                                             f"the file ({inp.duration:.3f} s); clip the window")
    return max(t0, 0.0), t1


def _fill_audio(inp: _Input, stream: av.AudioStream, t0: float, sample_rate: int,
                out: np.ndarray) -> None:
    """Decode from just before ``t0`` and write resampled samples into ``out`` by timestamp."""
    decoder = _Decoder(inp, stream, _packet_rate(stream))
    seek_to = t0 - AUDIO_PREROLL_S
    seeked = not decoder.seek(seek_to)
    resampler = _Resampler(sample_rate)
    t1 = t0 + len(out) / sample_rate
    pos: int | None = None if seeked else int(round((decoder.start - t0) * sample_rate))
    for frame in decoder.frames(until=t1):
        for chunk in resampler(frame):
            pos = _place(inp, chunk, out, t0, sample_rate, pos)
        if pos is not None and pos >= len(out):
            break
    else:
        for chunk in resampler(None):
            pos = _place(inp, chunk, out, t0, sample_rate, pos)
    decoder.corrupt += resampler.restarts
    if decoder.problems:
        log.warning("%s: %d audio packets/frames failed to decode cleanly", inp.path,
                    decoder.problems)


class _Resampler:
    """``av.AudioResampler`` to mono float32 that survives format changes mid-stream.

    A resampler is bound to the first frame's rate/layout/format; damaged or spliced files can
    change them, so the resampler is drained and rebuilt (and the change counted).
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.restarts = 0
        self._new()

    def _new(self) -> None:
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)

    def __call__(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        try:
            return self.resampler.resample(frame)
        except ValueError:  # "Frame does not match AudioResampler setup"
            if frame is None:
                raise
            drained = self.resampler.resample(None)
            self._new()
            self.restarts += 1
            return drained + self.resampler.resample(frame)


def _place(inp: _Input, chunk: av.AudioFrame, out: np.ndarray, t0: float, sample_rate: int,
           pos: int | None) -> int:
    """Copy one resampled chunk into ``out``; returns the index after it.

    Chunks are laid end to end; the timestamp re-anchors the position only at the start and
    where it disagrees by more than a millisecond (a real gap), so rounding never opens
    one-sample holes.
    """
    if chunk.pts is not None and chunk.time_base is not None:
        at = int(round((float(chunk.pts * chunk.time_base) - inp.origin - t0) * sample_rate))
        if pos is None or abs(at - pos) > sample_rate // 1000:
            pos = at
    elif pos is None:
        raise MediaError(inp.path, "decode", "audio frames carry no timestamps, so the window "
                                             "cannot be located; remux the file (e.g. to mp4)")
    data = chunk.to_ndarray().reshape(-1)
    lo, hi = max(pos, 0), min(pos + len(data), len(out))
    if hi > lo:
        out[lo:hi] = data[lo - pos:hi - pos]
    return pos + len(data)


# --------------------------------------------------------------------------- video


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ConfigError(f"size must be (height, width) or None, got {size!r}")
    return _positive_int(size[0], "size height"), _positive_int(size[1], "size width")


def _check_time(inp: _Input, t: float, what: str) -> None:
    # Only the obviously wrong is refused before decoding: stream durations in headers can be
    # wrong (B-frame VFR mp4s under-report them), so "past the end" is decided at the last frame.
    if not math.isfinite(t) or t < -_EPS:
        raise MediaError(inp.path, "window", f"{what} {t} is not a time in the video: expected "
                                             "a finite time >= 0 s")


def _past_end(inp: _Input, t: float, end: float, claimed: float, what: str) -> MediaError:
    """The "window" error for a time past ``end``, where the decodable video stops."""
    if claimed > end + END_TOLERANCE_S:
        return MediaError(inp.path, "window",
                          f"{what} {t:.3f} s is past the last decodable frame ({end:.3f} s) "
                          f"although the file claims {claimed:.3f} s: it is truncated or damaged "
                          "(measure_coverage() tells how much is readable); re-download it")
    return MediaError(inp.path, "window", f"{what} {t:.3f} s is past the end of the video "
                                          f"({end:.3f} s); keep times within the duration")


def read_frames(path: str | os.PathLike[str], times: Sequence[float],
                size: tuple[int, int] | None = None, *,
                limits: DecodeLimits | None = None) -> Frames:
    """For each time in ``times`` (seconds, any order), the frame displayed at that time.

    That is the last frame with pts <= t; times before the first frame give the first frame.
    A time past the end of the last decodable frame (beyond ``END_TOLERANCE_S``; for a truncated
    file that is before its claimed duration) raises ``MediaError(reason="window")``.
    ``Frames.times`` holds the pts of each returned frame. ``size`` = (height, width) of the
    output, None for the displayed size.
    """
    size = _check_size(size)
    wanted = _asked_times(times, "read_frames")
    with _open_input(path, limits) as inp:
        stream = _video_stream(inp)
        claimed = _video_end(inp, stream)
        order, targets = _sorted_times(inp, wanted)
        decoder = _VideoDecoder(inp, stream)
        convert = _Converter(size, _tag_rotation(stream))
        picked = _frames_at(inp, decoder, targets, claimed)
        return _finish(inp, *_in_asked_order(order, picked, convert), decoder)


def _asked_times(times: Sequence[float], caller: str) -> np.ndarray:
    """The asked times as a flat float64 array; ConfigError when there is none."""
    wanted = np.asarray(times, dtype=np.float64).reshape(-1)
    if wanted.size == 0:
        raise ConfigError(f"{caller} needs at least one time")
    return wanted


def _sorted_times(inp: _Input, wanted: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Each asked time checked, then (the order that sorts them, the sorted times)."""
    for t in wanted:
        _check_time(inp, float(t), "time")
    order = np.argsort(wanted, kind="stable")
    return order, [float(wanted[i]) for i in order]


def _in_asked_order(order: np.ndarray, picked: list[_Decoded],
                    convert: _Converter) -> tuple[np.ndarray, np.ndarray]:
    """(frames, pts) with ``picked[k]`` (for the k-th sorted time) back in its asked slot; a frame
    picked for several times (a repeat) is converted once."""
    arrays: list[np.ndarray] = [np.empty(0)] * len(order)
    stamps = np.empty(len(order), np.float64)
    converted: dict[int, np.ndarray] = {}
    for slot, shown in zip(order, picked):
        if id(shown) not in converted:
            converted[id(shown)] = convert(shown.frame)
        arrays[slot], stamps[slot] = converted[id(shown)], shown.time
    return np.stack(arrays), stamps


def _frames_at(inp: _Input, decoder: _VideoDecoder, targets: list[float],
               claimed: float) -> list[_Decoded]:
    """The frame shown at each of the sorted ``targets``: one forward pass, seeking ahead only
    when a keyframe lies between the current position and the next target."""
    picked: list[_Decoded] = []
    until = targets[-1]
    while len(picked) < len(targets):
        frames = decoder.decode_from(targets[len(picked)], until)
        shown = next(frames)
        for cur in frames:
            while len(picked) < len(targets) and cur.time > targets[len(picked)] + _EPS:
                picked.append(shown)
            if len(picked) == len(targets):
                break
            shown = cur
            if decoder.should_seek(targets[len(picked)]):
                break
        else:  # the video ended: `shown` is its last frame
            while len(picked) < len(targets):
                if targets[len(picked)] > shown.end + END_TOLERANCE_S:
                    raise _past_end(inp, targets[len(picked)], shown.end, claimed, "time")
                picked.append(shown)
    return picked


def read_keyframes(path: str | os.PathLike[str], times: Sequence[float],
                   size: tuple[int, int] | None = None, *,
                   limits: DecodeLimits | None = None) -> Frames:
    """For each time in ``times`` (seconds, any order), a keyframe near it; only keyframes are decoded.

    A cheap stand-in for :func:`read_frames` where any frame near the asked time will do.
    Keyframes decode on their own, so one forward pass over the part of the file that covers
    the times - from the keyframe at/before the earliest time to the first keyframe after the
    latest - decodes only them: the decoder gets only the packets flagged as keyframes and
    ``skip_frame="NONKEY"``, instead of every frame from a keyframe up to each asked time.

    Choice among the keyframes of that span: when there are at least as many as times, every
    time gets its own keyframe - the assignment in time order (a later time never gets an
    earlier keyframe) with the least total distance ``|time - keyframe pts|``, which is each
    time's nearest keyframe whenever those are distinct; ties go to the earlier keyframe. With
    fewer keyframes than times, each time gets its nearest keyframe (ties: the earlier), so some
    repeat. ``Frames.times`` holds the pts of each returned keyframe (relative to the file's
    start, as in read_frames), not the asked times; ``size`` and rotation as in read_frames.

    A time past the end of the video (beyond ``END_TOLERANCE_S``; the end is where the demuxed
    packets stop) raises ``MediaError(reason="window")`` as read_frames does. A file in which no
    keyframe decodes on its own (a codec or container without keyframe flags) falls back to
    :func:`read_frames` for all the times, within the same call and deadline.
    """
    size = _check_size(size)
    wanted = _asked_times(times, "read_keyframes")
    with _open_input(path, limits) as inp:
        stream = _video_stream(inp)
        claimed = _video_end(inp, stream)
        rotation = _tag_rotation(stream)  # read now: a reopen below closes `stream`
        order, targets = _sorted_times(inp, wanted)
        keys = _VideoDecoder(inp, stream, keyframes_only=True)
        decoders: list[_Decoder] = [keys]
        candidates = _keyframes_around(inp, keys, targets, claimed)
        if candidates:
            slots = _assign_keyframes(targets, [c.time for c in candidates])
            picked = [candidates[j] for j in slots]
        else:
            log.info("%s: no keyframe decodes on its own; reading the frames at the asked times",
                     inp.path)
            inp.reopen()  # the fallback decoder starts at the start of the file (`fresh`)
            every = _VideoDecoder(inp, inp.container.streams[keys.index])
            decoders.append(every)
            picked = _frames_at(inp, every, targets, claimed)
        return _finish(inp, *_in_asked_order(order, picked, _Converter(size, rotation)), *decoders)


def _keyframes_around(inp: _Input, decoder: _VideoDecoder, targets: list[float],
                      claimed: float) -> list[_Decoded]:
    """The choosable keyframes (time order) from the one at/before ``targets[0]`` to the first
    after ``targets[-1]``; [] when no keyframe decodes. ``decoder`` decodes keyframes only."""
    lo, hi = targets[0], targets[-1]
    kept = _KeyframeCandidates(targets)
    try:
        for cur in decoder.decode_from(lo, until=max(hi, claimed)):
            kept.add(cur)
            if cur.time > hi + _EPS:
                return kept.chosen()
    except MediaError as exc:
        if exc.reason != "decode" or kept.last is not None:
            raise
        return []  # "no video frame could be decoded" - as keyframes; the caller falls back
    if kept.last is None:
        return []
    end = max(decoder.data_end() or 0.0, kept.last.end)
    if hi > end + END_TOLERANCE_S:
        raise _past_end(inp, hi, end, claimed, "time")
    return kept.chosen()


class _KeyframeCandidates:
    """The keyframes of a forward pass that :func:`_assign_keyframes` may choose.

    With n times, a time is only ever given one of its n nearest keyframes on either side: had it
    skipped more, one of the skipped keyframes would be unused by the other n - 1 times and
    nearer, and moving to it (with the block of times between) shortens the total distance. So
    the others are dropped as the pass goes, and memory stays bounded by the number of times,
    not by the length of the span (a whole film's keyframes at full size would not fit).
    """

    def __init__(self, targets: list[float]) -> None:
        self.targets = targets  # sorted
        self.n = len(targets)
        self.kept: list[_Decoded] = []
        self.recent: collections.deque[_Decoded] = collections.deque(maxlen=self.n)
        self.passed = 0  # targets earlier than the latest keyframe
        self.since = 0  # keyframes since the latest passed target
        self.last: _Decoded | None = None

    def add(self, cur: _Decoded) -> None:
        """Take the next keyframe of the pass (increasing times)."""
        self.last = cur
        while self.passed < self.n and self.targets[self.passed] < cur.time - _EPS:
            self.kept.extend(self.recent)  # the nearest keyframes at/before that target
            self.recent.clear()
            self.passed += 1
            self.since = 0
        if self.passed and self.since < self.n:
            self.kept.append(cur)  # one of the n nearest after the latest passed target
        else:
            self.recent.append(cur)  # kept if among the n nearest before the next target
        self.since += 1

    def chosen(self) -> list[_Decoded]:
        """The choosable keyframes, in time order."""
        if self.passed < self.n:
            self.kept.extend(self.recent)  # nearest before the targets the pass did not pass
            self.recent.clear()
        return sorted(self.kept, key=lambda d: d.time)


def _assign_keyframes(targets: Sequence[float], keys: Sequence[float]) -> list[int]:
    """For each of the sorted ``targets``, an index into the sorted keyframe times ``keys``.

    At least as many keys as targets: distinct keys, in order, with the least total distance
    (dynamic programming over targets x keys; ties keep the earlier keys). Fewer: the nearest key
    of each target (ties: the earlier).
    """
    n, m = len(targets), len(keys)
    if m < n:
        return [min(range(m), key=lambda j: abs(t - keys[j])) for t in targets]
    # cost[i][j]: least total distance placing the first i targets on distinct keys among the
    # first j, in order; take[i][j]: whether target i-1 sits on key j-1 in that placement.
    cost = [[0.0] * (m + 1)] + [[math.inf] * (m + 1) for _ in range(n)]
    take = [[False] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(i, m + 1):
            here = cost[i - 1][j - 1] + abs(targets[i - 1] - keys[j - 1])
            if here < cost[i][j - 1]:  # strictly: on ties, leaving key j-1 free keeps earlier keys
                cost[i][j], take[i][j] = here, True
            else:
                cost[i][j] = cost[i][j - 1]
    slots = [0] * n
    i, j = n, m
    while i:
        if take[i][j]:
            slots[i - 1] = j - 1
            i -= 1
        j -= 1
    return slots


def read_clip(path: str | os.PathLike[str], start: float, num_frames: int, stride: int = 1,
              size: tuple[int, int] | None = None, pad: bool = True, *,
              limits: DecodeLimits | None = None) -> Frames:
    """``num_frames`` decoded frames, every ``stride``-th, from the first frame at/after ``start``.

    When the video ends first, ``pad=True`` repeats the last frame returned (or, when no frame
    lies at/after ``start``, the last frame of the video), so the result is never empty;
    ``pad=False`` raises ``MediaError(reason="window")``. A ``start`` past the end of the last
    decodable frame always raises. ``size`` = (height, width), None for the displayed size.
    """
    size = _check_size(size)
    num_frames = _positive_int(num_frames, "read_clip num_frames")
    stride = _positive_int(stride, "read_clip stride")
    with _open_input(path, limits) as inp:
        stream = _video_stream(inp)
        _check_time(inp, float(start), "clip start")
        decoder = _VideoDecoder(inp, stream)
        until = start + (num_frames * stride + 1) * decoder.frame_step
        chosen, last = _clip_frames(decoder, float(start), num_frames, stride, until)
        if not chosen and start > last.end + END_TOLERANCE_S:
            raise _past_end(inp, start, last.end, _video_end(inp, stream), "clip start")
        if len(chosen) < num_frames and not pad:
            raise MediaError(inp.path, "window",
                             f"the video ends at {last.end:.3f} s: only "
                             f"{len(chosen)} of {num_frames} frames (stride {stride}) from "
                             f"{start:.3f} s; use pad=True or an earlier start")
        chosen = chosen or [last]
        chosen += [chosen[-1]] * (num_frames - len(chosen))
        convert = _Converter(size, _tag_rotation(stream))
        arrays = np.stack([convert(d.frame) for d in chosen])
        return _finish(inp, arrays, np.array([d.time for d in chosen], np.float64), decoder)


def _clip_frames(decoder: _VideoDecoder, start: float, num_frames: int, stride: int,
                 until: float) -> tuple[list[_Decoded], _Decoded]:
    """Every ``stride``-th frame at/after ``start`` (at most ``num_frames``), and the last seen."""
    chosen: list[_Decoded] = []
    seen = 0
    last: _Decoded | None = None
    for cur in decoder.decode_from(start, until):
        last = cur
        if cur.time < start - _EPS:
            continue
        if seen % stride == 0:
            chosen.append(cur)
            if len(chosen) == num_frames:
                break
        seen += 1
    assert last is not None  # decode_from yields at least one frame or raises
    return chosen, last


def _finish(inp: _Input, arrays: np.ndarray, stamps: np.ndarray, *decoders: _Decoder) -> Frames:
    """The call's result, with the problems and decoded frames of every decoder it used."""
    problems = sum(d.problems for d in decoders)
    if problems:
        log.warning("%s: %d video packets/frames failed to decode cleanly", inp.path, problems)
    return Frames(frames=arrays, times=stamps, decode_errors=problems,
                  decoded_frames=sum(d.decoded for d in decoders))
