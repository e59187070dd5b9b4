"""Audio teachers: PANNs CNN14 (Kong et al., "PANNs: Large-Scale Pretrained Audio Neural
Networks for Audio Pattern Recognition", TASLP 2020), as used by Chen et al. (CVPR 2021).

``cnn14`` is ``Cnn14`` (embedding = ReLU(fc1) output, 2048-d); ``cnn14_emb512`` is the PANNs
``Cnn14_emb512`` variant (fc1: 2048 -> 512), the audio teacher of the CCL paper. Both follow
``audioset_tagging_cnn/pytorch/models.py``: 32 kHz mono; STFT n_fft = window = 1024, hop 320,
Hann window, centred with reflect padding; power spectrogram; 64 Slaney mel bins in
[50, 14000] Hz with Slaney area normalisation (librosa's defaults, used by torchlibrosa);
10*log10(max(power, 1e-10)) with ref 1.0 and no top_db; BatchNorm over the mel bins (bn0);
six conv blocks; mean over frequency; max + mean over time; fc1 + ReLU.

Released checkpoints (Zenodo record 3987831: ``Cnn14_mAP=0.431.pth``,
``Cnn14_emb512_mAP=0.420.pth``) store ``{"model": state_dict}`` with the same key names as our
backbone; their front-end tensors (``spectrogram_extractor.*``, ``logmel_extractor.*``) and the
AudioSet classifier (``fc_audioset.*``) are not needed: the mel filterbank is checked against
ours, the rest is ignored. Training-time SpecAugment is not reproduced (embeddings are
computed in eval mode, where PANNs does not apply it either).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.transforms import MelSpectrogram

from ccl_cache.errors import TeacherError
from ccl_cache.teachers.base import AUDIO, Preprocess, Teacher, pad_to_min, register_teacher

ZENODO = "https://zenodo.org/record/3987831"
RELEASED_FILES = {"cnn14": "Cnn14_mAP=0.431.pth", "cnn14_emb512": "Cnn14_emb512_mAP=0.420.pth"}


class LogMel(nn.Module):
    """Waveform (B, S) -> log-mel power (B, 1, T, M) in dB, matching torchlibrosa/librosa."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int, fmin: float, fmax: float) -> None:
        super().__init__()
        self.amin = 1e-10
        self.mel = MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop,
            f_min=fmin, f_max=fmax, n_mels=n_mels, window_fn=torch.hann_window, power=2.0,
            center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney",
        )  # fmt: skip
        self.settings = {
            "n_fft": n_fft, "win_length": n_fft, "hop_length": hop, "window": "hann",
            "center": True, "pad_mode": "reflect", "power": 2.0, "n_mels": n_mels,
            "fmin": fmin, "fmax": fmax, "mel_scale": "slaney", "mel_norm": "slaney",
            "log": "10*log10(max(x, 1e-10)), ref 1.0, top_db None",
        }  # fmt: skip

    @property
    def filterbank(self) -> Tensor:
        """(n_fft // 2 + 1, n_mels), the layout of torchlibrosa's ``melW``."""
        return self.mel.mel_scale.fb

    def forward(self, wave: Tensor) -> Tensor:
        power = self.mel(wave)  # (B, M, T)
        return (10.0 * torch.log10(torch.clamp(power, min=self.amin))).transpose(1, 2).unsqueeze(1)


def init_layer(layer: nn.Module) -> None:
    """PANNs initialisation: Xavier-uniform weights, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def init_bn(bn: nn.Module) -> None:
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)


class ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then average pooling (PANNs ``ConvBlock``, key names kept)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            init_layer(conv)
        for bn in (self.bn1, self.bn2):
            init_bn(bn)

    def forward(self, x: Tensor, pool: tuple[int, int]) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool)


class Cnn14Backbone(nn.Module):
    """PANNs CNN14 from log-mel (B, 1, T, 64) to the ReLU(fc1) embedding (B, emb_dim)."""

    POOLS = ((2, 2),) * 5 + ((1, 1),)

    def __init__(self, emb_dim: int = 2048, mel_bins: int = 64) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(mel_bins)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, emb_dim, bias=True)
        init_bn(self.bn0)
        init_layer(self.fc1)

    def forward(self, logmel: Tensor) -> Tensor:
        # BatchNorm over mel bins: put the mel axis in the channel position and back.
        x = self.bn0(logmel.transpose(1, 3)).transpose(1, 3)
        for i, pool in enumerate(self.POOLS):
            x = getattr(self, f"conv_block{i + 1}")(x, pool)
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # over frequency
        x = x.max(dim=2).values + x.mean(dim=2)  # over time
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))


class AudioTeacher(Teacher):
    """A log-mel front end (fixed, outside the weights) followed by a trainable backbone."""

    def __init__(self, *, name: str, arch: str, frontend: LogMel, backbone: nn.Module, dim: int,
                 sample_rate: int, min_samples: int, ignore_prefixes: tuple[str, ...] = ()) -> None:
        extra = dict(frontend.settings, min_samples=min_samples, channels="mono")
        pre = Preprocess(modality=AUDIO, sample_rate=sample_rate, extra=extra)
        super().__init__(name=name, arch=arch, backbone=backbone, dim=dim, preprocess=pre,
                         ignore_prefixes=ignore_prefixes)  # fmt: skip
        self.frontend = frontend
        self.min_samples = min_samples

    def forward(self, wave: Tensor) -> Tensor:
        """(B, S) float waveform -> (B, dim); clips shorter than ``min_samples`` are zero-padded."""
        if wave.ndim != 2:
            raise TeacherError(f"{self.name}: expected a (B, S) waveform batch, got {tuple(wave.shape)}")
        return self.backbone(self.frontend(pad_to_min(wave, self.min_samples)))


class PannsTeacher(AudioTeacher):
    """CNN14 at 32 kHz with PANNs' exact front end; loads released PANNs checkpoints."""

    def __init__(self, arch: str, emb_dim: int) -> None:
        hop = 320
        super().__init__(
            name=arch, arch=arch, frontend=LogMel(32000, 1024, hop, 64, 50.0, 14000.0),
            backbone=Cnn14Backbone(emb_dim), dim=emb_dim, sample_rate=32000,
            # five 2x time poolings need at least 32 STFT frames
            min_samples=32 * hop,
            ignore_prefixes=("spectrogram_extractor.", "logmel_extractor.", "fc_audioset.", "spec_augmenter."),
        )  # fmt: skip

    def check_state(self, state: dict[str, Tensor], source: str) -> None:
        """A PANNs file's mel filterbank must equal ours: otherwise its front end differs."""
        melw = state.get("logmel_extractor.melW")
        if melw is None:
            return
        ours = self.frontend.filterbank.detach().cpu()
        scale = float(ours.abs().max())
        if melw.shape != ours.shape or not np.allclose(melw.numpy(), ours.numpy(), atol=1e-4 * scale):
            raise TeacherError(
                f"{source}: its log-mel front end (logmel_extractor.melW {tuple(melw.shape)}) differs "
                f"from {self.name}'s (32 kHz, 1024-point FFT, 64 mel bins, 50-14000 Hz); it was "
                "trained for another sample rate or mel setting (e.g. Cnn14_16k), which this teacher "
                "does not implement"
            )

    def pretrained_state(self, tag: str) -> tuple[dict[str, Tensor], str]:
        raise TeacherError(
            f"teacher {self.name!r} has no automatic download (weights {tag!r}): download "
            f"{RELEASED_FILES[self.arch]} from the PANNs release {ZENODO} and pass its path "
            "(--audio-weights PATH / build_teacher(name, weights=PATH)), or 'none' for random weights"
        )


@register_teacher("cnn14", AUDIO)
def build_cnn14() -> PannsTeacher:
    """PANNs Cnn14, 2048-d embedding (ReLU(fc1))."""
    return PannsTeacher("cnn14", 2048)


@register_teacher("cnn14_emb512", AUDIO)
def build_cnn14_emb512() -> PannsTeacher:
    """PANNs Cnn14_emb512 (fc1: 2048 -> 512), the CCL paper's audio teacher."""
    return PannsTeacher("cnn14_emb512", 512)
