"""docs/add-your-method.md, done for real: a method in one class is picked up everywhere.

The test runs the page's own example (the first Python block after "A complete example", the
``cosine_hint`` file), registering it with the public decorator, then checks that the option
parser, the training config, the method table's grid and one real training step of the one loop
(``build_loss`` → ``build_optimizer`` → ``train_step``) all accept it without a line of code
elsewhere. So an edit that breaks the page's code fails here. The registry is restored afterwards
so other tests see the usual names; a ``cosine_hint`` a reader has added to the package for real
is set aside meanwhile, so the page and the reader's copy do not collide.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Iterator

import pytest
import torch

from ccl_cache.errors import ConfigError
from ccl_cache.losses import LOSSES, Batch, build_loss, loss_needs, loss_options, parse_loss_options
from ccl_cache.students import build_student
from ccl_cache.experiments.table import TableConfig
from ccl_cache.train import TrainConfig, build_optimizer, train_step

NAME = "cosine_hint"
CLASSES, B = 3, 6
PAGE = Path(__file__).resolve().parents[1] / "docs" / "add-your-method.md"


def example_code() -> str:
    """The page's complete example: the first ```python block after its heading."""
    text = PAGE.read_text(encoding="utf-8")
    after = text[text.index("## A complete example"):]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match, f"{PAGE}: no Python block under 'A complete example'"
    return match.group(1)


@pytest.fixture
def cosine_hint(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    """The example of docs/add-your-method.md, registered for this test only."""
    monkeypatch.setattr(LOSSES, "_entries", {k: v for k, v in LOSSES._entries.items() if k != NAME})
    module = types.ModuleType("add_your_method_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look the module up
    exec(compile(example_code(), str(PAGE), "exec"), module.__dict__)
    yield module.CosineHintLoss


def test_options_and_needs_come_from_the_class(cosine_hint: type) -> None:
    assert NAME in LOSSES.names()
    [beta] = loss_options(NAME)
    assert (beta.name, beta.type, beta.default) == ("beta", "float", 1.0)
    assert parse_loss_options(NAME, ["beta=2.5"]) == {"beta": 2.5}
    with pytest.raises(ConfigError, match="non-negative"):
        parse_loss_options(NAME, ["beta=-1"])
    with pytest.raises(ConfigError, match="valid options: beta"):
        parse_loss_options(NAME, ["gamma=1"])
    assert loss_needs(NAME, ("audio",)) == {"audio"}
    assert loss_needs(NAME, ("audio", "image")) == {"audio", "image"}


def test_trainer_config_and_method_table_pick_it_up(cosine_hint: type) -> None:
    TrainConfig(store="unused.zarr", method=NAME, loss_options={"beta": 2.0}).validate()
    table = TableConfig(store="unused.zarr", out="unused", methods=("all",), seeds=(1,),
                        loss_options={NAME: {"beta": 2.0}})
    table.validate()
    assert NAME in table.method_names() and table.method_names()[0] == "baseline"
    cells = [c for c in table.cells() if c.method == NAME]
    assert [c.name for c in cells] == [f"{NAME}-A-seed1", f"{NAME}-I-seed1", f"{NAME}-AI-seed1"]
    cfg = table.cell_config(cells[2])
    assert (cfg.method, cfg.teachers, cfg.loss_options) == (NAME, ("audio", "image"), {"beta": 2.0})


def _batch(audio_present: bool) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        video=torch.randn(B, 3, 4, 32, 32, generator=g), label=torch.arange(B) % CLASSES, index=torch.arange(B),
        teachers={"audio": torch.rand(B, 512, generator=g), "image": torch.rand(B, 20, generator=g)},
        masks={"audio": torch.full((B,), audio_present), "image": torch.ones(B, dtype=torch.bool)},
    )


@pytest.mark.parametrize("audio_present", [True, False], ids=["with-audio", "no-audio-rows"])
def test_one_step_of_the_training_loop(cosine_hint: type, audio_present: bool) -> None:
    torch.manual_seed(0)
    config = TrainConfig(store="unused.zarr", method=NAME, student="small", lr=0.05, loss_options={"beta": 3.0})
    student = build_student("small", CLASSES, width=4)
    loss_fn = build_loss(NAME, num_classes=CLASSES, student_dim=student.embedding_dim,
                         teacher_dims={"audio": 512, "image": 20}, modalities=("audio", "image"),
                         dataset_size=B, labels=torch.arange(B) % CLASSES, **config.loss_options)
    optimizer, _ = build_optimizer(student, loss_fn, config)
    assert [g["name"] for g in optimizer.param_groups] == ["student", f"{NAME}_heads"]
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    student_before = student.fc.weight.detach().clone()

    result = train_step(student, loss_fn, optimizer, _batch(audio_present))

    assert torch.isfinite(result.total) and result.extra is None
    assert set(result.parts) == {"ce", "kd_audio", "kd_image"}
    kd_audio = float(result.parts["kd_audio"])
    assert (kd_audio > 0) if audio_present else kd_audio == 0.0  # masked rows never count
    # total = CE + β Σ_m kd_m: the option reached the loss
    expected = result.parts["ce"] + 3.0 * (result.parts["kd_audio"] + result.parts["kd_image"])
    assert torch.allclose(result.total.detach(), expected)
    # The head is in the optimiser and learns; without audio rows its audio map gets no signal.
    assert not torch.equal(before["regressors.image.weight"], loss_fn.regressors["image"].weight)
    audio_grad = loss_fn.regressors["audio"].weight.grad
    assert audio_grad is not None and bool(audio_grad.abs().sum() > 0) == audio_present
    assert not torch.equal(student_before, student.fc.weight)
