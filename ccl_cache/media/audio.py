"""Reading an audio window (:func:`read_audio`): mono float32 at a chosen rate, aligned to the
window by timestamp, zeros where the audio stream does not reach."""

from __future__ import annotations

import logging
import math
import os

import av
import numpy as np

from ccl_cache.errors import MediaError
from ccl_cache.media.checks import _positive_int
from ccl_cache.media.container import _Input, _open_input
from ccl_cache.media.decoder import _Decoder
from ccl_cache.media.info import _EPS, AUDIO_PREROLL_S, END_TOLERANCE_S, DecodeLimits
from ccl_cache.media.streams import _audio_stream, _packet_rate

log = logging.getLogger(__name__)


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
