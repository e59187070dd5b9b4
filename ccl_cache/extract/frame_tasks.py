"""The frame cache's worker tasks (``ccl-cache cache-clips``): probe one clip, and decode and
encode one piece of a clip's frames.

They live apart from :mod:`ccl_cache.extract.frame_cache` so that a worker process (and the fork
server that preloads the module, :mod:`ccl_cache.workers`) imports only PyAV, Pillow, numpy and
the codecs: not the store's backends (zarr, h5py), which only the caller writes with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image  # noqa: F401 - the jpeg codec encodes with it: imported once, in the fork server

from ccl_cache import media
from ccl_cache.codecs import make_codec
from ccl_cache.errors import MediaError


def probe_row(args: tuple[int, str, float, float]) -> tuple[int, float, float, str]:
    """(row, fps, end, error) for one clip."""
    row, path, start, end = args
    try:
        info = media.probe(path)
        if info.video is None:
            return row, 0.0, 0.0, f"{path}: no video stream"
        fps = float(info.video.fps) if info.video.fps > 0 else 25.0
        return row, fps, (end if np.isfinite(end) else float(info.duration)), ""
    except MediaError as exc:
        return row, 0.0, 0.0, str(exc)


def decode_piece(args: tuple[int, int, str, np.ndarray, tuple[int, int], str, int | None]
                 ) -> tuple[int, int, Any, Any, Any, str]:
    """The frames displayed at ``times``, encoded by the codec (data, per-frame lengths), and their
    pts. Encoding here, in the worker, means only the codec's bytes cross the pipe to the caller."""
    row, first, path, times, size, codec, quality = args
    try:
        frames = media.read_frames(path, times, size=size)
        encoded = make_codec(codec, quality).encode(frames.frames)
        return row, first, encoded.data, encoded.lengths, np.asarray(frames.times, np.float64), ""
    except MediaError as exc:
        return row, first, None, None, None, str(exc)
