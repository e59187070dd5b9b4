"""Reading the frames shown at given times (:func:`read_frames`): one forward pass over sorted
times, frames converted to displayed RGB with one reused swscale context per call."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ccl_cache.media.checks import _asked_times, _check_size, _past_end, _sorted_times
from ccl_cache.media.container import _Input, _open_input
from ccl_cache.media.decoder import _Decoded, _Decoder, _VideoDecoder
from ccl_cache.media.info import _EPS, END_TOLERANCE_S, DecodeLimits, Frames
from ccl_cache.media.streams import _display_rotation, _tag_rotation, _video_end, _video_stream

log = logging.getLogger(__name__)


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


def _finish(inp: _Input, arrays: np.ndarray, stamps: np.ndarray, *decoders: _Decoder) -> Frames:
    """The call's result, with the problems and decoded frames of every decoder it used."""
    problems = sum(d.problems for d in decoders)
    if problems:
        log.warning("%s: %d video packets/frames failed to decode cleanly", inp.path, problems)
    return Frames(frames=arrays, times=stamps, decode_errors=problems,
                  decoded_frames=sum(d.decoded for d in decoders))
