"""Reading a keyframe near each asked time (:func:`read_keyframes`): one pass that decodes keyframes
only, and the in-order assignment of keyframes to times."""

from __future__ import annotations

import collections
import logging
import math
import os
from typing import Sequence

from ccl_cache.errors import MediaError
from ccl_cache.media.checks import _asked_times, _check_size, _past_end, _sorted_times
from ccl_cache.media.container import _Input, _open_input
from ccl_cache.media.decoder import _Decoded, _Decoder, _VideoDecoder
from ccl_cache.media.info import _EPS, END_TOLERANCE_S, DecodeLimits, Frames
from ccl_cache.media.streams import _tag_rotation, _video_end, _video_stream
from ccl_cache.media.video import _Converter, _finish, _frames_at, _in_asked_order

log = logging.getLogger(__name__)


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
