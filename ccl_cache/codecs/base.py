"""The frame codec contract: how the training frame cache keeps a frame on disk.

A codec turns a piece of decoded frames (uint8 (n, H, W, 3)) into what the store keeps, at cache
time in the frame cache's worker processes (numpy and Pillow there, never torch), and back into
pixels at training time. Its :attr:`FrameCodec.layout` says where the store keeps them:

* ``"pixels"``: every frame is its H×W×3 bytes, one row of ``/frames/data`` (F, H, W, 3);
* ``"bytes"``: every frame is a variable-length byte string, appended to the byte segments
  ``/frames/encoded/<k>`` and located by ``/frames/encoded_index`` (F, 3) = (segment, start, length).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from ccl_cache.errors import ConfigError
from ccl_cache.registry import Registry

if TYPE_CHECKING:
    import torch

LAYOUTS = ("pixels", "bytes")


@dataclass(frozen=True)
class Encoded:
    """A piece of encoded frames: ``data`` is the pixels (n, H, W, 3) for the ``"pixels"`` layout
    and the frames' bytes back to back (1-D uint8) for ``"bytes"``; ``lengths`` (n,) the bytes of
    each frame."""

    data: np.ndarray
    lengths: np.ndarray


class FrameCodec(ABC):
    """One way of keeping cached frames (register subclasses in :data:`FRAME_CODECS`).

    ``quality``: the codec's quality setting (``None`` = its :attr:`default_quality`); a codec
    without one (``default_quality is None``) refuses a value.
    """

    name: ClassVar[str]
    layout: ClassVar[str]  # "pixels" or "bytes" (see the module docstring)
    lossless: ClassVar[bool]
    default_quality: ClassVar[int | None] = None
    quality_range: ClassVar[tuple[int, int]] = (1, 100)

    def __init__(self, quality: int | None = None) -> None:
        if quality is not None and self.default_quality is None:
            raise ConfigError(f"frame codec {self.name!r} has no quality setting (got quality={quality}); "
                              f"drop --quality, or choose a lossy codec ({', '.join(_lossy())})")
        self.quality = self.default_quality if quality is None else int(quality)
        low, high = self.quality_range
        if self.quality is not None and not low <= self.quality <= high:
            raise ConfigError(f"frame codec {self.name!r}: quality={self.quality} is outside {low}..{high}")

    def identity(self) -> dict[str, Any]:
        """What a cache records and a resumed build must agree on."""
        return {"codec": self.name, "quality": self.quality}

    @abstractmethod
    def bytes_per_frame(self, size: tuple[int, int]) -> int:
        """Disk bytes one (H, W) frame is expected to take (free-space checks, segment sizes):
        a generous estimate for content hard to compress, not a bound."""

    @abstractmethod
    def encode(self, frames: np.ndarray) -> Encoded:
        """``frames`` uint8 (n, H, W, 3) as the store keeps them; runs in worker processes."""

    @abstractmethod
    def decode(self, payloads: Sequence[np.ndarray], size: tuple[int, int], device: Any = "cpu") -> "torch.Tensor":
        """uint8 (n, H, W, 3) on ``device`` from the payloads of n frames (each what ``encode``
        kept of one frame: its (H, W, 3) pixels or its 1-D bytes, as a numpy array or a CPU uint8
        tensor, e.g. a view of a batch's pinned bytes)."""


FRAME_CODECS: Registry[type[FrameCodec]] = Registry("frame codec")


def _lossy() -> list[str]:
    return [n for n in FRAME_CODECS.names() if FRAME_CODECS.get(n).default_quality is not None]


def make_codec(name: str, quality: int | None = None) -> FrameCodec:
    """The registered codec ``name`` at ``quality`` (ConfigError for an unknown name or a bad quality)."""
    codec = FRAME_CODECS.get(name)(quality)
    if codec.layout not in LAYOUTS:
        raise ConfigError(f"frame codec {name!r} declares layout {codec.layout!r}; expected one of {LAYOUTS}")
    return codec
