"""Table 1 baselines: memory banks of CRD/CMC (K cap, sampling, momentum, Z, resume) and heads."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccl_cache.errors import ConfigError
from ccl_cache.losses import Batch, StudentOut, build_loss
from ccl_cache.losses.functional import l2_normalize
from ccl_cache.losses.memory import BankContrastLoss

C, DS, DA, DI, N = 3, 10, 6, 8, 24
LABELS = torch.arange(N) % C  # 8 clips per class


def make(name: str, modalities: tuple[str, ...] = ("audio",), labels: Any = LABELS, n: int = N, **options: Any) -> Any:
    torch.manual_seed(0)
    return build_loss(
        name,
        num_classes=C,
        student_dim=DS,
        teacher_dims={"audio": DA, "image": DI},
        modalities=modalities,
        dataset_size=n,
        labels=labels,
        **options,
    )


def make_inputs(index: list[int], audio_mask: list[bool] | None = None, seed: int = 0) -> tuple[StudentOut, Batch]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(index)
    b = len(index)
    out = StudentOut(torch.randn(b, C, generator=g).requires_grad_(), torch.randn(b, DS, generator=g).requires_grad_())
    mask = torch.ones(b, dtype=torch.bool) if audio_mask is None else torch.tensor(audio_mask)
    batch = Batch(
        video=None,
        label=LABELS[idx],
        index=idx,
        teachers={"audio": torch.rand(b, DA, generator=g), "image": torch.randn(b, DI, generator=g)},
        masks={"audio": mask},
    )
    return out, batch


def test_distinct_crd_caps_k_to_the_negatives_of_other_classes_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="nce_k=16384 exceeds the 16 negatives"):
        loss = make("crd", sampling="distinct")
    assert loss.nce_k == 16
    unbalanced = torch.tensor([0] * 12 + [1] * 6 + [2] * 6)
    with pytest.warns(UserWarning, match="using nce_k=12"):
        assert make("crd", labels=unbalanced, nce_k=20, sampling="distinct").nce_k == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make("crd", nce_k=5, sampling="distinct").nce_k == 5


def test_distinct_cmc_caps_k_to_the_other_clips() -> None:
    with pytest.warns(UserWarning, match="using nce_k=23"):
        assert make("cmc", sampling="distinct").nce_k == 23
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make("cmc", labels=None, nce_k=7, sampling="distinct").nce_k == 7


def test_k_16384_stands_on_a_small_dataset_drawn_with_replacement() -> None:
    """docs/method.md#crd: K = 16384 (RepDistiller draws with replacement). It used to be cut to the
    candidates a dataset holds (UCF51's ~4,800 clips: K = 4,705), changing the NCE's K/N term."""
    index = torch.tensor([0, 1, 5, 9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no cap, no warning
        crd, cmc = make("crd"), make("cmc", labels=None)
    assert crd.nce_k == cmc.nce_k == 16384
    neg = crd.sample_negatives(index)
    assert neg.shape == (4, 16384) and all((LABELS[row] != LABELS[i]).all() for row, i in zip(neg, index))
    drawn = cmc.sample_negatives(index)
    assert drawn.shape == (4, 16384) and int(drawn.min()) >= 0 and int(drawn.max()) < N
    counts = torch.bincount(drawn.flatten(), minlength=N).float()
    assert (counts > 0).all() and counts.std() / counts.mean() < 0.1  # uniform over all N, the anchor too
    out, batch = make_inputs([0, 1, 5, 9])
    assert torch.isfinite(crd(out, batch).total) and torch.isfinite(cmc(out, batch).total)


def test_bank_losses_refuse_datasets_they_cannot_use() -> None:
    with pytest.raises(ConfigError, match="pass the dataset labels"):
        make("crd", labels=None, nce_k=4)
    with pytest.raises(ConfigError, match="no dataset row can serve as a negative"):
        make("crd", labels=torch.zeros(N, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"labels have shape \(5,\), expected \(24,\)"):
        make("crd", labels=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match="dataset_size > 1"):
        make("cmc", labels=None, n=1)
    loss = make("cmc", nce_k=4)
    out, batch = make_inputs([0, 1, 2])
    batch.index = torch.tensor([0, 1, 30])
    with pytest.raises(ConfigError, match=r"outside \[0, 24\)"):
        loss(out, batch)


def test_distinct_crd_negatives_are_distinct_clips_of_other_classes() -> None:
    loss = make("crd", nce_k=16, sampling="distinct")
    index = torch.tensor([0, 1, 5, 9])
    neg = loss.sample_negatives(index)
    assert neg.shape == (4, 16)
    for row, i in zip(neg, index):
        assert len(set(row.tolist())) == 16
        assert (LABELS[row] != LABELS[i]).all()


def test_distinct_cmc_negatives_are_distinct_and_never_the_anchor() -> None:
    loss = make("cmc", nce_k=23, sampling="distinct")
    index = torch.tensor([3, 7])
    neg = loss.sample_negatives(index)
    for row, i in zip(neg, index):
        assert sorted(row.tolist()) == [j for j in range(N) if j != int(i)]


def test_bank_momentum_update_only_on_present_rows_and_only_in_training() -> None:
    loss = make("crd", ("audio", "image"), nce_k=4)
    index = [2, 5, 7, 11]
    out, batch = make_inputs(index, audio_mask=[True, False, True, True])
    before = {m: (loss.banks[m].student.clone(), loss.banks[m].teacher.clone()) for m in ("audio", "image")}
    loss.eval()
    loss(out, batch)
    assert all(torch.equal(loss.banks[m].student, before[m][0]) for m in before)
    loss.train()
    loss(out, batch)
    for m, rows in (("audio", [2, 7, 11]), ("image", index)):
        keep = [i for i in range(len(index)) if index[i] in rows]
        r = torch.tensor(rows)
        s = l2_normalize(loss.embed_student[m](out.embedding[keep])).detach()
        t = l2_normalize(loss.embed_teacher[m](batch.teachers[m][keep])).detach()
        assert torch.allclose(loss.banks[m].student[r], l2_normalize(0.5 * before[m][0][r] + 0.5 * s), atol=1e-6)
        assert torch.allclose(loss.banks[m].teacher[r], l2_normalize(0.5 * before[m][1][r] + 0.5 * t), atol=1e-6)
        untouched = torch.tensor([i for i in range(N) if i not in rows])
        assert torch.equal(loss.banks[m].student[untouched], before[m][0][untouched])
    assert not loss.banks["audio"].student.requires_grad
    assert torch.allclose(loss.banks["audio"].student[2].norm(), torch.tensor(1.0))


def test_z_is_fixed_at_the_first_batch_and_saved_in_the_state_dict() -> None:
    loss = make("crd", nce_k=6)
    assert torch.equal(loss.banks["audio"].z, torch.tensor([-1.0, -1.0]))
    loss(*make_inputs([0, 4, 8, 13]))
    z = loss.banks["audio"].z.clone()
    assert (z > 0).all()
    loss(*make_inputs([1, 2, 3, 20], seed=1))
    assert torch.equal(loss.banks["audio"].z, z)
    state = loss.state_dict()
    assert {"banks.audio.z", "banks.audio.student", "banks.audio.teacher"} <= set(state)
    resumed = make("crd", nce_k=6)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.banks["audio"].z, z)
    out, batch = make_inputs([5, 6, 7], seed=2)
    torch.manual_seed(9)
    a = loss(out, batch).total.item()
    torch.manual_seed(9)
    b = resumed(out, batch).total.item()
    assert a == b


def np_binary_nce(p: np.ndarray, n: int) -> float:
    noise = (p.shape[1] - 1) / n
    positive = np.log(p[:, 0] / (p[:, 0] + noise + 1e-7)).sum()
    negative = np.log(noise / (p[:, 1:] + noise + 1e-7)).sum()
    return float(-(positive + negative) / len(p))


@pytest.mark.parametrize(("name", "objective"), [("crd", "nce"), ("cmc", "nce"), ("cmc", "softmax")])
def test_bank_loss_value_matches_a_manual_computation(name: str, objective: str) -> None:
    opts = {"objective": objective} if name == "cmc" else {}
    loss: BankContrastLoss = make(name, nce_k=5, **opts)
    out, batch = make_inputs([0, 4, 8, 13, 17])
    student_bank = loss.banks["audio"].student.clone().double()
    teacher_bank = loss.banks["audio"].teacher.clone().double()
    torch.manual_seed(3)
    kd = loss(out, batch).parts["kd_audio"].item()
    torch.manual_seed(3)
    rows = torch.cat([batch.index[:, None], loss.sample_negatives(batch.index)], 1)
    with torch.no_grad():
        s = l2_normalize(loss.embed_student["audio"](out.embedding)).double()
        t = l2_normalize(loss.embed_teacher["audio"](batch.teachers["audio"])).double()
    logit_s = torch.einsum("bkd,bd->bk", teacher_bank[rows], s) / 0.07
    logit_t = torch.einsum("bkd,bd->bk", student_bank[rows], t) / 0.07
    if objective == "softmax":
        target = torch.zeros(5, dtype=torch.long)
        expected = (F.cross_entropy(logit_s, target) + F.cross_entropy(logit_t, target)).item()
    else:
        e_s, e_t = logit_s.exp().numpy(), logit_t.exp().numpy()
        expected = np_binary_nce(e_s / (e_s.mean() * N), N) + np_binary_nce(e_t / (e_t.mean() * N), N)
    assert kd == pytest.approx(expected, rel=1e-4)


def test_bank_loss_trains_both_heads_but_not_the_banks() -> None:
    loss = make("cmc", ("audio", "image"), nce_k=8)
    out, batch = make_inputs([0, 1, 2, 3])
    loss(out, batch).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    assert all(not b.requires_grad for b in loss.buffers())
    assert out.embedding.grad.abs().sum() > 0


def test_feature_baseline_heads_have_the_expected_shapes() -> None:
    fit = make("fitnet", ("audio", "image"))
    assert fit.regressors["audio"].weight.shape == (DA, DS) and fit.regressors["image"].weight.shape == (DI, DS)
    cor = make("cor", ("audio",))
    assert cor.embed_student["audio"].weight.shape == (128, DS)
    assert cor.embed_teacher["audio"].weight.shape == (128, DA)
    assert list(make("rkd", ("audio",)).parameters()) == [] and make("pkt", ("image",)).param_groups() == []
