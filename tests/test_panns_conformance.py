"""Our CNN14 (torchaudio front end) must compute what PANNs' own Cnn14 computes.

The reference is the `panns-inference` package (test-only dependency, [dev] extra), built with
seeded random weights and randomised BatchNorm statistics so that every tensor's mapping is
exercised. Its state dict is loaded into our teacher directly and through a weights file.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ccl_cache.errors import TeacherError
from ccl_cache.teachers import build_teacher
from ccl_cache.teachers.weights import load_state

PANNS_ARGS = dict(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000)


@pytest.fixture(scope="module")
def panns_models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Import panns_inference.models without its label-CSV download.

    panns_inference's config reads ~/panns_data/class_labels_indices.csv at import and shells
    out to wget when it is missing; pointing HOME at a folder holding that file (header and one
    row) keeps the import offline and fast.
    """
    if "panns_inference.models" in sys.modules:
        return sys.modules["panns_inference.models"]
    home = tmp_path_factory.mktemp("home")
    (home / "panns_data").mkdir()
    (home / "panns_data" / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("MPLBACKEND", "Agg")
        try:
            return importlib.import_module("panns_inference.models")
        except ImportError as exc:
            # A [dev] dependency: its absence must fail the conformance check, not skip it.
            pytest.fail(f"panns_inference cannot be imported ({exc}); install the project with .[dev]")


def make_waves(batch: int, samples: int, seed: int) -> torch.Tensor:
    """Rows that differ in loudness and spectrum: tones of several pitches over noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 32000.0
    rows = []
    for i in range(batch):
        freq = 200.0 * (1 + 3 * i + torch.rand(1, generator=gen).item())
        noise = torch.randn(samples, generator=gen)
        rows.append((0.5 / (1 + i)) * torch.sin(2 * torch.pi * freq * t) + 0.02 * (1 + i) * noise)
    return torch.stack(rows)


def reference_cnn14(models: Any, emb_dim: int, seed: int) -> nn.Module:
    """PANNs Cnn14 with random weights; emb_dim=512 gives Cnn14_emb512's layout (fc1 2048->512).

    Plain random init makes CNN14's output nearly independent of its input (BatchNorm
    statistics that do not fit the activations); calibrating the running statistics on a few
    waveforms makes every layer pass the signal on, so a front-end mismatch would show.
    """
    torch.manual_seed(seed)
    model = models.Cnn14(classes_num=527, **PANNS_ARGS)
    if emb_dim != 2048:
        # audioset_tagging_cnn's Cnn14_emb512 is Cnn14 with these two layers narrowed.
        model.fc1 = nn.Linear(2048, emb_dim)
        model.fc_audioset = nn.Linear(emb_dim, 527)
    model.eval()  # no dropout, no SpecAugment: only the BatchNorms learn their statistics
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
            module.train()
    with torch.no_grad():
        for i in range(2):
            model(make_waves(4, 16000, seed=100 + i))
    return model.eval()

def quiet_build(name: str, weights: Any = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_teacher(name, weights)


def assert_close_to_reference(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    # The comparison only means something if the reference reacts to its input.
    assert (ref[0] - ref[1]).abs().max().item() > 0.05 * scale, "reference ignores its input"
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4 * scale + 1e-5, f"max abs error {err:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("name,emb_dim", [pytest.param("cnn14", 2048, marks=pytest.mark.slow), ("cnn14_emb512", 512)])
def test_same_embedding_as_panns(panns_models: Any, name: str, emb_dim: int) -> None:
    ref_model = reference_cnn14(panns_models, emb_dim, seed=3)
    wave = make_waves(2, 32000, seed=7)
    with torch.no_grad():
        ref = ref_model(wave)["embedding"]
    teacher = quiet_build(name)
    load_state(teacher, ref_model.state_dict(), "panns reference")
    with torch.no_grad():
        ours = teacher(wave)
    assert_close_to_reference(ours, ref)
    assert teacher.dim == emb_dim


def test_released_file_layout_loads_by_path(panns_models: Any, tmp_path: Path) -> None:
    """PANNs releases save {"model": state_dict, ...}; the path loader must accept that."""
    ref_model = reference_cnn14(panns_models, 2048, seed=11)
    path = tmp_path / "Cnn14_mAP=0.431.pth"
    torch.save({"model": ref_model.state_dict(), "iteration": 0}, path)
    teacher = quiet_build("cnn14", path)
    wave = make_waves(2, 20000, seed=5)
    with torch.no_grad():
        assert_close_to_reference(teacher(wave), ref_model(wave)["embedding"])
    assert len(teacher.weights) == 64 and teacher.weights != "random"  # the file's sha256


def test_other_front_end_is_refused(panns_models: Any, tmp_path: Path) -> None:
    """A checkpoint whose mel filterbank differs (e.g. a 16 kHz model) must not load silently."""
    torch.manual_seed(0)
    other = panns_models.Cnn14(classes_num=527, **dict(PANNS_ARGS, sample_rate=16000, fmax=8000))
    path = tmp_path / "cnn14_16k.pth"
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(TeacherError, match="front end"):
        quiet_build("cnn14", path)
