"""The loss formulas of ccl_cache.losses.functional against hand/NumPy computations (docs/method.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ccl_cache.errors import ConfigError
from ccl_cache.losses.functional import (
    Composition,
    contrast_nce,
    correlation_congruence,
    fitnet,
    l2_normalize,
    multiclass_nce,
    pairwise_distances,
    pkt,
    rkd,
    rkd_angle,
    rkd_distance,
    symmetric_kl,
    symmetric_nce,
)

EPS = 1e-10


def np_nce(f1: np.ndarray, f2: np.ndarray, y: np.ndarray, tau: float) -> float:
    """docs/method.md#multi-class-nce's N(f1, f2, y), written row by row, dropping an empty positive/negative term."""
    a = f1 / np.linalg.norm(f1, axis=1, keepdims=True)
    b = f2 / np.linalg.norm(f2, axis=1, keepdims=True)
    rows = []
    for i in range(len(a)):
        s = np.array([a[i] @ b[j] for j in range(len(b))]) / tau
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        pos = [j for j in range(len(b)) if y[j] == y[i]]
        neg = [j for j in range(len(b)) if y[j] != y[i]]
        term = 0.0
        if pos:
            term += -np.mean([np.log(p[j] + EPS) for j in pos])
        if neg:
            term += -np.mean([np.log(1 - p[j] + EPS) for j in neg])
        rows.append(term)
    return float(np.mean(rows))


def test_l2_normalize_unit_rows_and_zero_row_stays_zero() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], torch.zeros(2))


def test_multiclass_nce_matches_hand_computation_on_three_rows() -> None:
    f1 = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    f2 = np.array([[1.0, 1.0], [2.0, 0.0], [-1.0, 1.0]])
    y = np.array([0, 0, 1])
    got = multiclass_nce(torch.tensor(f1), torch.tensor(f2), torch.tensor(y), 0.5)
    assert got.item() == pytest.approx(np_nce(f1, f2, y, 0.5), rel=1e-10)


def test_multiclass_nce_first_row_by_hand() -> None:
    # Two rows, two classes, anchors == candidates == e1, e2: s = I, p_11 = e^2/(e^2+1) at τ=0.5.
    x = torch.eye(2, dtype=torch.float64)
    p = math.exp(2) / (math.exp(2) + 1)
    expected = -math.log(p + EPS) - math.log(1 - (1 - p) + EPS)  # same for both rows
    got = multiclass_nce(x, x, torch.tensor([0, 1]), 0.5)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_multiclass_nce_equals_released_code_form_when_every_row_has_negatives() -> None:
    torch.manual_seed(0)
    f1, f2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    # The CCL code: cos from squared distances of normalised rows, masks by label difference.
    a, b = l2_normalize(f1), l2_normalize(f2)
    cos = 1 - 0.5 * (a.unsqueeze(1) - b).pow(2).sum(2)
    p = torch.softmax(cos / 0.1, dim=1)
    neg = (y.unsqueeze(1) - y) != 0
    code = (-torch.log(p + EPS) * (~neg)).sum(1) / (~neg).sum(1) + (-torch.log(1 - p + EPS) * neg).sum(1) / neg.sum(1)
    assert multiclass_nce(f1, f2, y, 0.1).item() == pytest.approx(code.mean().item(), rel=1e-10)


def test_single_class_batch_is_finite_and_equals_positives_only_value() -> None:
    torch.manual_seed(1)
    f1, f2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    got = multiclass_nce(f1, f2, y, 0.5)
    assert torch.isfinite(got)
    p = torch.softmax(l2_normalize(f1) @ l2_normalize(f2).t() / 0.5, dim=1)
    positives_only = (-torch.log(p + EPS)).mean(1).mean()
    assert got.item() == pytest.approx(positives_only.item(), rel=1e-12)
    assert got.item() == pytest.approx(np_nce(f1.numpy(), f2.numpy(), y.numpy(), 0.5), rel=1e-10)


def test_nce_on_empty_rows_is_zero_and_backpropagates() -> None:
    a = torch.randn(0, 4, requires_grad=True)
    b = torch.randn(0, 4, requires_grad=True)
    out = multiclass_nce(a, b, torch.zeros(0, dtype=torch.long), 0.5)
    assert out.item() == 0.0
    out.backward()
    assert a.grad is not None and a.grad.shape == (0, 4)


def test_nce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ConfigError, match="same shape"):
        multiclass_nce(torch.randn(3, 4), torch.randn(3, 5), torch.zeros(3, dtype=torch.long), 0.5)


def test_symmetric_nce_is_the_sum_of_both_directions() -> None:
    torch.manual_seed(2)
    x, z = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2, 1])
    expected = np_nce(x.numpy(), z.numpy(), y.numpy(), 0.1) + np_nce(z.numpy(), x.numpy(), y.numpy(), 0.1)
    assert symmetric_nce(x, z, y, 0.1).item() == pytest.approx(expected, rel=1e-10)


def np_symmetric_kl(a: np.ndarray, b: np.ndarray, w: float) -> float:
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(b - b.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    per_row = (p * np.log(p / q + EPS)).sum(1) + (q * np.log(q / p + EPS)).sum(1)
    return float(w * per_row.mean())


def test_symmetric_kl_matches_numpy() -> None:
    a = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    b = np.array([[0.5, 0.0, 0.1], [2.0, 2.0, -2.0]])
    got = symmetric_kl(torch.tensor(a), torch.tensor(b), weight=0.5)
    assert got.item() == pytest.approx(np_symmetric_kl(a, b, 0.5), rel=1e-10)
    assert symmetric_kl(torch.tensor(a), torch.tensor(a)).item() == pytest.approx(0.0, abs=1e-9)


def test_symmetric_kl_stays_finite_when_a_probability_underflows() -> None:
    a = np.array([[100.0, -100.0]])
    b = np.array([[-100.0, 100.0]])
    # float32 softmax gives exact zeros here (the naive p/q is inf); float64 NumPy does not.
    got = symmetric_kl(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(np_symmetric_kl(a, b, 0.5), rel=1e-5)


def test_symmetric_kl_gradients_reach_both_sides() -> None:
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    symmetric_kl(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_composition_shapes_and_residual_on_the_unnormalised_teacher() -> None:
    comp = Composition(teacher_dim=6, student_dim=6, num_classes=3)
    assert isinstance(comp.project, nn.Identity)
    teacher, student = torch.randn(4, 6) * 15, torch.randn(4, 6)
    logits, composed = comp(teacher, student)
    assert logits.shape == (4, 3) and composed.shape == (4, 6)
    w1, b1 = comp.compose.weight, comp.compose.bias
    cat = torch.cat([teacher / teacher.norm(dim=1, keepdim=True), student / student.norm(dim=1, keepdim=True)], 1)
    assert torch.allclose(composed, teacher + cat @ w1.t() + b1, atol=1e-5)
    assert torch.allclose(logits, composed @ comp.classify.weight.t() + comp.classify.bias, atol=1e-5)
    with torch.no_grad():
        w1.zero_()
        b1.zero_()
    assert torch.allclose(comp(teacher, student)[1], teacher)  # pure residual: x_av = x_a


def test_composition_projects_a_teacher_of_another_dimension() -> None:
    comp = Composition(teacher_dim=10, student_dim=4, num_classes=2)
    assert isinstance(comp.project, nn.Linear)
    assert comp.compose.in_features == 8 and comp.compose.out_features == 4
    teacher = torch.randn(3, 10)
    logits, composed = comp(teacher, torch.randn(3, 4))
    assert logits.shape == (3, 2) and composed.shape == (3, 4)
    assert comp.project_teacher(teacher).shape == (3, 4)


def test_fitnet_is_mse_of_the_regressed_student() -> None:
    reg = nn.Linear(2, 3)
    with torch.no_grad():
        reg.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        reg.bias.zero_()
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    t = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    # r(s) = [[1,2,3],[0,-1,-1]]; squared errors 0,1,4,0,1,1 -> mean 7/6
    assert fitnet(s, t, reg).item() == pytest.approx(7 / 6)


def np_pkt(s: np.ndarray, t: np.ndarray, eps: float = 1e-7) -> float:
    def kernel(x: np.ndarray) -> np.ndarray:
        x = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    p, q = kernel(s), kernel(t)
    return float(np.mean(q * np.log((q + eps) / (p + eps))))


def test_pkt_matches_numpy_and_is_zero_for_identical_inputs() -> None:
    s = np.array([[1.0, 0.0, 2.0], [0.5, 1.0, -1.0], [3.0, 3.0, 0.0]])
    t = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    assert pkt(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(np_pkt(s, t), rel=1e-9)
    assert pkt(torch.tensor(s), torch.tensor(s)).item() == pytest.approx(0.0, abs=1e-9)


def test_pkt_zero_row_is_not_nan() -> None:
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    out = pkt(s, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_correlation_congruence_by_hand() -> None:
    gs = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    gt = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, -1.0]])
    # Δ = [[1,2],[2,1],[1,1]]; consecutive products: 1*2+2*1 = 4, 2*1+1*1 = 3 -> mean 3.5
    assert correlation_congruence(gs, gt).item() == pytest.approx(3.5)
    one = torch.ones(1, 2, requires_grad=True)
    assert correlation_congruence(one, torch.zeros(1, 2)).item() == 0.0


def np_rkd(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    def dist(x: np.ndarray) -> np.ndarray:
        d = np.sqrt(np.clip(((x[:, None] - x[None]) ** 2).sum(-1), 1e-12, None))
        np.fill_diagonal(d, 0.0)
        return d / d[d > 0].mean()

    def angles(x: np.ndarray) -> np.ndarray:
        e = x[None, :, :] - x[:, None, :]
        n = np.linalg.norm(e, axis=2, keepdims=True)
        e = e / np.maximum(n, 1e-12)
        return np.einsum("ijd,ikd->ijk", e, e).ravel()

    def huber(a: np.ndarray, b: np.ndarray) -> float:
        r = np.abs(a - b)
        return float(np.where(r < 1, 0.5 * r**2, r - 0.5).mean())

    return huber(dist(s), dist(t)), huber(angles(s), angles(t))


def test_rkd_terms_match_numpy_and_teacher_gets_no_gradient() -> None:
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 3)) * 4
    dist, angle = np_rkd(s, t)
    st = torch.tensor(s, requires_grad=True)
    tt = torch.tensor(t, requires_grad=True)
    assert rkd_distance(st, tt).item() == pytest.approx(dist, rel=1e-9)
    assert rkd_angle(st, tt).item() == pytest.approx(angle, rel=1e-9)
    total = rkd(st, tt)
    assert total.item() == pytest.approx(25 * dist + 50 * angle, rel=1e-9)
    total.backward()
    assert st.grad is not None and tt.grad is None


def test_pairwise_distances_diagonal_is_zero() -> None:
    d = pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert torch.allclose(d, torch.tensor([[0.0, 5.0], [5.0, 0.0]]))


def test_rkd_small_batches_are_zero_not_nan() -> None:
    one = torch.randn(1, 4, requires_grad=True)
    assert rkd(one, torch.randn(1, 4)).item() == 0.0
    two = torch.randn(2, 4, requires_grad=True)
    assert rkd_angle(two, torch.randn(2, 4)).item() == 0.0
    out = rkd(two, torch.randn(2, 4))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(two.grad).all()


def test_contrast_nce_matches_numpy() -> None:
    scores = np.array([[0.5, 0.1, 0.2], [2.0, 0.05, 0.3]])
    n = 10
    m_pn = 2 / n
    eps = 1e-7
    expected = -(
        np.log(scores[:, 0] / (scores[:, 0] + m_pn + eps)).sum()
        + np.log(m_pn / (scores[:, 1:] + m_pn + eps)).sum()
    ) / 2
    assert contrast_nce(torch.tensor(scores), n).item() == pytest.approx(expected, rel=1e-10)
