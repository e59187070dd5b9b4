"""Every registered loss against the contract of docs/api.md, generated from the registry."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import pytest
import torch

from ccl_cache.errors import ConfigError
from ccl_cache.losses import (
    LOSSES,
    Batch,
    DistillLoss,
    StudentOut,
    build_loss,
    loss_needs,
    loss_options,
    parse_loss_options,
)

C, DS, DA, DI, N = 3, 16, 12, 16, 24
DATASET_LABELS = torch.arange(N) % C
MODALITY_SETS = [("audio",), ("image",), ("audio", "image")]


def make(name: str, modalities: tuple[str, ...], **options: Any) -> DistillLoss:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CRD/CMC cap nce_k to this tiny dataset (tested elsewhere)
        return build_loss(
            name,
            num_classes=C,
            student_dim=DS,
            teacher_dims={"audio": DA, "image": DI},
            modalities=modalities,
            dataset_size=N,
            labels=DATASET_LABELS,
            **options,
        )


def make_inputs(b: int, audio_mask: torch.Tensor | None = None, single_class: bool = False) -> tuple[StudentOut, Batch]:
    g = torch.Generator().manual_seed(b)
    index = torch.randperm(N, generator=g)[:b]
    labels = torch.zeros(b, dtype=torch.long) if single_class else DATASET_LABELS[index]
    out = StudentOut(
        logits=torch.randn(b, C, generator=g).requires_grad_(),
        embedding=torch.relu(torch.randn(b, DS, generator=g)).requires_grad_(),
    )
    teachers = {
        "audio": torch.rand(b, DA, generator=g).requires_grad_(),
        "image": torch.randn(b, DI, generator=g).requires_grad_(),
    }
    mask = torch.ones(b, dtype=torch.bool) if audio_mask is None else audio_mask
    return out, Batch(video=None, label=labels, index=index, teachers=teachers, masks={"audio": mask})


def test_registry_holds_ccl_and_every_table_1_baseline() -> None:
    assert LOSSES.names() == ["baseline", "ccl", "cmc", "cor", "crd", "fitnet", "pkt", "rkd"]


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_method_documents_its_options_and_its_defaults_are_valid(name: str) -> None:
    """Any registered method, a new one too: each option has a type and help for `--loss-opt`,
    and the defaults pass the method's own validation."""
    cls = LOSSES.get(name)
    options = loss_options(name)
    assert [o.name for o in options] == [f.name for f in dataclasses.fields(cls.Options)]
    for option in options:
        assert option.help.strip() and option.type, f"{name}.{option.name}: give it opt(default, help)"
    cls.Options()  # the defaults validate (a ConfigError here means a default the method refuses)


@pytest.mark.parametrize(
    ("name", "defaults"),
    [
        ("ccl", {"variant": "code", "lam": 0.5, "tau_audio": 0.5, "tau_image": 0.1, "jsd_weight": 0.5, "omega": 0.5}),
        ("fitnet", {"beta": 100.0}),
        ("pkt", {"beta": 30000.0}),
        ("cor", {"beta": 0.02, "feat_dim": 128}),
        ("rkd", {"beta": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}),
        ("crd", {"beta": 0.8, "nce_k": 16384, "temperature": 0.07, "momentum": 0.5, "feat_dim": 128,
                 "sampling": "replacement"}),
        ("cmc", {"nce_k": 16384, "temperature": 0.07, "objective": "nce", "sampling": "replacement"}),
    ],
)
def test_options_carry_the_paper_defaults(name: str, defaults: dict[str, Any]) -> None:
    infos = {info.name: info for info in loss_options(name)}
    for key, value in defaults.items():
        assert infos[key].default == value
        assert infos[key].help
    assert loss_options("baseline") == []


def test_unknown_name_option_choice_and_type_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="unknown loss 'nope'"):
        make("nope", ("audio",))
    with pytest.raises(ConfigError, match="no option 'tau'.*tau_audio"):
        make("ccl", ("audio",), tau=0.5)
    with pytest.raises(ConfigError, match="choose one of"):
        make("ccl", ("audio",), variant="book")
    with pytest.raises(ConfigError, match="expected type float"):
        make("fitnet", ("audio",), beta="high")
    with pytest.raises(ConfigError, match="non-negative"):
        make("pkt", ("audio",), beta=-1.0)
    with pytest.raises(ConfigError, match="teacher_dims has no entry"):
        build_loss("rkd", num_classes=C, student_dim=DS, teacher_dims={}, modalities=("audio",), dataset_size=N)
    with pytest.raises(ConfigError, match="pass modalities"):
        make("fitnet", ())


def test_parse_loss_options_types_values() -> None:
    parsed = parse_loss_options("ccl", ["variant=paper", "compose=false", "lam=0.25", "jsd=1"])
    assert parsed == {"variant": "paper", "compose": False, "lam": 0.25, "jsd": True}
    assert parse_loss_options("crd", ["nce_k=4096"]) == {"nce_k": 4096}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_loss_options("ccl", ["lam"])
    with pytest.raises(ConfigError, match="expected type int"):
        parse_loss_options("crd", ["nce_k=many"])
    with pytest.raises(ConfigError, match=r"lam=1.5: expected a value in \[0, 1\]"):
        parse_loss_options("ccl", ["lam=1.5"])


@pytest.mark.parametrize("modalities", MODALITY_SETS)
def test_needs_follow_the_method_and_modalities(modalities: tuple[str, ...]) -> None:
    assert loss_needs("baseline", modalities) == frozenset()
    for name in ("ccl", "fitnet", "pkt", "cor", "rkd"):
        assert loss_needs(name, modalities) == frozenset(modalities)
        assert make(name, modalities).needs == frozenset(modalities)
    for name in ("crd", "cmc"):
        assert loss_needs(name, modalities) == frozenset(modalities) | {"index"}
    assert loss_needs("crd", "audio") == {"audio", "index"}  # a bare string is one modality


def run(loss: DistillLoss, out: StudentOut, batch: Batch) -> Any:
    result = loss(out, batch)
    (result.total + (result.extra if result.extra is not None else 0.0)).backward()
    return result


def check_finite_and_routed(loss: DistillLoss, out: StudentOut, batch: Batch, result: Any) -> None:
    assert result.total.ndim == 0 and torch.isfinite(result.total)
    assert result.extra is None or torch.isfinite(result.extra)
    assert all(torch.isfinite(v) and not v.requires_grad for v in result.parts.values())
    assert out.logits.grad is not None and torch.isfinite(out.logits.grad).all()
    if loss.name != "baseline":
        assert out.embedding.grad is not None and torch.isfinite(out.embedding.grad).all()
    assert all(t.grad is None for t in batch.teachers.values())  # teachers are constants
    for p in loss.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("modalities", MODALITY_SETS, ids="+".join)
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_forward_backward_on_a_mixed_batch(name: str, modalities: tuple[str, ...]) -> None:
    loss = make(name, modalities)
    mask = torch.tensor([True, False, True, True, False, True])
    out, batch = make_inputs(6, audio_mask=mask)
    result = run(loss, out, batch)
    check_finite_and_routed(loss, out, batch, result)
    # Every head the method owns is trained: some gradient, and it sits in an optimiser group.
    params = list(loss.parameters())
    assert all(p.grad.abs().sum() > 0 for p in params)
    grouped = [p for g in loss.param_groups() for p in g["params"]]
    assert {id(p) for p in grouped} == {id(p) for p in params} and len(grouped) == len(params)
    if loss.name != "baseline":
        assert out.embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["batch1", "batch2", "no_audio_rows", "single_class"])
@pytest.mark.parametrize("modalities", MODALITY_SETS, ids="+".join)
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_survives_degenerate_batches(name: str, modalities: tuple[str, ...], case: str) -> None:
    loss = make(name, modalities)
    if case == "batch1":
        out, batch = make_inputs(1)
    elif case == "batch2":
        out, batch = make_inputs(2)
    elif case == "no_audio_rows":
        out, batch = make_inputs(4, audio_mask=torch.zeros(4, dtype=torch.bool))
    else:
        out, batch = make_inputs(5, single_class=True)
    result = run(loss, out, batch)
    check_finite_and_routed(loss, out, batch, result)
    if case == "no_audio_rows" and "audio" in loss.modalities:
        audio_parts = [k for k in result.parts if k.endswith("_audio") and not k.startswith("rows")]
        assert audio_parts and all(result.parts[k].item() == 0.0 for k in audio_parts)


@pytest.mark.parametrize("name", ["fitnet", "pkt", "cor", "rkd"])
def test_registered_baselines_compute_exactly_the_functional_formula(name: str) -> None:
    from ccl_cache.losses import functional as fn

    loss = make(name, ("audio", "image"))
    mask = torch.tensor([True, True, False, True, True, True])
    out, batch = make_inputs(6, audio_mask=mask)
    result = loss(out, batch)
    beta = loss.opts.beta
    expected = torch.nn.functional.cross_entropy(out.logits, batch.label)
    for m in ("audio", "image"):
        rows = mask if m == "audio" else torch.ones(6, dtype=torch.bool)
        s, t = out.embedding[rows], batch.teachers[m][rows]
        if name == "fitnet":
            kd = fn.fitnet(s, t, loss.regressors[m])
        elif name == "pkt":
            kd = fn.pkt(s, t)
        elif name == "cor":
            kd = fn.correlation_congruence(loss.embed_student[m](s), loss.embed_teacher[m](t))
        else:
            kd = fn.rkd(s, t)
        assert result.parts[f"kd_{m}"].item() == kd.item()
        expected = expected + beta * kd
    assert result.total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_batch_validation_names_the_problem() -> None:
    out, batch = make_inputs(4)
    with pytest.raises(ConfigError, match=r"batch.teachers\['audio'\] has shape \(4, 12\), expected \(4, 99\)"):
        wrong = build_loss(
            "pkt", num_classes=C, student_dim=DS, teacher_dims={"audio": 99}, modalities=("audio",), dataset_size=N
        )
        wrong(out, batch)
    del batch.teachers["image"]
    with pytest.raises(ConfigError, match="needs image teacher embeddings"):
        make("rkd", ("image",))(out, batch)
    batch.index = None
    with pytest.raises(ConfigError, match="needs dataset row indices"):
        make("crd", ("audio",))(out, batch)
    with pytest.raises(ConfigError, match="student embedding has shape"):
        make("fitnet", ("audio",))(StudentOut(out.logits, torch.randn(4, 3)), batch)


@pytest.mark.parametrize("name", LOSSES.names())
def test_half_precision_student_outputs_give_a_float32_loss(name: str) -> None:
    loss = make(name, ("audio", "image"))
    out, batch = make_inputs(6)
    half = StudentOut(out.logits.half(), out.embedding.half())
    result = loss(half, batch)
    assert result.total.dtype == torch.float32 and torch.isfinite(result.total)


def test_batch_to_moves_every_tensor() -> None:
    _, batch = make_inputs(3)
    moved = batch.to("cpu")
    assert moved is not batch and torch.equal(moved.index, batch.index)
    assert set(moved.teachers) == {"audio", "image"} and set(moved.masks) == {"audio"}


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_runs_without_waiting_for_the_device(name: str) -> None:
    """No host sync in a training step's loss: on the ``meta`` device every data-dependent op
    (``.item()``, ``bool(t)``, a boolean-mask selection) raises, so forward and backward running
    there prove the CUDA step never waits. ``Batch.to`` reads the present rows off the host masks;
    selecting by them gives exactly what selecting by the mask gives."""
    mask = torch.tensor([True, False, True, True, False, True])
    out, host = make_inputs(6, audio_mask=mask)
    moved = host.to("cpu")
    assert list(moved.present) == ["audio"] and torch.equal(moved.present["audio"], torch.tensor([0, 2, 3, 5]))
    by_mask, by_rows = make(name, ("audio", "image"))(out, host), make(name, ("audio", "image"))(out, moved)
    assert torch.equal(by_mask.total, by_rows.total)

    loss = make(name, ("audio", "image")).to("meta")
    meta = host.to("meta")
    meta_out = StudentOut(logits=out.logits.detach().to("meta").requires_grad_(),
                          embedding=out.embedding.detach().to("meta").requires_grad_())
    loss._check_batch(meta_out, meta)
    result = loss.compute(meta_out, meta)  # forward() adds autocast, which has no meta device
    (result.total if result.extra is None else result.total + result.extra).backward()
    assert meta_out.logits.grad is not None and meta_out.logits.grad.device.type == "meta"
