"""``jpeg``: each frame a baseline JPEG (4:2:0, optimised Huffman tables), encoded with Pillow at
cache time and decoded with ``torchvision.io.decode_jpeg`` at training time: libjpeg-turbo on the
CPU; with ``device="cuda"`` one call decodes a whole list of frames with nvJPEG."""

from __future__ import annotations

import io
import warnings
from typing import Any, Sequence

import numpy as np

from ccl_cache.codecs.base import FRAME_CODECS, Encoded, FrameCodec
from ccl_cache.errors import StoreError

# JPEG bytes per raw pixel byte against quality, measured at 128x171 on the textured, noisy 360p
# content of benchmarks/bench_frame_cache.py (hard to compress: real video is usually smaller).
_MEASURED_FRACTION = ((10, 0.022), (50, 0.056), (75, 0.081), (90, 0.131), (95, 0.178), (100, 0.319))
_HEADER_BYTES = 640  # markers, quantisation and Huffman tables of one frame
_MARGIN = 1.25


@FRAME_CODECS.register("jpeg")
class JpegCodec(FrameCodec):
    name = "jpeg"
    layout = "bytes"
    lossless = False
    default_quality = 75

    def bytes_per_frame(self, size: tuple[int, int]) -> int:
        qualities, fractions = zip(*_MEASURED_FRACTION)
        fraction = float(np.interp(self.quality, qualities, fractions))
        return int(_HEADER_BYTES + _MARGIN * fraction * size[0] * size[1] * 3)

    def encode(self, frames: np.ndarray) -> Encoded:
        from PIL import Image

        pieces = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="JPEG", quality=self.quality,
                                                              optimize=True, subsampling="4:2:0")
            pieces.append(buffer.getvalue())
        lengths = np.array([len(p) for p in pieces], np.int64)
        return Encoded(np.frombuffer(b"".join(pieces), np.uint8).copy(), lengths)

    def decode(self, payloads: Sequence[np.ndarray], size: tuple[int, int], device: Any = "cpu") -> Any:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        if not payloads:
            return torch.zeros((0, *size, 3), dtype=torch.uint8, device=device)
        data = [p if isinstance(p, torch.Tensor) else torch.from_numpy(p if p.flags.writeable else p.copy())
                for p in payloads]
        try:
            with warnings.catch_warnings():
                # torchvision >= 0.29 warns on every call that its image codecs move to TorchCodec;
                # decode_jpeg still works, and a warning per training window would flood the log.
                warnings.simplefilter("ignore", DeprecationWarning)
                images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            raise StoreError(f"a cached JPEG frame does not decode ({exc}); the frame cache is damaged: rebuild "
                             "it with `ccl-cache cache-clips STORE --overwrite`") from exc
        # The decoder's (3, H, W) images are views of interleaved (H, W, 3) memory: stacking them
        # as such is a plain copy (stacking the views is a strided one, ~10x slower).
        frames = torch.stack([image.permute(1, 2, 0) for image in images])
        if tuple(frames.shape[1:3]) != tuple(size):
            raise StoreError(f"cached JPEG frames are {tuple(frames.shape[1:3])}, the cache records {tuple(size)}; "
                             "rebuild it with `ccl-cache cache-clips STORE --overwrite`")
        return frames
