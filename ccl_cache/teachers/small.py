"""Small CPU teachers for tests, demos and training on small data with ``ccl-cache teach``.

They keep the interface and the embedding size of the paper's teachers (512-d, so the CCL
composition layer has the paper's 1024 -> 512 shape) at a fraction of the cost:
``small_audio`` is four conv blocks on 64-bin log-mels at 16 kHz with PANNs-style pooling;
``small_image`` is four stride-2 conv blocks on 64x64 frames with global average pooling.
Both embeddings are non-negative (post-ReLU), like the ResNet and CNN14 features. They start
random: train them with ``ccl-cache teach`` (which adds a linear classification head).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ccl_cache.teachers.base import AUDIO, IMAGE, Teacher, image_preprocess, register_teacher
from ccl_cache.teachers.panns import AudioTeacher, LogMel

SMALL_DIM = 512
SMALL_AUDIO_RATE = 16000
SMALL_IMAGE_SIZE = 64


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallAudioNet(nn.Module):
    """Log-mel (B, 1, T, 64) -> (B, dim): bn0 over mel bins, 4 x (conv, 2x2 avg pool), max+mean over time."""

    def __init__(self, dim: int = SMALL_DIM, mel_bins: int = 64) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(mel_bins)
        widths = (1, 32, 64, 128, dim)
        self.blocks = nn.ModuleList(conv_bn_relu(widths[i], widths[i + 1]) for i in range(4))

    def forward(self, logmel: Tensor) -> Tensor:
        x = self.bn0(logmel.transpose(1, 3)).transpose(1, 3)
        for block in self.blocks:
            x = F.avg_pool2d(block(x), kernel_size=2)
        x = x.mean(dim=3)  # over frequency
        return x.max(dim=2).values + x.mean(dim=2)  # over time, as PANNs does


class SmallImageNet(nn.Module):
    """RGB (B, 3, S, S) -> (B, dim): 4 stride-2 conv blocks, global average pooling."""

    def __init__(self, dim: int = SMALL_DIM) -> None:
        super().__init__()
        widths = (3, 32, 64, 128, dim)
        self.features = nn.Sequential(*(conv_bn_relu(widths[i], widths[i + 1], stride=2) for i in range(4)))

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images).mean(dim=(2, 3))


@register_teacher("small_audio", AUDIO)
def build_small_audio(dim: int = SMALL_DIM) -> AudioTeacher:
    """Small 16 kHz log-mel CNN, ``dim``-d embedding (default 512)."""
    hop = 160
    return AudioTeacher(
        name="small_audio", arch="small_audio",
        frontend=LogMel(SMALL_AUDIO_RATE, 512, hop, 64, 50.0, 8000.0),
        backbone=SmallAudioNet(dim), dim=dim, sample_rate=SMALL_AUDIO_RATE,
        min_samples=16 * hop,  # four 2x time poolings need at least 16 STFT frames
    )  # fmt: skip


@register_teacher("small_image", IMAGE)
def build_small_image(dim: int = SMALL_DIM, image_size: int = SMALL_IMAGE_SIZE) -> Teacher:
    """Small frame CNN, ``dim``-d embedding (default 512) at ``image_size`` (default 64)."""
    return Teacher(
        name="small_image", arch="small_image", backbone=SmallImageNet(dim), dim=dim,
        preprocess=image_preprocess(image_size),
    )  # fmt: skip
