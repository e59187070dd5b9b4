"""The training loop: gradient routing against a hand-computed SGD update, schedules, config
checks, and end-to-end runs on a real store (synth → extract → distill) writing every output."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ccl_cache import data as D
from ccl_cache import hardware
from ccl_cache import train as T
from ccl_cache.train import loop as train_loop
from ccl_cache.errors import CheckpointError, ConfigError, TrainingError
from ccl_cache.losses import Batch, DistillLoss, LossOutput, StudentOut, build_loss
from ccl_cache.losses.base import cross_entropy
from ccl_cache.store import open_store
from ccl_cache_cli.main import cli
from fixtures_distill import make_store, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ------------------------------------------------------------------------------ routing


class TinyStudent(nn.Module):
    """(B, 3, 2, 4, 4) → 8-d embedding → 3 logits."""

    embedding_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(1), nn.Linear(96, 8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, video: torch.Tensor) -> StudentOut:
        emb = self.features(video)
        return StudentOut(self.fc(emb), emb)


class HeadLoss(DistillLoss):
    """A method with a head: ``total`` reaches student and head, ``extra`` (detached student) the head."""

    name = "test_head"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.teacher_dims["audio"], self.student_dim)

    def compute(self, out: StudentOut, batch: Batch) -> LossOutput:
        target = self.head(batch.teachers["audio"])
        ce = cross_entropy(out.logits, batch.label)
        total = ce + ((out.embedding - target) ** 2).mean()
        extra = ((out.embedding.detach() * target).sum(1) ** 2).mean()
        return LossOutput(total, {"ce": ce.detach()}, extra)


def make_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        video=torch.randn(6, 3, 2, 4, 4, generator=g), label=torch.tensor([0, 1, 2, 0, 1, 2]),
        index=torch.arange(6), teachers={"audio": torch.rand(6, 5, generator=g), "image": torch.rand(6, 7, generator=g)},
        masks={"audio": torch.tensor([True, True, False, True, True, False]), "image": torch.ones(6, dtype=torch.bool)},
    )


def make_loss(kind: str) -> DistillLoss:
    common = dict(num_classes=3, student_dim=8, dataset_size=6, labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    if kind == "toy":
        return HeadLoss(teacher_dims={"audio": 5}, modalities=("audio",), **common)
    return build_loss("ccl", teacher_dims={"audio": 5, "image": 7}, modalities=("audio", "image"), **common)


@pytest.mark.parametrize("kind", ["toy", "ccl"])
def test_one_backward_routes_total_to_the_student_and_total_plus_extra_to_the_heads(kind: str) -> None:
    torch.manual_seed(0)
    student, loss_fn = TinyStudent(), make_loss(kind)
    config = T.TrainConfig(store="unused", lr=0.1, momentum=0.9, weight_decay=0.01, epochs=10)
    optimizer, _ = T.build_optimizer(student, loss_fn, config)
    s_params, h_params = list(student.parameters()), [p for g in loss_fn.param_groups() for p in g["params"]]
    assert len(h_params) > 0 and len(optimizer.param_groups) == 1 + len(loss_fn.param_groups())
    values = [p.detach().clone() for p in s_params + h_params]
    buffers = [torch.zeros_like(v) for v in values]
    for step in range(2):  # two steps: the second also checks the momentum buffers
        batch = make_batch(step)
        # Hand computation on a copy of the current weights.
        with torch.no_grad():
            for p, v in zip(s_params + h_params, values):
                p.copy_(v)
        result = loss_fn(student(batch.video), batch)
        g_student = torch.autograd.grad(result.total, s_params, retain_graph=True)
        g_heads = torch.autograd.grad(result.total + result.extra, h_params, retain_graph=True, allow_unused=True)
        leak = torch.autograd.grad(result.extra, s_params, allow_unused=True)
        assert all(g is None or g.abs().max() == 0 for g in leak)  # extra never reaches the student
        grads = list(g_student) + [torch.zeros_like(p) if g is None else g for p, g in zip(h_params, g_heads)]
        for i, (v, g) in enumerate(zip(values, grads)):
            buffers[i] = g + 0.01 * v if step == 0 else 0.9 * buffers[i] + g + 0.01 * v
        expected = [v - 0.1 * b for v, b in zip(values, buffers)]
        # The trainer's step from the same weights.
        T.train_step(student, loss_fn, optimizer, batch)
        for p, e in zip(s_params + h_params, expected):
            assert torch.allclose(p, e, atol=1e-6, rtol=1e-5)
        values = [p.detach().clone() for p in s_params + h_params]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_fused_optimizer_kernel_is_the_default_and_matches_the_loop(name: str) -> None:
    """The fused kernels compute the per-tensor loop's update; only the rounding may differ."""
    weights = []
    for fused in (True, False):
        torch.manual_seed(0)
        student, loss_fn = TinyStudent(), make_loss("ccl")
        config = T.TrainConfig(store="unused", optimizer=name, lr=0.05, fused_optimizer=fused)
        optimizer, _ = T.build_optimizer(student, loss_fn, config)
        assert optimizer.defaults["fused"] is (True if fused else None)
        for step in range(3):
            T.train_step(student, loss_fn, optimizer, make_batch(step))
        weights.append([p.detach().clone() for p in [*student.parameters(), *loss_fn.parameters()]])
    for a, b in zip(*weights):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert T.TrainConfig(store="x").fused_optimizer is True
    assert T.TrainConfig.from_dict({"store": "x"}).fused_optimizer is False  # configs saved before the field


def test_the_schedule_decays_ccls_student_only_and_a_baselines_heads_with_it() -> None:
    """CCL (docs/method.md#optimisation): MultiStepLR on the student optimiser only, the compositions constant.
    The baselines (RepDistiller): the heads sit in the student's optimiser and decay with it."""
    config = T.resolve_config(T.TrainConfig(store="unused", epochs=8, out="/tmp/x"), torch.device("cpu"))
    assert config.milestones == (4, 6)  # [150, 225] of 300 epochs, scaled to 8
    common = dict(num_classes=3, student_dim=8, dataset_size=6, labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    for loss_fn, heads_decay in ((make_loss("ccl"), False),
                                 (build_loss("fitnet", teacher_dims={"audio": 5}, modalities=("audio",), **common),
                                  True)):
        optimizer, scheduler = T.build_optimizer(TinyStudent(), loss_fn, config)
        lrs = []
        for _ in range(8):
            lrs.append([g["lr"] for g in optimizer.param_groups])
            scheduler.step()
        student_lr = [round(x[0], 12) for x in lrs]
        assert student_lr == [1e-3] * 4 + [1e-4] * 2 + [1e-5] * 2
        heads_lr = [{round(v, 12) for v in x[1:]} for x in lrs]
        assert len(lrs[0]) > 1 and heads_lr == [{lr if heads_decay else 1e-3} for lr in student_lr]
    paper = T.resolve_config(T.TrainConfig(store="unused", out="/tmp/x"), torch.device("cpu"))
    assert paper.milestones == (150, 225) and paper.amp == "off" and paper.run_name == "x"
    cosine = T.student_lr_factor(dataclasses.replace(config, schedule="cosine"))
    assert cosine(0) == 1.0 and abs(cosine(4) - 0.5) < 1e-9 and cosine(8) < 1e-12


def test_loader_workers_default_to_at_most_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed default of 4 made torch warn on every run of a 2-core machine (and queue)."""
    cpu, config = torch.device("cpu"), T.TrainConfig(store="unused", out="/tmp/x")
    monkeypatch.setattr(hardware, "usable_cores", lambda: 2)
    assert config.workers is None and T.resolve_config(config, cpu).workers == 2
    monkeypatch.setattr(hardware, "usable_cores", lambda: 64)
    assert T.resolve_config(config, cpu).workers == D.DEFAULT_WORKERS == 4
    assert T.resolve_config(dataclasses.replace(config, workers=6), cpu).workers == 6  # given: kept
    # The library's loaders take an unresolved config too (embed_store, a config.yaml without the key).
    monkeypatch.setattr(hardware, "usable_cores", lambda: 1)
    assert D.make_loader(torch.utils.data.TensorDataset(torch.zeros(2)), workers=None).num_workers == 1


@pytest.mark.parametrize("change, message", [
    ({"method": "nope"}, "method 'nope'"),
    ({"batch_size": 1}, "batch_size=1"),
    ({"optimizer": "lbfgs"}, "optimizer 'lbfgs'"),
    ({"milestones": (5, 2)}, "milestones"),
    # Were accepted and never decayed the rate (the epochs are past the run's end, or the
    # schedule ignores milestones):
    ({"epochs": 100, "milestones": (150, 225)}, r"milestones 150,225: .* from 1 to 100 \(--epochs 100\)"),
    ({"milestones": (0, 2)}, "milestones 0,2"),
    ({"schedule": "cosine", "milestones": (150, 225)}, "multistep only, not 'cosine'"),
    ({"frames": 0}, "frames=0"),
    ({"teachers": ()}, "distils from teachers"),
    ({"threads": 0}, "threads=0"),
    ({"grad_clip": "abc"}, "grad_clip='abc': expected float"),  # from --train-opt: was a TypeError
    ({"epochs": "3"}, "epochs='3': expected int"),
    ({"teachers": ("audio",), "loss_options": {"tau_image": 0.1}}, "tau_image concerns a teacher this run does not use"),
])
def test_bad_configs_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(T.TrainConfig(store="s"), **change).validate()


def test_amp_needs_cuda_or_bfloat16_units_and_nan_losses_stop_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="fp16.*needs a CUDA device.*--amp off"):
        T.resolve_amp("fp16", cpu)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="would be emulated.*--amp off"):
        T.resolve_amp("bf16", cpu)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert T.resolve_amp("bf16", cpu) == "bf16"
    assert T.resolve_amp("auto", cpu) == "off"  # opt-in on CPU
    meter = T.StepMeter()
    meter.add(LossOutput(torch.tensor(1.0), {"ce": torch.tensor(0.5)}), clips=4)
    meter.add(LossOutput(torch.tensor(3.0), {"ce": torch.tensor(1.5)}), clips=4)
    window = meter.flush()
    assert window["loss"] == {"total": 2.0, "ce": 1.0} and window["window_steps"] == 2
    meter.add(LossOutput(torch.tensor(float("nan")), {}), clips=4)
    with pytest.raises(TrainingError, match="non-finite"):
        meter.flush()


@pytest.mark.parametrize("native", [True, False])
def test_auto_amp_takes_bf16_only_on_gpus_that_compute_it(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (V100, T4): there
    auto stays float32. No GPU here, so torch's CUDA queries are stand-ins."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: asked.append(device) or contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert hardware.cuda_has_bf16() is native
    assert T.resolve_amp("auto", torch.device("cuda:1")) == ("bf16" if native else "off")
    assert asked == [None, torch.device("cuda:1")]  # the run's GPU is asked, not the current one


def test_an_explicit_gpu_index_is_refused_under_torchrun() -> None:
    with pytest.raises(ConfigError, match="'cuda:1' under torchrun.*--device cuda"):
        hardware.resolve_device("cuda:1", hardware.Launch(1, 2, 1))


def test_loader_wait_is_the_share_of_each_window_spent_waiting_for_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A starved device shows as loader wait in every metrics line (GPU-fed training)."""
    from ccl_cache.train import step

    clock = iter([0.0, 10.0, 10.0])  # the window starts at 0 s and is flushed at 10 s
    monkeypatch.setattr(step.time, "perf_counter", lambda: next(clock))
    meter = step.StepMeter()
    meter.add_wait(1.5)
    meter.add(LossOutput(torch.tensor(1.0), {}), clips=4)
    meter.add_wait(1.0)
    window = meter.flush()
    assert window["loader_wait"] == pytest.approx(0.25) and window["clips_per_s"] == pytest.approx(0.4)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("train"))


def check_outputs(out: Path, summary: dict[str, Any], store: Path, run: str) -> None:
    for name in ("config.yaml", "checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["run"] == run == summary["run"]
    assert 0.0 <= summary["test"]["video_top1"] <= 1.0 and summary["test"]["videos"] == 6
    assert summary["val"]["best_clip_top1"] is not None and summary["data"]["train"] == 9
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 2 and kinds.count("val") == 1 and kinds[-1] == "test"
    assert "total" in records[0]["loss"] and records[0]["clips_per_s"] > 0
    assert all(0.0 <= r["loader_wait"] <= 1.0 for r in records if r["kind"] == "train")
    # weights_only=True loading: tensors and builtins only.
    data = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert data["state"]["epoch"] == 1 and data["config"]["method"] == summary["method"]
    with open_store(store) as s:
        emb = s.student(run)
        assert emb.shape == (s.n, 512) and np.isfinite(emb).all()
        assert s.student_attrs(run)["method"] == summary["method"]


def test_distill_baseline_writes_every_output(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "base_run"
    summary = T.train(tiny_config(store, out, method="baseline"))
    assert summary["modalities"] == [] and summary["params"]["loss_heads"] == 0
    check_outputs(out, summary, store, "base_run")


def test_distill_ccl_from_the_cli_and_embed_again(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ccl_run"
    args = ["distill", str(store), "--method", "ccl", "--teachers", "audio,image", "--student", "small",
            "--student-opt", "width=8", "--epochs", "1", "--batch-size", "4", "--frames", "4", "--size", "32",
            "--workers", "0", "--device", "cpu", "--out", str(out), "--log-every", "1", "--quiet", "--json",
            "--loss-opt", "tau_audio=0.4", "--test-max-windows", "2", "--threads", "1"]
    threads, set_threads, calls = torch.get_num_threads(), torch.set_num_threads, []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or set_threads(n))
    result = CliRunner().invoke(cli, args)
    assert calls[0] == 1 and torch.get_num_threads() == threads  # --threads reached the run, then was given back
    assert result.exit_code == 0, result.output
    assert "threads: 1" in (out / "config.yaml").read_text()
    summary = json.loads(result.stdout)
    assert summary["modalities"] == ["audio", "image"] and summary["params"]["loss_heads"] > 0
    check_outputs(out, summary, store, "ccl_run")
    with open_store(store) as s:
        before = s.student("ccl_run")
    result = CliRunner().invoke(cli, ["embed", str(out), "--checkpoint", "last", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["rows"] == 18 and info["missing"] == 0
    with open_store(store) as s:
        assert np.allclose(s.student("ccl_run"), before, atol=1e-5)  # one epoch: best == last
        assert s.student_attrs("ccl_run")["checkpoint"] == "last"


@pytest.mark.parametrize("stop_on", ["start", "epoch"])
def test_ctrl_c_says_how_to_go_on_and_that_works(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 stop_on: str) -> None:
    """Ctrl-C in `distill` names the way on: --resume once a checkpoint exists, else a fresh start."""
    from ccl_cache_cli import distill as distill_cli

    out = tmp_path / f"stopped_{stop_on}"
    args = ["distill", str(store), "--method", "ccl", "--teachers", "audio,image", "--student", "small",
            "--student-opt", "width=8", "--epochs", "2", "--batch-size", "4", "--frames", "4", "--size", "32",
            "--workers", "0", "--device", "cpu", "--out", str(out), "--test-max-windows", "1", "--no-embed"]

    def interrupt(event: str, data: Any) -> None:
        if event == stop_on:
            raise KeyboardInterrupt

    monkeypatch.setattr(distill_cli, "progress_printer", lambda: interrupt)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "Aborted" in result.output  # click's Ctrl-C (the console script: 130)
    if stop_on == "start":
        assert "no checkpoint was saved yet" in result.output and "rerun the same command to start" in result.output
        assert not (out / "checkpoints" / "last.pt").exists()
    else:
        assert f"{out / 'checkpoints' / 'last.pt'} holds the last saved step" in result.output
        assert "rerun the same command with --resume" in result.output
        args.append("--resume")
    monkeypatch.setattr(distill_cli, "progress_printer", lambda: lambda event, data: None)
    resumed = CliRunner().invoke(cli, [*args, "--json"])  # what the hint says works
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["epochs"] == 2


@pytest.mark.parametrize("teachers", [("audio",), ("audio", "image")])
def test_clips_without_video_are_left_out_and_embedded_as_nan(tmp_path: Path, teachers: tuple[str, ...]) -> None:
    """An audio-only file is an image-stage failure (`no-video`, its audio kept). An audio-only
    run trained on it and failed in the loader; any run then failed writing the embeddings after
    training (the embedding pass read it too), losing the summary."""
    from ccl_cache.testing import make_case

    def no_video(manifest: Any) -> None:
        for split in ("train", "test"):
            record = next(r for r in manifest.records if r.split == split)
            shutil.copyfile(make_case("audio_only", tmp_path / "cases"), record.path)

    store = make_store(tmp_path, damage=no_video)
    with open_store(store) as s:
        bad = sorted(f["row"] for f in s.failures() if f["reason"] == "no-video")
        assert len(bad) == 2 and all(f["stage"] == "image" for f in s.failures() if f["row"] in bad)
    out = tmp_path / "run"
    summary = T.train(tiny_config(store, out, teachers=teachers))
    assert summary["data"]["train"] == 8 and summary["test"]["videos"] == 5
    assert summary["embeddings"]["written"] and summary["embeddings"]["missing"] == 2
    with open_store(store) as s:
        emb = s.student("run")
    assert np.isnan(emb[bad]).all() and not np.isnan(np.delete(emb, bad, axis=0)).any()
    assert (out / "summary.json").is_file()


def test_a_file_damaged_before_the_embedding_pass_is_reported_not_fatal(tmp_path: Path) -> None:
    """The embedding pass after training reads every clip again; a file damaged meanwhile failed
    the run, losing summary.json. Through a loader worker the MediaError arrives as a RuntimeError."""
    store = make_store(tmp_path)
    with open_store(store) as s:
        victim = Path(str(s.clips.path[int(np.flatnonzero(np.asarray(s.clips.split) == "train")[0])]))

    def damage_after_testing(event: str, data: Any) -> None:
        if event == "test":
            victim.write_bytes(b"not a video any more")

    out = tmp_path / "run"
    summary = T.train(tiny_config(store, out, workers=1, source="file"), progress=damage_after_testing)
    assert summary["embeddings"]["written"] is False and "ccl-cache embed" in summary["embeddings"]["fix"]
    assert json.loads((out / "summary.json").read_text())["test"] == summary["test"]


def test_a_store_replaced_while_training_gets_no_embeddings_and_the_command_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`extract --overwrite` while `distill` read the store: the student trained on embeddings that
    were replaced under it. Its embeddings are not written back, the summary says to retrain and
    the command exits non-zero (it exited 0)."""
    from ccl_cache_cli import distill as distill_cli

    store = make_store(tmp_path)

    def replace_teacher(event: str, data: Any) -> None:
        if event == "test":
            with open_store(store, "r+") as s:
                t = s.teacher("audio/small_audio")
                s.create_teacher("audio/small_audio", t.dim, t.frames, t.dtype, t.fingerprint, overwrite=True)

    monkeypatch.setattr(distill_cli, "progress_printer", lambda: replace_teacher)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["distill", str(store), "--method", "ccl", "--teachers", "audio,image",
                                      "--student", "small", "--student-opt", "width=8", "--epochs", "1",
                                      "--batch-size", "4", "--frames", "4", "--size", "32", "--workers", "0",
                                      "--device", "cpu", "--out", str(out), "--test-max-windows", "1"])
    assert result.exit_code == 1, result.output
    assert "replaced while this run trained (audio/small_audio" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["embeddings"]["written"] is False and "train again" in summary["embeddings"]["fix"]
    with open_store(store) as s:
        assert "run" not in s.student_runs()


def test_distill_refuses_a_store_that_a_live_writer_holds(tmp_path: Path) -> None:
    """`distill` on a store whose `extract --overwrite` was in progress trained on a third of its
    clips; a live writer's lease is now refused up front, naming the writer."""
    from ccl_cache.errors import StoreLockedError

    store = make_store(tmp_path)
    with open_store(store, "r+") as s, s.acquire_lease(command="ccl-cache extract --overwrite"):
        with pytest.raises(StoreLockedError, match="command: ccl-cache extract --overwrite.*distill would read"):
            T.train(tiny_config(store, tmp_path / "run"))
    assert T.train(tiny_config(store, tmp_path / "run"))["embeddings"]["written"]  # once the writer is gone


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_a_second_run_of_the_same_name_does_not_replace_the_first_runs_embeddings(store: Path, tmp_path: Path) -> None:
    """Regression: ``--out a/clash`` then ``--out b/clash`` both wrote /students/clash, the second
    silently replacing the first run's embeddings (which indexes had been built on)."""
    T.train(tiny_config(store, tmp_path / "a" / "clash"))
    with open_store(store) as s:
        first = s.student("clash")
    with pytest.raises(ConfigError, match=r"student run 'clash' holds the embeddings of another run .*--run-name"):
        T.train(tiny_config(store, tmp_path / "b" / "clash"))
    assert not (tmp_path / "b" / "clash" / "checkpoints").exists()  # refused before any training
    T.train(tiny_config(store, tmp_path / "b" / "clash", write_embeddings=False))
    with pytest.raises(ConfigError, match="another run"):
        T.embed_run(tmp_path / "b" / "clash")
    assert T.embed_run(tmp_path / "b" / "clash", run_name="clash_b")["run"] == "clash_b"
    T.embed_run(tmp_path / "a" / "clash")  # the same run may re-embed itself
    with open_store(store) as s:
        assert np.array_equal(s.student("clash"), first)
        assert s.student_attrs("clash_b")["run_dir"] == str((tmp_path / "b" / "clash").resolve())


def test_damaged_run_config_and_bad_torchrun_variables_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("store: [unclosed\n")
    with pytest.raises(CheckpointError, match=r"config.yaml: damaged \(ScannerError|config.yaml: damaged \(ParserError"):
        T.load_student(run)  # was a raw YAML error
    (run / "config.yaml").write_text("just text\n")
    with pytest.raises(CheckpointError, match="expected the run's settings"):
        T.load_student(run)
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(ConfigError, match="WORLD_SIZE='abc': expected an integer"):
        T.init_distributed("cpu")


def test_ragged_evaluation_chunks_skip_cudnn_autotuning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full chunks keep cuDNN autotuning; the last chunk of each loader batch (any size below
    ``chunk``) runs on heuristics, so an evaluation does not autotune every size it meets."""
    seen: list[tuple[int, bool]] = []

    class Recorder(nn.Module):
        def forward(self, video: torch.Tensor) -> StudentOut:
            seen.append((len(video), torch.backends.cudnn.benchmark))
            return StudentOut(logits=torch.zeros(len(video), 3), embedding=torch.ones(len(video), 2))

    def batch(counts: list[int]) -> dict[str, torch.Tensor]:
        owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        return {"video": torch.zeros(len(owner), 3, 2, 4, 4), "owner": owner, "label": torch.zeros(len(counts)),
                "index": torch.arange(len(counts)), "row": torch.arange(len(counts))}

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    result = T.run_windows(Recorder(), [batch([3, 4]), batch([2, 3])], torch.device("cpu"), T.Amp(), chunk=4)
    assert seen == [(4, True), (3, False), (4, True), (1, False)]
    assert torch.backends.cudnn.benchmark is True and result.embedding.shape == (4, 2)


@pytest.mark.skipif(not hardware.cpu_has_bf16(), reason="this CPU has no bfloat16 units")
def test_cpu_bf16_training_runs_under_autocast(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, torch.dtype | None]] = []
    step = T.train_step

    def spy(*args: Any, **kwargs: Any) -> Any:
        amp = kwargs["amp"]
        seen.append((amp.device_type, amp.dtype))
        return step(*args, **kwargs)

    monkeypatch.setattr(train_loop, "train_step", spy)
    out = tmp_path / "bf16_run"
    summary = T.train(tiny_config(store, out, amp="bf16", channels_last=True))
    assert seen and set(seen) == {("cpu", torch.bfloat16)}
    assert "amp: bf16" in (out / "config.yaml").read_text()
    check_outputs(out, summary, store, "bf16_run")


def test_a_run_gives_back_the_process_settings_it_changed(store: Path, tmp_path: Path) -> None:
    """Deterministic algorithms, cuDNN autotuning and the thread count are process-wide: after a
    run they are what they were, so that extraction or retrieval in the same process is unaffected."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.get_num_threads())
    T.train(tiny_config(store, tmp_path / "det", deterministic=True, threads=1, write_embeddings=False))
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            torch.get_num_threads()) == before


@pytest.mark.gpu
@pytest.mark.parametrize("options", [
    {"amp": "bf16", "channels_last": True, "workers": 2},  # pinned memory and non-blocking copies from workers
    {"amp": "fp16", "grad_clip": 1.0},                     # GradScaler, unscale before clipping, fused step
    {"amp": "auto", "compile": True},
    {"amp": "off", "method": "crd", "loss_options": {"nce_k": 4}},  # memory banks on the GPU
], ids=["bf16-channels_last-workers", "fp16-gradscaler", "auto-compile", "fp32-crd"])
def test_cuda_training_runs_end_to_end(options: dict[str, Any], store: Path, tmp_path: Path) -> None:
    """Every CUDA path of the trainer once, with audio missing on some rows (the present-row indices)."""
    out = tmp_path / "cuda_run"
    summary = T.train(tiny_config(store, out, device="cuda", epochs=2, **options))
    check_outputs(out, summary, store, "cuda_run")  # a non-finite loss would have raised TrainingError
    assert summary["device"].startswith("cuda")


@pytest.mark.slow
def test_compile_trains_through_torch_compile(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile: the training forward runs through torch.compile (~25 s to compile on CPU)."""
    models: list[type] = []
    step = T.train_step

    def spy(model: Any, *args: Any, **kwargs: Any) -> Any:
        models.append(type(model))
        return step(model, *args, **kwargs)

    monkeypatch.setattr(train_loop, "train_step", spy)
    out = tmp_path / "compiled_run"
    summary = T.train(tiny_config(store, out, method="baseline", compile=True))
    assert models and all(issubclass(m, torch._dynamo.eval_frame.OptimizedModule) for m in models)
    assert "compile: true" in (out / "config.yaml").read_text()
    check_outputs(out, summary, store, "compiled_run")


def test_an_hdf5_store_trains_reads_in_workers_and_takes_the_embeddings(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("h5")
    store = make_store(folder, ".h5")
    summary = T.train(tiny_config(store, folder / "h5run", method="fitnet", workers=1, teachers=("image",)))
    assert summary["modalities"] == ["image"] and summary["embeddings"]["written"]
    with open_store(store) as s:
        assert np.isfinite(s.student("h5run")).all()
