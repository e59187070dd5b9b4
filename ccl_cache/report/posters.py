"""Poster frames: the frame a video tile starts on, embedded in the page as a small JPEG data URI.

A browser shows a ``<video>``'s first frame only once it has loaded and decoded it, which some
(headless ones, or any with many players on a page) do late or not at all before playback; with
a poster every tile shows its picture at once, and still does where the browser cannot decode
the codec. The poster is the frame displayed at the window's start (the file's first frame
without a window), shorter side at most :data:`POSTER_SIDE` pixels.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

from ccl_cache.errors import CclCacheError
from ccl_cache.report.model import MediaItem

POSTER_SIDE = 192  # pixels of the shorter side (the tile's width); smaller videos are not enlarged
POSTER_QUALITY = 80  # JPEG quality: a few KB per poster


@dataclass
class Posters:
    """Poster data URIs of one page, each frame decoded once."""

    done: dict[tuple[str, float], str | None] = field(default_factory=dict)

    def uri(self, item: MediaItem) -> str | None:
        """``data:image/jpeg;base64,...`` of ``item``'s first frame, or None when it cannot be decoded."""
        key = (item.path, item.start or 0.0)
        if key not in self.done:
            self.done[key] = self._make(item)
        return self.done[key]

    def _make(self, item: MediaItem) -> str | None:
        from PIL import Image

        from ccl_cache import media
        from ccl_cache.extract.decode import frame_size

        try:
            info = media.probe(item.path)
            if info.video is None:
                return None
            side = min(POSTER_SIDE, info.video.width, info.video.height)
            frame = media.read_frames(item.path, [item.start or 0.0], size=frame_size(info, side)).frames[0]
        except (CclCacheError, OSError, ValueError):  # no poster: the player still shows what the browser decodes
            return None
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=POSTER_QUALITY)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
