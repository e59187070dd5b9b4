"""Every registered student maps a clip batch to logits and a non-negative 512-d embedding."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from ccl_cache.errors import ConfigError
from ccl_cache.losses import StudentOut
from ccl_cache.students import STUDENTS, build_student, count_parameters, mid_planes

NUM_CLASSES = 7


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", STUDENTS.names())
def test_student_shapes_and_embedding(name: str) -> None:
    student = build_student(name, NUM_CLASSES).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        out = student(video)
    assert isinstance(out, StudentOut)
    assert out.logits.shape == (2, NUM_CLASSES)
    assert out.embedding.shape == (2, 512)
    assert student.embedding_dim == 512
    # The embedding is the pooled feature after the last ReLU ...
    assert bool((out.embedding >= 0).all()) and float(out.embedding.abs().sum()) > 0
    # ... and the logits are the classifier applied to it (nothing between the two).
    torch.testing.assert_close(out.logits, student.fc(out.embedding))


@pytest.mark.parametrize("name", STUDENTS.names())
def test_student_backward_reaches_every_parameter(name: str) -> None:
    student = build_student(name, NUM_CLASSES).train()
    out = student(torch.randn(2, 3, 4, 32, 32))
    (out.logits.sum() + out.embedding.sum()).backward()
    missing = [n for n, p in student.named_parameters() if p.grad is None]
    assert missing == []


def reference_r21d_ccl_parameters(num_classes: int) -> int:
    """Parameter count of yanbeic/CCL's R2Plus1DNet(layer_sizes=(1, 1, 1, 1)), by arithmetic.

    A (2+1)D conv with kernel (t, d, d) holds a spatial conv (mid × in × d × d), a BatchNorm over
    mid channels (2·mid) and a temporal conv (out × mid × t); no biases.
    """

    def conv(cin: int, cout: int, t: int, d: int) -> int:
        mid = (t * d * d * cin * cout) // (d * d * cin + t * cout)
        return mid * cin * d * d + 2 * mid + cout * mid * t

    def bn(c: int) -> int:
        return 2 * c

    total = conv(3, 64, 3, 7) + bn(64)  # stem
    for cin, cout, down in ((64, 64, False), (64, 128, True), (128, 256, True), (256, 512, True)):
        total += conv(cin, cout, 3, 3) + bn(cout) + conv(cout, cout, 3, 3) + bn(cout)
        if down:
            total += conv(cin, cout, 1, 1) + bn(cout)  # strided 1x1x1 shortcut
    return total + 512 * num_classes + num_classes  # classifier


def test_r21d_ccl_matches_the_papers_code_size() -> None:
    student = build_student("r21d_ccl", 51)
    expected = reference_r21d_ccl_parameters(51)
    assert count_parameters(student) == expected == 14_391_466  # "about 14.4M"
    # torchvision's r2plus1d_18 (two blocks per stage) is a different, twice larger network.
    assert count_parameters(build_student("r2plus1d_18", 51)) > 2 * expected


def test_mid_planes_rule() -> None:
    # Tran et al. 2018 §3.5 for the stem (3 -> 64, 3x7x7): floor(28224 / 339) = 83.
    assert mid_planes(3, 64, (3, 7, 7)) == 83
    assert mid_planes(64, 64, (3, 3, 3)) == 144


def test_small_student_runs_in_reduced_precision_and_channels_last() -> None:
    student = build_student("small", NUM_CLASSES).eval().to(memory_format=torch.channels_last_3d)
    video = torch.randn(2, 3, 8, 64, 64).to(memory_format=torch.channels_last_3d)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = student(video)
    assert out.logits.shape == (2, NUM_CLASSES) and out.embedding.shape == (2, 512)
    assert bool(torch.isfinite(out.logits.float()).all())


def test_build_student_rejects_bad_requests() -> None:
    with pytest.raises(ConfigError, match="unknown student"):
        build_student("resnet9000", 5)
    with pytest.raises(ConfigError, match="num_classes"):
        build_student("small", 0)
    with pytest.raises(ConfigError, match="does not take"):
        build_student("small", 5, depth=3)
    with pytest.raises(ConfigError, match="option width='abc': expected int"):  # was a TypeError
        build_student("small", 5, width="abc")
    with pytest.raises(ConfigError, match="weights"):
        build_student("r3d_18", 5, weights="imagenet")
    with pytest.raises(ConfigError, match="layers"):
        build_student("r21d_ccl", 5, layers=(1, 1, 1))


def test_kinetics_weights_offline_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as tv_api

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="KINETICS400_V1.*weights=None"):
        build_student("r2plus1d_18", 5, weights="kinetics")
