"""Choosing a file's video/audio stream and reading what its header says: frame and packet rates,
where the video claims to end, display rotation."""

from __future__ import annotations

import av

from ccl_cache.errors import MediaError, NoAudioError
from ccl_cache.media.container import _Input, _stream_end


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


def _packet_rate(stream: av.stream.Stream) -> float:
    """Packets per second to budget for (an overestimate is harmless: it only bounds loops)."""
    if stream.type == "video":
        return max(_video_rate(stream), 30.0)
    ctx = stream.codec_context
    rate = float(ctx.sample_rate or 48000) if ctx is not None else 48000.0
    frame_size = (ctx.frame_size if ctx is not None else 0) or 256  # PCM: no fixed frame size
    return max(rate / frame_size, 50.0)
