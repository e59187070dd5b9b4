"""Describing a file (:func:`probe`) and measuring how much of it its packets cover
(:func:`measure_coverage`; :func:`scan_packets` also says where each audio stream's packets lie)."""

from __future__ import annotations

import os

import av
import av.error

from ccl_cache.errors import MediaError
from ccl_cache.media.container import _Input, _open_input, _stream_end, _stream_start
from ccl_cache.media.decoder import _VideoDecoder
from ccl_cache.media.info import AudioStreamInfo, DecodeLimits, MediaInfo, PacketScan, VideoStreamInfo
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
    return scan_packets(path, limits=limits).coverage


def scan_packets(path: str | os.PathLike[str], *, limits: DecodeLimits | None = None) -> PacketScan:
    """:func:`measure_coverage`'s coverage, the video stream's own and the span each audio
    stream's packets cover, from the same single demux-only scan (see :class:`PacketScan`)."""
    with _open_input(path, limits) as inp:
        audio = list(inp.container.streams.audio)
        streams = [*_moving_video(inp.container), *audio]
        if not streams:
            return PacketScan(0.0)
        spans = _scan_packet_spans(inp, streams)
        scores = {}
        for stream in streams:
            claimed = _stream_end(stream, inp.origin)
            claimed = inp.duration if claimed is None else claimed
            end = spans[stream.index][1] if stream.index in spans else 0.0
            scores[stream.index] = float(min(1.0, max(0.0, 1.0 if claimed <= 0 else end / claimed)))
        video = _moving_video(inp.container)
        return PacketScan(min(scores.values()), tuple(spans.get(s.index) for s in audio),
                          scores[video[0].index] if video else None)


def _scan_packet_spans(inp: _Input, streams: list[av.stream.Stream]) -> dict[int, tuple[float, float]]:
    """stream index -> (pts of its first demuxed packet, end of its last), seconds from the origin."""
    lim = inp.limits
    rate = sum(_packet_rate(s) for s in streams)
    budget = int(lim.packet_slack * rate * (inp.duration + 2.0)) + lim.min_packets
    spans: dict[int, tuple[float, float]] = {}
    packets = inp.container.demux(*streams)
    for _ in range(budget):
        inp.check_deadline()
        try:
            packet = next(packets)
        except StopIteration:
            return spans
        except av.error.ExitError:
            raise
        except (av.FFmpegError, IndexError):  # the data stops here (see _Decoder.frames)
            return spans
        if packet.size and packet.pts is not None and packet.time_base is not None:
            begin = float(packet.pts * packet.time_base) - inp.origin
            stop = float((packet.pts + (packet.duration or 0)) * packet.time_base) - inp.origin
            first, last = spans.get(packet.stream.index, (begin, stop))
            spans[packet.stream.index] = (min(first, begin), max(last, stop))
    raise MediaError(inp.path, "limit", f"more than {budget} packets in a {inp.duration:.1f} s "
                                        "file; its timestamps are probably broken")
