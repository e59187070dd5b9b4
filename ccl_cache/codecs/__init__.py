"""Frame codecs of the training frame cache: how ``ccl-cache cache-clips`` keeps each frame.

:data:`FRAME_CODECS` (a :class:`~ccl_cache.registry.Registry`) maps a name to a
:class:`FrameCodec`; ``cache-clips --codec`` offers its names and the frame cache tests are
parametrised over it. A codec is one file in this package registering itself: every module here
is imported (and so registered) with the package.

- ``"raw"``: uint8 pixels, lossless; 128×171 frames take 65.7 kB each.
- ``"jpeg"`` (the default, :data:`DEFAULT_CODEC`): baseline JPEG at ``quality`` (default 75),
  chosen with ``benchmarks/bench_frame_cache.py`` (docs/performance.md, "VGGSound on one node:
  the training cache"): the smallest cache that still reads far faster than the original files.

This package imports no torch (the cache's worker processes encode with it); decoding imports
torch and torchvision when called.
"""

from __future__ import annotations

import importlib
import pkgutil

from ccl_cache.codecs.base import FRAME_CODECS, LAYOUTS, Encoded, FrameCodec, make_codec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # each codec module registers itself

DEFAULT_CODEC = "jpeg"

__all__ = ["DEFAULT_CODEC", "FRAME_CODECS", "LAYOUTS", "Encoded", "FrameCodec", "make_codec"]
