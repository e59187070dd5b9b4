"""Checks of what a reader call asks for: positive counts, output sizes, times inside the video,
and the "window" error for a time past where the decodable video stops."""

from __future__ import annotations

import math
import operator
from typing import Sequence

import numpy as np

from ccl_cache.errors import ConfigError, MediaError
from ccl_cache.media.container import _Input
from ccl_cache.media.info import _EPS, END_TOLERANCE_S


def _positive_int(value: object, what: str) -> int:
    """``value`` as an int > 0 (numpy integers welcome; bools and floats are mistakes)."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if isinstance(value, bool) or number <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return number


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
