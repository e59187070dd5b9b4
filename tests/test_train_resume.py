"""Checkpoints and resume: a run stopped mid-epoch (injected exception or SIGKILL) and resumed
reaches exactly the weights of an uninterrupted run (deterministic mode, CPU, workers=0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch

from ccl_cache import train as T
from ccl_cache.train import loop as train_loop
from ccl_cache.errors import CheckpointError, ConfigError
from ccl_cache.train.checkpoint import load_checkpoint, save_checkpoint
from fixtures_distill import make_store, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
STOP_AT = 5  # global step; 9 train clips / batch 3 = 3 steps per epoch: step 5 is mid epoch 2


class Stop(Exception):
    pass


def stop_at(step: int) -> Any:
    def progress(event: str, data: Mapping[str, Any]) -> None:
        if event == "steps" and data["global_step"] == step:
            raise Stop(f"injected at step {step}")

    return progress


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("resume"))


def config(store: Path, out: Path, method: str, **changes: Any) -> T.TrainConfig:
    options = {"nce_k": 4} if method == "crd" else {}
    return tiny_config(store, out, **{"method": method, "loss_options": options, "epochs": 2, "batch_size": 3,
                                      "deterministic": True, "save_every": 1, "write_embeddings": False, **changes})


@pytest.fixture(scope="module")
def reference(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs, one per method."""
    runs = {}
    for method in ("ccl", "crd"):
        out = tmp_path_factory.mktemp(f"ref_{method}")
        T.train(config(store, out, method))
        runs[method] = out
    return runs


def train_losses(out: Path) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records if r["kind"] == "train"]
    assert len(steps) == len(set(steps)), "a resumed run must not log a step twice"
    return {r["global_step"]: r["loss"] for r in records if r["kind"] == "train"}


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert ca["state"]["global_step"] == cb["state"]["global_step"] == 6
    for part in ("model", "loss"):
        assert ca[part].keys() == cb[part].keys()
        for key in ca[part]:
            assert torch.equal(ca[part][key], cb[part][key]), f"{part}.{key} differs"
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert train_losses(a) == train_losses(b)
    assert ca["state"]["history"] == cb["state"]["history"]


@pytest.mark.parametrize("method", ["ccl", "crd"])  # heads; heads + memory banks + random negatives
def test_an_interrupted_run_resumes_to_the_same_weights(method: str, store: Path, reference: dict[str, Path],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Stop):
        T.train(config(store, out, method), progress=stop_at(STOP_AT))
    state = load_checkpoint(out / "checkpoints" / "last.pt")["state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, STOP_AT - 1)
    summary = T.train(config(store, out, method, resume=True))
    assert summary["global_step"] == 6
    assert_same_run(reference[method], out)


def test_a_kill_between_best_and_last_checkpoint_resumes(store: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: last.pt was installed before best.pt, so a kill in between left a last.pt naming
    a best epoch whose weights best.pt never got, and every resume then failed at the end."""
    whole = T.train(config(store, tmp_path / "whole", "ccl", epochs=1))
    real = train_loop.shutil.copyfile

    def dies(*args: Any, **kwargs: Any) -> Any:
        raise Stop("killed between the two checkpoint files")

    monkeypatch.setattr(train_loop.shutil, "copyfile", dies)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        T.train(config(store, out, "ccl", epochs=1))
    monkeypatch.setattr(train_loop.shutil, "copyfile", real)
    resumed = T.train(config(store, out, "ccl", epochs=1, resume=True))
    assert resumed["val"]["best_epoch"] == whole["val"]["best_epoch"] == 0
    assert resumed["test"] == whole["test"]
    a, b = (load_checkpoint(d / "checkpoints" / "best.pt")["model"] for d in (tmp_path / "whole", out))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_same_weights(store: Path, reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from ccl_cache.train import train
        from test_train_resume import config

        def progress(event, data):
            if event == "steps" and data["global_step"] == {STOP_AT}:
                os.kill(os.getpid(), signal.SIGKILL)

        train(config(Path({str(store)!r}), Path({str(out)!r}), "ccl"), progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not list((out / "checkpoints").glob(".*.tmp")), "no temporary file left behind"
    T.train(config(store, out, "ccl", resume=True))
    assert_same_run(reference["ccl"], out)


@pytest.mark.gpu
def test_a_cuda_run_resumes(store: Path, tmp_path: Path) -> None:
    """The checkpoint is read onto the CPU (torch takes RNG states as CPU tensors only; read onto
    the GPU, the resume crashed in restore_rng) and the weights go to the GPU by load_state_dict."""
    out = tmp_path / "cuda"
    with pytest.raises(Stop):
        T.train(config(store, out, "ccl", device="cuda"), progress=stop_at(STOP_AT))
    summary = T.train(config(store, out, "ccl", device="cuda", resume=True))
    assert summary["global_step"] == 6 and summary["device"].startswith("cuda")


def test_resume_refuses_another_configuration(store: Path, reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(reference["ccl"], out)
    with pytest.raises(CheckpointError, match=r"lr: checkpoint=0\.001 now=0\.01.*seed: checkpoint=1 now=2"):
        T.train(config(store, out, "ccl", resume=True, lr=0.01, seed=2))
    with pytest.raises(ConfigError, match="--resume"):
        T.train(config(store, out, "ccl"))
    (out / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        T.train(config(store, out, "ccl", resume=True))


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_a_checkpoint_from_before_fused_optimizer_resumes_with_the_loop(store: Path, tmp_path: Path) -> None:
    """A config saved before the field existed means the per-tensor loop (train.LEGACY_VALUES):
    resuming it asks for --no-fused-optimizer by name, and then continues exactly."""
    loop = tmp_path / "loop"
    T.train(config(store, loop, "ccl", fused_optimizer=False))
    out = tmp_path / "legacy"
    with pytest.raises(Stop):
        T.train(config(store, out, "ccl", fused_optimizer=False), progress=stop_at(STOP_AT))
    last = out / "checkpoints" / "last.pt"
    data = load_checkpoint(last)
    del data["config"]["fused_optimizer"]
    save_checkpoint(last, data)
    with pytest.raises(CheckpointError, match="fused_optimizer: checkpoint=False now=True"):
        T.train(config(store, out, "ccl", resume=True))
    T.train(config(store, out, "ccl", resume=True, fused_optimizer=False))
    assert_same_run(loop, out)


def test_resume_may_change_workers_and_logging(store: Path, reference: dict[str, Path], tmp_path: Path) -> None:
    """Fields that do not change the trajectory (workers, log_every) may differ on resume."""
    out = tmp_path / "free"
    with pytest.raises(Stop):
        T.train(config(store, out, "ccl"), progress=stop_at(STOP_AT))
    T.train(config(store, out, "ccl", resume=True, workers=1, log_every=2))
    ca = load_checkpoint(reference["ccl"] / "checkpoints" / "last.pt")
    cb = load_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])


def test_checkpoints_hold_only_tensors_and_builtins(reference: dict[str, Path]) -> None:
    path = reference["crd"] / "checkpoints" / "best.pt"
    data = torch.load(path, weights_only=True)
    assert {"model", "loss", "optimizer", "scheduler", "rng", "state", "config", "classes"} <= set(data)
    assert any(k.endswith("teacher") or "bank" in k for k in data["loss"]), "memory banks travel with the loss"
    assert os.path.getsize(path) > 0 and data["state"]["best_epoch"] in (0, 1)
