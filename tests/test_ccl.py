"""CCL loss: values, gradient routing, masks, variants and ablations (docs/method.md#ccl-loss)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ccl_cache.losses import Batch, StudentOut, build_loss
from ccl_cache.losses.ccl import CCLLoss
from ccl_cache.losses.functional import multiclass_nce, symmetric_kl, symmetric_nce

C, DS = 3, 8
AUDIO_MASK = torch.tensor([True, False, True, True, False, True])
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def make_loss(modalities: tuple[str, ...] = ("audio",), audio_dim: int = DS, **options: Any) -> CCLLoss:
    torch.manual_seed(0)
    loss = build_loss(
        "ccl",
        num_classes=C,
        student_dim=DS,
        teacher_dims={"audio": audio_dim, "image": DS},
        modalities=modalities,
        dataset_size=100,
        **options,
    )
    assert isinstance(loss, CCLLoss)
    return loss


def make_inputs(
    labels: torch.Tensor = LABELS, audio_mask: torch.Tensor = AUDIO_MASK, audio_dim: int = DS, seed: int = 1
) -> tuple[StudentOut, Batch]:
    g = torch.Generator().manual_seed(seed)
    b = labels.shape[0]
    out = StudentOut(
        logits=torch.randn(b, C, generator=g).requires_grad_(),
        embedding=torch.relu(torch.randn(b, DS, generator=g)).requires_grad_(),
    )
    batch = Batch(
        video=None,
        label=labels,
        index=torch.arange(b),
        teachers={"audio": torch.rand(b, audio_dim, generator=g) * 3, "image": torch.randn(b, DS, generator=g)},
        masks={"audio": audio_mask, "image": torch.ones(b, dtype=torch.bool)},
    )
    return out, batch


def hand_code_losses(loss: CCLLoss, out: StudentOut, batch: Batch, m: str, tau: float) -> tuple[torch.Tensor, ...]:
    """(contrast_v + J, L_m) of docs/method.md#ccl-loss for modality m, built from the functional pieces."""
    mask = batch.masks[m]
    v, z, y, t = out.embedding[mask], out.logits[mask], batch.label[mask], batch.teachers[m][mask]
    comp = loss.compositions[m]
    z_mv, x_mv = comp(t, v)
    x_m = comp.project_teacher(t)
    j = symmetric_kl(z, z_mv, 0.5)
    student = symmetric_nce(v, x_mv, y, tau) + symmetric_nce(v, x_m, y, tau) + j
    own = F.cross_entropy(z_mv, y) + symmetric_nce(v, x_mv, y, tau) + symmetric_nce(x_mv, x_m, y, tau) + j
    return student, own


def grads(value: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, tensors, retain_graph=True, allow_unused=True))


def backward_all(loss: CCLLoss, out: StudentOut, batch: Batch) -> Any:
    result = loss(out, batch)
    (result.total + (result.extra if result.extra is not None else 0.0)).backward()
    return result


def test_code_variant_values_equal_hand_built_losses() -> None:
    loss = make_loss()
    out, batch = make_inputs()
    result = loss(out, batch)
    student, own = hand_code_losses(loss, out, batch, "audio", 0.5)
    l_v = F.cross_entropy(out.logits, batch.label) + student
    assert result.total.item() == pytest.approx(l_v.item(), rel=1e-6)
    assert result.extra.item() == pytest.approx(own.item(), rel=1e-6)
    assert result.parts["rows_audio"].item() == 4


def test_gradient_routing_student_from_l_v_composition_from_l_a_plus_l_v() -> None:
    loss = make_loss()
    out, batch = make_inputs()
    student, own = hand_code_losses(loss, out, batch, "audio", 0.5)
    l_v = F.cross_entropy(out.logits, batch.label) + student
    params = list(loss.compositions["audio"].parameters())
    want_student = grads(l_v, [out.embedding, out.logits])
    want_comp = grads(l_v + own, params)
    backward_all(loss, out, batch)
    assert torch.allclose(out.embedding.grad, want_student[0], atol=1e-6)
    assert torch.allclose(out.logits.grad, want_student[1], atol=1e-6)
    for p, want in zip(params, want_comp):
        assert torch.allclose(p.grad, want, atol=1e-6)


def test_composition_grad_own_leaves_l_v_out_of_the_composition() -> None:
    loss = make_loss(composition_grad="own")
    out, batch = make_inputs()
    student, own = hand_code_losses(loss, out, batch, "audio", 0.5)
    l_v = F.cross_entropy(out.logits, batch.label) + student
    params = list(loss.compositions["audio"].parameters())
    want_student = grads(l_v, [out.embedding])[0]
    want_comp = grads(own, params)
    backward_all(loss, out, batch)
    assert torch.allclose(out.embedding.grad, want_student, atol=1e-6)
    for p, want in zip(params, want_comp):
        assert torch.allclose(p.grad, want, atol=1e-6)


def test_audio_and_image_weight_the_student_terms_by_omega_only() -> None:
    loss = make_loss(("audio", "image"))
    out, batch = make_inputs()
    s_a, own_a = hand_code_losses(loss, out, batch, "audio", 0.5)
    s_i, own_i = hand_code_losses(loss, out, batch, "image", 0.1)
    result = loss(out, batch)
    expected = F.cross_entropy(out.logits, batch.label) + 0.5 * (s_a + s_i)
    assert result.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert result.extra.item() == pytest.approx((own_a + own_i).item(), rel=1e-6)
    assert [g["name"] for g in loss.param_groups()] == ["composition_audio", "composition_image"]


def test_rows_missing_audio_change_nothing_even_when_they_hold_nan() -> None:
    loss = make_loss(("audio", "image"))
    out, batch = make_inputs()
    first = backward_all(loss, out, batch)
    grad_v = out.embedding.grad.clone()
    comp_grads = [p.grad.clone() for p in loss.parameters()]
    loss.zero_grad()
    out2, batch2 = make_inputs()
    batch2.teachers["audio"][~AUDIO_MASK] = float("nan")
    second = backward_all(loss, out2, batch2)
    assert second.total.item() == first.total.item()
    assert second.extra.item() == first.extra.item()
    assert torch.equal(out2.embedding.grad, grad_v)
    assert all(torch.equal(p.grad, g) for p, g in zip(loss.parameters(), comp_grads))


def test_batch_without_audio_rows_gives_exact_zero_audio_terms_and_a_finite_backward() -> None:
    loss = make_loss()
    out, batch = make_inputs(audio_mask=torch.zeros(6, dtype=torch.bool))
    result = backward_all(loss, out, batch)
    assert result.total.item() == pytest.approx(F.cross_entropy(out.logits, batch.label).item(), abs=0)
    assert result.extra.item() == 0.0
    assert result.parts["ct_audio"].item() == 0.0 and result.parts["rows_audio"].item() == 0
    for p in loss.parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))
    assert torch.isfinite(out.embedding.grad).all() and torch.isfinite(out.logits.grad).all()


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_single_class_batch_is_finite(variant: str) -> None:
    loss = make_loss(("audio", "image"), variant=variant)
    out, batch = make_inputs(labels=torch.zeros(6, dtype=torch.long))
    result = backward_all(loss, out, batch)
    assert torch.isfinite(result.total) and torch.isfinite(result.extra)
    assert torch.isfinite(out.embedding.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())


def test_paper_variant_values_and_routing() -> None:
    loss = make_loss(variant="paper", lam=0.3)
    out, batch = make_inputs()
    mask = AUDIO_MASK
    v, z, y, a = out.embedding[mask], out.logits[mask], batch.label[mask], batch.teachers["audio"][mask]
    comp = loss.compositions["audio"]
    z_av, x_av = comp(a, v.detach())
    student = (
        F.cross_entropy(out.logits, batch.label)
        + 0.3 * multiclass_nce(v, a, y, 0.5)
        + 0.7 * multiclass_nce(v, x_av.detach(), y, 0.5)
        + symmetric_kl(z, z_av.detach(), 0.5)
    )
    own = F.cross_entropy(z_av, y)
    params = list(comp.parameters())
    want_v = grads(student, [out.embedding])[0]
    want_comp = grads(own, params)
    result = backward_all(loss, out, batch)
    assert result.total.item() == pytest.approx(student.item(), rel=1e-6)
    assert result.extra.item() == pytest.approx(own.item(), rel=1e-6)
    assert torch.allclose(out.embedding.grad, want_v, atol=1e-6)
    for p, want in zip(params, want_comp):
        assert torch.allclose(p.grad, want, atol=1e-6)


def test_paper_and_code_variants_differ() -> None:
    out, batch = make_inputs()
    code = make_loss()(out, batch)
    paper = make_loss(variant="paper")(out, batch)
    assert abs(code.total.item() - paper.total.item()) > 1e-3
    assert abs(code.extra.item() - paper.extra.item()) > 1e-3


def test_ablation_without_composition_is_ce_plus_teacher_contrast_only() -> None:
    loss = make_loss(compose=False)
    assert not hasattr(loss, "compositions") and loss.param_groups() == []
    out, batch = make_inputs()
    result = loss(out, batch)
    mask = AUDIO_MASK
    expected = F.cross_entropy(out.logits, batch.label) + symmetric_nce(
        out.embedding[mask], batch.teachers["audio"][mask], batch.label[mask], 0.5
    )
    assert result.extra is None
    assert result.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "jsd_audio" not in result.parts


def test_ablation_without_jsd_drops_it_from_both_losses() -> None:
    loss = make_loss(jsd=False)
    out, batch = make_inputs()
    result = loss(out, batch)
    student, own = hand_code_losses(loss, out, batch, "audio", 0.5)
    mask = AUDIO_MASK
    comp = loss.compositions["audio"]
    z_av, _ = comp(batch.teachers["audio"][mask], out.embedding[mask])
    j = symmetric_kl(out.logits[mask], z_av, 0.5)
    expected = F.cross_entropy(out.logits, batch.label) + student - j
    assert result.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert result.extra.item() == pytest.approx((own - j).item(), rel=1e-6)
    assert "jsd_audio" not in result.parts


def test_teacher_of_another_dimension_is_projected_into_the_student_space() -> None:
    loss = make_loss(audio_dim=12)
    out, batch = make_inputs(audio_dim=12)
    student, own = hand_code_losses(loss, out, batch, "audio", 0.5)
    result = backward_all(loss, out, batch)
    assert result.total.item() == pytest.approx((F.cross_entropy(out.logits, batch.label) + student).item(), rel=1e-6)
    project = loss.compositions["audio"].project
    assert project.weight.shape == (DS, 12) and project.weight.grad.abs().sum() > 0
    grouped = {id(p) for g in loss.param_groups() for p in g["params"]}
    assert id(project.weight) in grouped


def test_composition_state_survives_a_state_dict_round_trip() -> None:
    loss = make_loss(("audio", "image"))
    fresh = make_loss(("audio", "image"))
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(0.1)
    fresh.load_state_dict(loss.state_dict())
    out, batch = make_inputs()
    assert fresh(out, batch).total.item() == loss(out, batch).total.item()


def test_ablation_without_composition_projects_a_teacher_of_another_dimension() -> None:
    loss = make_loss(audio_dim=12, compose=False)
    assert [g["name"] for g in loss.param_groups()] == ["projection_audio"]
    out, batch = make_inputs(audio_dim=12)
    result = backward_all(loss, out, batch)
    assert result.extra is None and torch.isfinite(result.total)
    assert loss.projections["audio"].weight.grad.abs().sum() > 0
    assert out.embedding.grad.abs().sum() > 0
