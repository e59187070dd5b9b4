"""Loss formulas as plain functions, for the registered losses and for users' own loops.

Every formula is written as in docs/method.md: the compositional contrastive learning terms of Chen et
al., "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (CVPR 2021) and
the Table 1 baselines in their RepDistiller (Tian et al., ICLR 2020) forms. Each function returns
a scalar tensor. Wherever a batch is too small for a term to exist (no rows, no pairs, no
triplets), the term is an exact 0 that stays connected to the inputs' graph, never NaN: a batch
whose rows all miss audio must still backpropagate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccl_cache.errors import ConfigError

LOG_EPS = 1e-10
"""The epsilon inside the logarithms of the CCL code (``EPISILON`` in its nce/jsd losses)."""


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows divided by max(‖x‖₂, eps): x̂ in the paper's composition."""
    return F.normalize(x, p=2.0, dim=-1, eps=eps)


def zero_like_graph(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to every input's graph (gradients are zeros, not None)."""
    return sum(t.sum() for t in tensors) * 0.0  # type: ignore[return-value]


def multiclass_nce(anchors: Tensor, candidates: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Multi-class NCE N(f₁, f₂, y) of CCL (Chen et al. 2021, Eq. 3 and the released code).

    s_ij = cos(anchor_i, candidate_j); p_ij = softmax_j(s_ij / τ) over the batch. Positives
    P_i = {j : y_j = y_i} (j = i included), negatives N_i = {j : y_j ≠ y_i}:
    N = mean_i[ −mean_{j∈P_i} log(p_ij + 1e-10) − mean_{j∈N_i} log(1 − p_ij + 1e-10) ].
    An empty P_i or N_i drops that term for row i (the code divided by 0 on single-class batches).
    Rows whose modality is missing must be removed by the caller before the call.
    """
    _check_pairs(anchors, candidates, labels)
    if anchors.shape[0] == 0:
        return zero_like_graph(anchors, candidates)
    sim = l2_normalize(anchors) @ l2_normalize(candidates).t()
    prob = torch.softmax(sim / temperature, dim=1)
    positive = labels[:, None] == labels[None, :]
    negative = ~positive
    # Both logs are finite (p in [0, 1]); masking by selection keeps dropped terms exactly 0.
    pos_log = torch.where(positive, -torch.log(prob + LOG_EPS), torch.zeros_like(prob))
    neg_log = torch.where(negative, -torch.log(1.0 - prob + LOG_EPS), torch.zeros_like(prob))
    pos_term = pos_log.sum(1) / positive.sum(1).clamp(min=1)
    neg_term = neg_log.sum(1) / negative.sum(1).clamp(min=1)
    return (pos_term + neg_term).mean()


def symmetric_nce(x: Tensor, y: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """N_s(x, y) = N(x, y) + N(y, x): the symmetric contrastive term of the CCL code."""
    return multiclass_nce(x, y, labels, temperature) + multiclass_nce(y, x, labels, temperature)


def symmetric_kl(logits_a: Tensor, logits_b: Tensor, weight: float = 0.5) -> Tensor:
    """The CCL code's "JSD" term (a symmetric KL, not Jensen–Shannon; docs/method.md#jsd-term).

    J = w · mean_b[ Σ_c p log(p/q + 1e-10) + Σ_c q log(q/p + 1e-10) ], p = softmax(logits_a),
    q = softmax(logits_b); no temperature, neither side detached. log(p/q + 1e-10) is computed as
    logaddexp(log p − log q, log 1e-10): the same number, but finite when q underflows to 0.
    """
    if logits_a.shape != logits_b.shape:
        raise ConfigError(f"symmetric_kl: logits shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    if logits_a.shape[0] == 0:
        return zero_like_graph(logits_a, logits_b)
    log_p = torch.log_softmax(logits_a, dim=1)
    log_q = torch.log_softmax(logits_b, dim=1)
    log_eps = torch.full_like(log_p, math.log(LOG_EPS))
    kl_pq = (log_p.exp() * torch.logaddexp(log_p - log_q, log_eps)).sum(1)
    kl_qp = (log_q.exp() * torch.logaddexp(log_q - log_p, log_eps)).sum(1)
    return weight * (kl_pq + kl_qp).mean()


class Composition(nn.Module):
    """CCL's compositional embedding of a teacher and the student (Chen et al. 2021, Sec. 3.2).

    x_tv = x_t + W₁[x̂_t ; x̂_s] + b₁ (one linear layer, no activation, residual on the
    un-normalised teacher feature) and z_tv = W₂ x_tv + b₂ (class logits).
    ccl-cache extension: when the teacher and student dimensions differ, the teacher is first
    mapped by a trainable linear layer D_t → D_s (``project``), so the composed feature lives in
    the student's space; with equal dimensions ``project`` is the identity (the paper's model).
    """

    def __init__(self, teacher_dim: int, student_dim: int, num_classes: int) -> None:
        super().__init__()
        self.project: nn.Module = (
            nn.Identity() if teacher_dim == student_dim else nn.Linear(teacher_dim, student_dim)
        )
        self.compose = nn.Linear(2 * student_dim, student_dim)
        self.classify = nn.Linear(student_dim, num_classes)

    def project_teacher(self, teacher: Tensor) -> Tensor:
        """The teacher feature in the student's space (itself when the dimensions agree)."""
        return self.project(teacher)

    def forward(self, teacher: Tensor, student: Tensor) -> tuple[Tensor, Tensor]:
        """(logits z_tv (B, C), composed feature x_tv (B, D_s))."""
        t = self.project(teacher)
        composed = t + self.compose(torch.cat([l2_normalize(t), l2_normalize(student)], dim=1))
        return self.classify(composed), composed


def fitnet(student: Tensor, teacher: Tensor, regressor: nn.Module) -> Tensor:
    """FitNet hint loss (Romero et al., ICLR 2015): MSE(r(f_s), f_t), mean over all elements."""
    if student.shape[0] == 0:
        return zero_like_graph(student, *regressor.parameters())
    return F.mse_loss(regressor(student), teacher)


def pkt(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), RepDistiller form.

    Rows divided by ‖x‖₂ + eps (NaN → 0); K = (x xᵀ + 1)/2 row-normalised gives p (student) and
    q (teacher); L = mean over all B² entries of q log((q + eps)/(p + eps)).
    """
    p = _pkt_kernel(student, eps)
    q = _pkt_kernel(teacher, eps)
    if p.numel() == 0:
        return zero_like_graph(student, teacher)
    return torch.mean(q * torch.log((q + eps) / (p + eps)))


def _pkt_kernel(x: Tensor, eps: float) -> Tensor:
    # vector_norm, not sqrt(sum(x²)): same value, but a zero row gets a 0 subgradient, not NaN.
    x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / torch.sum(sim, dim=1, keepdim=True)


def correlation_congruence(student_embed: Tensor, teacher_embed: Tensor) -> Tensor:
    """Correlation congruence (Peng et al., ICCV 2019) in RepDistiller's simplified form.

    Inputs are already embedded (linear 512→128 heads of the caller). Δ = |g_s − g_t|
    element-wise; L = mean over consecutive row pairs of Σ_d Δ_i,d Δ_i+1,d (0 when B < 2).
    """
    if student_embed.shape != teacher_embed.shape:
        raise ConfigError(
            "correlation_congruence: embedded shapes differ: "
            f"{tuple(student_embed.shape)} vs {tuple(teacher_embed.shape)}"
        )
    if student_embed.shape[0] < 2:
        return zero_like_graph(student_embed, teacher_embed)
    delta = torch.abs(student_embed - teacher_embed)
    return torch.mean((delta[:-1] * delta[1:]).sum(1))


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances: squared distances clamped at eps before the root, diagonal 0."""
    sq = x.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp(min=eps).sqrt()
    off_diagonal = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return torch.where(off_diagonal, dist, torch.zeros_like(dist))


def rkd_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance term (Park et al., CVPR 2019): smooth-L1 between mean-normalised distances."""
    if student.shape[0] < 2:
        return zero_like_graph(student)
    with torch.no_grad():
        t_d = pairwise_distances(teacher)
        t_d = t_d / _off_diagonal_entries(t_d).mean()
    d = pairwise_distances(student)
    d = d / _off_diagonal_entries(d).mean()
    return F.smooth_l1_loss(d, t_d)


def _off_diagonal_entries(x: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, row by row, as a 1-D tensor.

    Pairwise distances are positive exactly off the diagonal, so this is ``x[x > 0]`` without
    the boolean mask (whose size the host would have to wait for).
    """
    n = x.shape[0]
    return x.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(-1)


def rkd_angle(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle term: smooth-L1 between the B³ cosines of difference-vector pairs (0 when B < 3)."""
    if student.shape[0] < 3:
        return zero_like_graph(student)
    with torch.no_grad():
        t_angle = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), t_angle)


def _angles(x: Tensor) -> Tensor:
    diff = l2_normalize(x.unsqueeze(0) - x.unsqueeze(1))  # (B, B, D): e_j − e_i, normalised
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd(student: Tensor, teacher: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """Relational knowledge distillation: 25 · distance + 50 · angle; the teacher side has no grad."""
    return distance_weight * rkd_distance(student, teacher) + angle_weight * rkd_angle(student, teacher)


def contrast_nce(scores: Tensor, dataset_size: int, eps: float = 1e-7) -> Tensor:
    """CRD's binary NCE over memory-bank scores (Tian et al., ICLR 2020, Eq. 18; RepDistiller).

    ``scores`` (B, K+1): column 0 the positive, then K negatives, each P = exp(⟨v, m⟩/τ)/Z. With
    noise probability P_n = 1/N: L = −(1/B) Σ_b [log P⁺/(P⁺ + K P_n + eps) +
    Σ_k log K P_n/(P_k + K P_n + eps)].
    """
    if scores.shape[0] == 0:
        return zero_like_graph(scores)
    k = scores.shape[1] - 1
    noise = k / float(dataset_size)
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]


def _check_pairs(anchors: Tensor, candidates: Tensor, labels: Tensor) -> None:
    if anchors.ndim != 2 or anchors.shape != candidates.shape or labels.shape != anchors.shape[:1]:
        raise ConfigError(
            "multiclass_nce expects anchors and candidates of the same shape (B, D) and labels (B,); "
            f"got {tuple(anchors.shape)}, {tuple(candidates.shape)}, {tuple(labels.shape)}"
        )
