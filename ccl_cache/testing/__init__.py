"""Helpers for tests and examples: real media files written with PyAV (no fixtures on disk).

``ccl_cache.testing.media_gen`` writes small videos whose frames encode their own index, sines of
known frequency, and every odd or broken file the media room must survive (``make_case``).
"""

from ccl_cache.testing.media_gen import (
    CASES,
    COLOUR_PATCH_RGB,
    MARKER_RGB,
    decode_index,
    index_frame,
    index_frames,
    make_case,
    sine,
    write_audio,
    write_video,
)

__all__ = [
    "CASES",
    "COLOUR_PATCH_RGB",
    "MARKER_RGB",
    "decode_index",
    "index_frame",
    "index_frames",
    "make_case",
    "sine",
    "write_audio",
    "write_video",
]
