"""Distributed training on CPU: two gloo processes, one of which sees no clip with audio.

Both must finish (no hang: a deadline kills them), without NaN, with identical student weights
and identical loss heads (their gradients are all-reduced every step, a missing one as zero).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from fixtures_distill import make_store, tiny_config

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.timeout(420)]
WORLD = 2
DEADLINE_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join_env(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def step_worker(rank: int, port: int, out: str) -> None:
    """Three train_steps of CCL (audio + image) under DDP; rank 1's batches have no audio at all."""
    from ccl_cache import train as T
    from ccl_cache.losses import Batch, build_loss
    from ccl_cache.students import build_student

    join_env(rank, port)
    info = T.init_distributed("cpu")
    try:
        T.seed_everything(0, deterministic=True)
        student = build_student("small", 3, width=4)
        loss_fn = build_loss("ccl", num_classes=3, student_dim=512, teacher_dims={"audio": 6, "image": 5},
                             modalities=("audio", "image"), dataset_size=12)
        initial = {k: v.clone() for k, v in loss_fn.state_dict().items()}
        model = T.wrap_distributed(student, loss_fn, info, seed=0)
        optimizer, _ = T.build_optimizer(student, loss_fn, T.TrainConfig(store="unused", lr=0.05))
        parts = []
        for step in range(3):
            g = torch.Generator().manual_seed(100 * rank + step)
            batch = Batch(video=torch.randn(4, 3, 4, 16, 16, generator=g), label=torch.tensor([0, 1, 2, 0]),
                          index=torch.arange(4) + 4 * rank,
                          teachers={"audio": torch.rand(4, 6, generator=g), "image": torch.rand(4, 5, generator=g)},
                          masks={"audio": torch.full((4,), rank == 0), "image": torch.ones(4, dtype=torch.bool)})
            result = T.train_step(model, loss_fn, optimizer, batch, world=info.world)
            parts.append({"total": float(result.total), "extra": float(result.extra),
                          "rows_audio": float(result.parts["rows_audio"])})
        torch.save({"student": {k: v.detach() for k, v in student.named_parameters()},
                    "heads": {k: v.detach() for k, v in loss_fn.named_parameters()},
                    "initial": initial, "parts": parts}, Path(out) / f"rank{rank}.pt")
    finally:
        T.shutdown_distributed(info)


def train_worker(rank: int, port: int, out: str, store: str) -> None:
    """The whole trainer (setup → fit → finish) as torchrun would run it."""
    from ccl_cache import train as T

    join_env(rank, port)
    info = T.init_distributed("cpu")
    try:
        run = T.setup(tiny_config(Path(store), Path(out) / "run", epochs=2, batch_size=2), info, None)
        T.fit(run)
        trained = {k: v.clone() for k, v in run.student.state_dict().items()}  # finish() loads best.pt on rank 0
        summary = T.finish(run)
        torch.save({"student": trained, "summary": summary, "steps": run.state.global_step},
                   Path(out) / f"rank{rank}.pt")
    finally:
        T.shutdown_distributed(info)


def launch(fn: Any, *args: Any) -> None:
    """Spawn WORLD processes running ``fn(rank, *args)``; fail (and kill them) past the deadline."""
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed run did not finish in {DEADLINE_S} s (hang)")


def load_ranks(folder: Path) -> list[dict[str, Any]]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_a_rank_without_audio_neither_hangs_nor_breaks_the_heads(tmp_path: Path) -> None:
    launch(step_worker, free_port(), str(tmp_path))
    r0, r1 = load_ranks(tmp_path)
    assert all(p["rows_audio"] == 4 for p in r0["parts"]) and all(p["rows_audio"] == 0 for p in r1["parts"])
    for parts in (r0["parts"], r1["parts"]):
        assert all(torch.isfinite(torch.tensor(list(p.values()))).all() for p in parts)
    for key in r0["student"]:
        assert torch.equal(r0["student"][key], r1["student"][key]), key
    for key in r0["heads"]:
        assert torch.equal(r0["heads"][key], r1["heads"][key]), key
    # The audio composition learnt on both ranks from rank 0's gradient alone (averaged with a zero).
    audio = [k for k in r0["heads"] if "audio" in k]
    assert audio and any(not torch.equal(r0["heads"][k], r0["initial"][k]) for k in audio)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_the_trainer_runs_under_two_processes(store: Path, tmp_path: Path) -> None:
    launch(train_worker, free_port(), str(tmp_path), str(store))
    r0, r1 = load_ranks(tmp_path)
    assert r0["steps"] == r1["steps"] == 2 * (9 // 2 // WORLD)  # 9 train clips, padded and sharded
    for key in r0["student"]:
        assert torch.equal(r0["student"][key], r1["student"][key]), key
    assert r0["summary"]["world_size"] == WORLD and r1["summary"] == {}
    assert r0["summary"]["embeddings"]["written"] and r0["summary"]["test"]["videos"] == 6
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
