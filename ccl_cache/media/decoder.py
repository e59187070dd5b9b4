"""Demuxing and decoding one stream under the call's bounds (seeks, packet budget, deadline,
decoder-error count), video frames with their times, and the per-process decoder thread count."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import av
import av.error

from ccl_cache.errors import ConfigError, MediaError
from ccl_cache.media.container import _describe, _Input, _stream_start
from ccl_cache.media.info import _EPS, SEEK_GAP_S
from ccl_cache.media.streams import _video_rate


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
    CPU per clip (docs/performance.md) and so gives more clips/s wherever there are as many decoding
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
