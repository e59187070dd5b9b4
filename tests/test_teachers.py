"""The teacher registry, preprocessing, weight loading paths, fingerprints and user factories."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import urllib.error
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ccl_cache.errors import ConfigError, TeacherError
from ccl_cache.teachers import TEACHERS, Preprocess, Teacher, build_teacher, teacher_modality, teacher_names
from ccl_cache.teachers.base import IMAGENET_MEAN, IMAGENET_STD

# Tiny inputs keep the big teachers (resnet50, cnn14) cheap on CPU.
TINY_IMAGE_SIZE = 32


def build_random(name: str, **options: Any) -> Teacher:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_teacher(name, None, **options)


def tiny_input(teacher: Teacher) -> torch.Tensor:
    rng = np.random.default_rng(0)
    if teacher.modality == "audio":
        rate = teacher.preprocess.sample_rate
        waves = [teacher.prepare((0.1 * rng.standard_normal(rate // 4)).astype(np.float32)) for _ in range(2)]
        return torch.stack(waves)
    frames = rng.integers(0, 256, size=(2, 40, 56, 3), dtype=np.uint8)
    return teacher.prepare(frames)


@pytest.mark.parametrize("name", TEACHERS.names())
def test_registered_teacher_maps_prepared_input_to_embeddings(name: str) -> None:
    options = {"image_size": TINY_IMAGE_SIZE} if teacher_modality(name) == "image" else {}
    teacher = build_random(name, **options)
    assert not teacher.training and teacher.weights == "random"
    x = tiny_input(teacher)
    with torch.no_grad():
        emb = teacher(x)
    assert emb.shape == (2, teacher.dim)
    assert torch.isfinite(emb).all()
    fp = teacher.fingerprint()
    assert json.loads(json.dumps(fp)) == fp  # stored as JSON and compared after a round trip
    assert fp["arch"] == name and fp["modality"] == teacher_modality(name) and fp["dim"] == teacher.dim


def test_registry_covers_the_contract_and_filters_by_modality() -> None:
    assert set(TEACHERS.names()) >= {"resnet18", "resnet34", "resnet50", "cnn14", "cnn14_emb512", "small_audio", "small_image"}
    assert set(teacher_names("audio")) == {"cnn14", "cnn14_emb512", "small_audio"}
    assert set(teacher_names("image")) == {"resnet18", "resnet34", "resnet50", "small_image"}
    with pytest.raises(ConfigError, match="unknown teacher 'resnet99'"):
        build_teacher("resnet99", None)


def test_expected_dimensions() -> None:
    dims = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "cnn14": 2048, "cnn14_emb512": 512}
    for name, dim in dims.items():
        assert build_random(name).dim == dim
    assert build_random("small_audio").dim == 512 and build_random("small_image", dim=128).dim == 128


def test_random_weights_warn_loudly() -> None:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        teacher = build_teacher("small_image", "none")
    assert teacher.weights == "random"


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not take options"):
        build_random("cnn14", image_size=64)


def test_image_prepare_resizes_crops_and_normalises() -> None:
    teacher = build_random("small_image", image_size=48)
    frames = np.zeros((3, 60, 100, 3), dtype=np.uint8)
    frames[..., 0] = 255  # pure red
    x = teacher.prepare(frames)
    assert x.shape == (3, 3, 48, 48) and x.dtype == torch.float32
    expected = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1]]
    assert torch.allclose(x[:, 0], torch.full_like(x[:, 0], expected[0]), atol=1e-5)
    assert torch.allclose(x[:, 1], torch.full_like(x[:, 1], expected[1]), atol=1e-5)
    # Centre crop: a wide frame whose left/right thirds differ keeps only the middle.
    frames = np.zeros((1, 60, 180, 3), dtype=np.uint8)
    frames[:, :, 60:120] = 255
    cropped, white = teacher.prepare(frames), teacher.prepare(np.full((1, 60, 60, 3), 255, np.uint8))
    # the antialiasing filter blends the outermost columns with their black neighbours
    assert torch.allclose(cropped[..., 2:-2], white[..., 2:-2], atol=1e-4)
    assert cropped.shape == white.shape == (1, 3, 48, 48)
    # Frames already on a device stay there (meta stands in for a GPU: a CPU mean/std would clash).
    on_device = teacher.prepare(torch.from_numpy(frames).to("meta"))
    assert on_device.device.type == "meta" and on_device.shape == (1, 3, 48, 48)


def test_prepare_refuses_wrong_inputs() -> None:
    image, audio = build_random("small_image"), build_random("small_audio")
    with pytest.raises(TeacherError, match=r"uint8 RGB frames of shape \(K, H, W, 3\)"):
        image.prepare(np.zeros((2, 3, 32, 32), dtype=np.float32))
    with pytest.raises(TeacherError, match=r"mono float waveform of shape \(S,\)"):
        audio.prepare(np.zeros((2, 1600), dtype=np.float32))
    wave = audio.prepare(np.zeros(100, dtype=np.float64))
    assert wave.dtype == torch.float32 and wave.shape == (100,)
    with torch.no_grad():  # shorter than the network's pooling needs: padded, still one embedding
        assert audio(wave[None]).shape == (1, 512)


# ---------------------------------------------------------------- weight files


def test_state_dict_file_loads_and_fingerprint_records_its_sha(tmp_path: Path) -> None:
    source = build_random("small_image")
    path = tmp_path / "small.pth"
    torch.save(source.backbone.state_dict(), path)
    loaded = build_teacher("small_image", path)
    x = tiny_input(source)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source(x), atol=1e-6)
    from ccl_cache.fileio import sha256_file

    assert loaded.weights == sha256_file(path)
    assert loaded.fingerprint() != source.fingerprint()  # weights changed -> fingerprint changed
    assert {k: v for k, v in loaded.fingerprint().items() if k != "weights"} == {
        k: v for k, v in source.fingerprint().items() if k != "weights"
    }


def test_fingerprint_changes_with_preprocessing() -> None:
    assert build_random("resnet18", image_size=64).fingerprint() != build_random("resnet18").fingerprint()


def test_teach_checkpoint_layout_and_module_prefix_load(tmp_path: Path) -> None:
    source = build_random("small_audio")
    ckpt = {"format": "ccl-cache-teacher", "arch": "small_audio", "state_dict": source.backbone.state_dict(),
            "head_state_dict": {"weight": torch.zeros(3, 512)}, "classes": ["a", "b", "c"]}  # fmt: skip
    torch.save(ckpt, tmp_path / "teach.pt")
    loaded = build_teacher("small_audio", tmp_path / "teach.pt")
    ddp = {f"module.{k}": v for k, v in source.backbone.state_dict().items()}
    torch.save(ddp, tmp_path / "ddp.pt")
    loaded_ddp = build_teacher("small_audio", tmp_path / "ddp.pt")
    x = tiny_input(source)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source(x), atol=1e-6)
        assert torch.allclose(loaded_ddp(x), source(x), atol=1e-6)
    with pytest.raises(TeacherError, match="checkpoint for arch 'small_audio', not 'small_image'"):
        build_teacher("small_image", tmp_path / "teach.pt")


def test_mismatched_keys_are_listed(tmp_path: Path) -> None:
    state = build_random("resnet18").backbone.state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra_head.weight"] = torch.zeros(2)
    state["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(TeacherError) as info:
        build_teacher("resnet18", tmp_path / "bad.pth")
    message = str(info.value)
    assert "missing (1): layer1.0.conv1.weight" in message
    assert "unexpected (1): extra_head.weight" in message
    assert "shape mismatch (1): conv1.weight (8, 3, 7, 7) vs (64, 3, 7, 7)" in message


def test_imagenet_fc_is_ignored(tmp_path: Path) -> None:
    net = build_random("resnet18").backbone
    state = dict(net.state_dict(), **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / "with_fc.pth")
    assert build_teacher("resnet18", tmp_path / "with_fc.pth").dim == 512


class _RunsCode:
    """Unpickling this calls os.system: what a malicious "weights" file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with open(path, "rb") as fh:  # sanity: the payload is really in the file
        assert b"system" in fh.read()
    with pytest.raises(TeacherError, match="refused to load"):
        build_teacher("small_image", path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "weights,match",
    [
        ("missing/weights.pth", "not found"),
        ("nonexistent.pt", "not found"),
        ("imagenet", "no built-in weights 'imagenet'"),
    ],
)
def test_bad_weight_specs(weights: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match=match):
        build_teacher("small_image", weights)


def test_not_a_weights_file(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(TeacherError, match="not a readable PyTorch weights file"):
        build_teacher("small_image", tmp_path / "notes.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(TeacherError, match="expected a state dict"):
        build_teacher("small_image", tmp_path / "list.pth")


def test_panns_has_no_download_and_says_where_to_get_it() -> None:
    with pytest.raises(TeacherError, match=r"Cnn14_emb512_mAP=0\.420\.pth.*zenodo"):
        build_teacher("cnn14_emb512", "audioset")


def test_imagenet_download_failure_explains_the_offline_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def unreachable(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(TeacherError) as info:
        build_teacher("resnet34", "imagenet")
    message = str(info.value)
    assert "--image-weights PATH" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet34-b627a593.pth") in message


def test_imagenet_from_torch_hub_cache_works_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A weights file already in $TORCH_HOME/hub/checkpoints is used without any network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    source = build_random("resnet18")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    full = dict(source.backbone.state_dict(), **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(full, cache / "resnet18-f37072fd.pth")
    teacher = build_teacher("resnet18", "imagenet")
    assert teacher.weights == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
    x = tiny_input(source)
    with torch.no_grad():
        assert torch.allclose(teacher(x), source(x), atol=1e-6)
    with pytest.raises(TeacherError, match="unknown ImageNet weights 'IMAGENET9K'"):
        build_teacher("resnet18", "imagenet:IMAGENET9K")


# ---------------------------------------------------------------- user teachers

USER_MODULE = '''
import torch
from torch import nn
from ccl_cache.teachers import Preprocess, Teacher

PRE = Preprocess(modality="image", image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

class Pool(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.proj = nn.Linear(3, width)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))

def make_pair(width=6):
    return Pool(width), PRE

def make_teacher():
    t = Teacher(name="mine", arch="mine-v1", backbone=Pool(4), dim=4, preprocess=PRE)
    t.weights = "mine-v1-weights"
    return t

def make_random_teacher():
    return Teacher(name="rnd", arch="rnd", backbone=Pool(4), dim=4, preprocess=PRE)

def make_wrong():
    return 42

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "ccl_user_teachers_test"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_user_pair_factory_is_wrapped(user_module: str, tmp_path: Path) -> None:
    teacher = build_teacher(f"{user_module}:make_pair", None, width=5)
    assert teacher.dim == 5 and teacher.name == "make_pair" and teacher.arch == f"{user_module}:make_pair"
    assert teacher.weights == f"factory:{user_module}:make_pair"
    x = teacher.prepare(np.zeros((3, 20, 30, 3), dtype=np.uint8))
    assert x.shape == (3, 3, 16, 16) and teacher(x).shape == (3, 5)
    torch.save(teacher.backbone.state_dict(), tmp_path / "user.pth")
    reloaded = build_teacher(f"{user_module}:make_pair", tmp_path / "user.pth", width=5)
    assert len(reloaded.weights) == 64
    with torch.no_grad():
        assert torch.allclose(reloaded(x), teacher(x))


def test_user_teacher_factory_keeps_its_weights_label(user_module: str) -> None:
    teacher = build_teacher(f"{user_module}:make_teacher", None)
    assert teacher.name == "mine" and teacher.weights == "mine-v1-weights"
    with pytest.warns(UserWarning, match="RANDOM"):
        assert build_teacher(f"{user_module}:make_random_teacher", None).weights == "random"


@pytest.mark.parametrize(
    "spec,match",
    [
        ("no_such_pkg_xyz.mod:make", "cannot import module 'no_such_pkg_xyz.mod'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", "not a callable factory"),
        ("{mod}:make_wrong", "returned int; expected a Teacher or"),
        (":make", "expected 'package.module:callable'"),
    ],
)
def test_user_spec_errors(user_module: str, spec: str, match: str) -> None:
    with pytest.raises(TeacherError, match=match):
        build_teacher(spec.format(mod=user_module), None)


def test_preprocess_validation() -> None:
    with pytest.raises(TeacherError, match="sample_rate"):
        Preprocess(modality="audio")
    with pytest.raises(TeacherError, match="modality"):
        Preprocess(modality="video", sample_rate=1)
    with pytest.raises(TeacherError, match="3 values"):
        Preprocess(modality="image", image_size=8, mean=(0.5,), std=(1.0, 1.0, 1.0))


def test_teacher_serves_as_a_plain_module() -> None:
    """Teachers move and batch like any nn.Module (extraction relies on .to/.eval)."""
    teacher = build_random("small_image").to(torch.float64)
    x = tiny_input(teacher).to(torch.float64)
    with torch.no_grad():
        assert teacher(x).dtype == torch.float64
    assert isinstance(teacher, nn.Module)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["small_audio", "small_image", "resnet18", "cnn14_emb512"])
def test_cuda_embeddings_match_cpu(name: str) -> None:
    """The front ends (torchaudio mel buffers) and backbones move with .to(device)."""
    options = {"image_size": TINY_IMAGE_SIZE} if teacher_modality(name) == "image" else {}
    torch.manual_seed(0)
    cpu = build_random(name, **options)
    gpu = build_random(name, **options).to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = tiny_input(cpu)
    with torch.no_grad():
        expected, actual = cpu(x), gpu(x.to("cuda")).cpu()
    # loose: cuDNN may use TF32 convolutions (10-bit mantissa)
    assert torch.allclose(actual, expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


@pytest.mark.parametrize("name, hint", [("small_audio", "PANNs checkpoint"), ("small_image", "'imagenet'")])
def test_a_missing_weights_file_suggests_what_fits_the_teacher(name: str, hint: str) -> None:
    """The message suggested 'imagenet' for an audio teacher, which has no such weights."""
    with pytest.raises(TeacherError, match="weights file 'nowhere/w.pth' not found") as info:
        build_teacher(name, "nowhere/w.pth")
    assert hint in str(info.value) and (name == "small_image" or "imagenet" not in str(info.value))
