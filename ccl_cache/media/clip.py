"""Reading a clip (:func:`read_clip`): consecutive decoded frames, every ``stride``-th, from a start
time, padded or refused where the video ends first."""

from __future__ import annotations

import os

import numpy as np

from ccl_cache.errors import MediaError
from ccl_cache.media.checks import _check_size, _check_time, _past_end, _positive_int
from ccl_cache.media.container import _open_input
from ccl_cache.media.decoder import _Decoded, _VideoDecoder
from ccl_cache.media.info import _EPS, END_TOLERANCE_S, DecodeLimits, Frames
from ccl_cache.media.streams import _tag_rotation, _video_end, _video_stream
from ccl_cache.media.video import _Converter, _finish


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
