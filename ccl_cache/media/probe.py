"""Describing a file (:func:`probe`) and measuring how much of it its packets cover
(:func:`measure_coverage`)."""

from __future__ import annotations

import os

import av
import av.error

from ccl_cache.errors import MediaError
from ccl_cache.media.container import _Input, _open_input, _stream_end, _stream_start
from ccl_cache.media.decoder import _VideoDecoder
from ccl_cache.media.info import AudioStreamInfo, DecodeLimits, MediaInfo, VideoStreamInfo
from ccl_cache.media.streams import (
    _display_rotation, _moving_video, _packet_rate, _tag_rotation, _video_end, _video_rate, _video_stream,
)


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
                         size_bytes=inp.size_bytes, duration=inp.duration,
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
