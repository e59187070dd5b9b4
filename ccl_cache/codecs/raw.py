"""``raw``: frames kept as their uint8 pixels (lossless, the fastest to read, the largest)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ccl_cache.codecs.base import FRAME_CODECS, Encoded, FrameCodec


@FRAME_CODECS.register("raw")
class RawCodec(FrameCodec):
    name = "raw"
    layout = "pixels"
    lossless = True

    def bytes_per_frame(self, size: tuple[int, int]) -> int:
        return size[0] * size[1] * 3

    def encode(self, frames: np.ndarray) -> Encoded:
        n = len(frames)
        return Encoded(frames, np.full(n, frames[0].nbytes if n else 0, np.int64))

    def decode(self, payloads: Sequence[np.ndarray], size: tuple[int, int], device: Any = "cpu") -> Any:
        import torch

        pixels = np.stack([np.asarray(p).reshape(*size, 3) for p in payloads]) if payloads else \
            np.zeros((0, *size, 3), np.uint8)
        return torch.from_numpy(pixels).to(device)
