"""A trained student's embeddings of a store: what ``ccl-cache embed`` and ``ccl-cache retrieve`` use.

Every clip of the store is embedded (non-overlapping windows averaged) under
``/students/<run>/``; :func:`load_student` gives a finished run's student back from its
checkpoint and ``config.yaml``.
"""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ccl_cache import hardware
from ccl_cache.errors import CheckpointError, ConfigError, StoreMismatchError
from ccl_cache.store.failures import usable_rows
from ccl_cache.students import build_student
from ccl_cache.train import checkpoint as ckpt
from ccl_cache.train.config import TrainConfig
from ccl_cache.train.evaluate import run_windows, window_loader
from ccl_cache.train.step import Amp


def load_weights(student: nn.Module, path: Path) -> dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``student``; returns the checkpoint's payload."""
    data = ckpt.load_checkpoint(path)  # CPU: only the weights go to the device, by load_state_dict
    student.load_state_dict(data["model"])
    return data


def embed_store(student: nn.Module, config: TrainConfig, store: str | Path, device: torch.device,
                attrs: Mapping[str, Any], expect_generation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the student's embedding of every clip of ``store`` (windows averaged) to
    ``/students/<run>/``; undecodable rows (failure ledger) get NaN (indexes skip them).

    ``expect_generation``: the store's :meth:`~ccl_cache.store.Store.generation` when the run read
    it; if the store or a teacher was replaced since (``extract --overwrite``), nothing is written
    and StoreMismatchError says so (the student learnt from embeddings that are gone)."""
    from ccl_cache.store import open_store

    with open_store(store, "r") as opened:
        n = opened.n
        ok, _ = usable_rows(opened, {})
    rows = np.flatnonzero(ok)
    cfg = replace(config, store=str(store))
    loader = window_loader(cfg, rows, None, device)
    result = run_windows(student, loader, device, Amp(cfg.amp if device.type == "cuda" else "off", device.type),
                         cfg.eval_batch_size or cfg.batch_size, cfg.channels_last)
    emb = np.full((n, result.embedding.shape[1]), np.nan, dtype=np.float32)
    emb[result.rows] = result.embedding
    # Read handles (this process's and the workers') must be gone before writing: HDF5 locks.
    loader.dataset.reader.close()
    del loader
    gc.collect()
    with open_store(store, "r+") as opened, opened.acquire_lease(command="ccl-cache embed"):
        if expect_generation is not None:
            now = opened.generation([k for k in expect_generation if k != "store"])
            if now != dict(expect_generation):
                changed = ", ".join(k for k in now if now[k] != expect_generation.get(k))
                raise StoreMismatchError(
                    f"{store}: replaced while this run trained ({changed}: rewritten, e.g. by `ccl-cache extract "
                    "--overwrite`); the student learnt from embeddings that are gone, so its embeddings were not "
                    "written. Train again on the store as it is now")
        opened.write_student(str(config.run_name), emb, {**attrs, "rows": int(len(rows)), "missing": int(n - len(rows))})
    return {"store": str(store), "run": config.run_name, "rows": int(len(rows)), "missing": int(n - len(rows)),
            "dim": int(emb.shape[1])}


def check_student_run_free(store: str | Path, run_name: str, run_dir: Path) -> None:
    """Refuse (before any work) to write embeddings under a name that holds another run's.

    Two runs in folders of the same name (``a/ccl`` and ``b/ccl``) would otherwise end with the
    second silently replacing the first's embeddings, which indexes and benchmarks were built on.
    """
    from ccl_cache.store import open_store

    with open_store(store) as opened:
        if run_name not in opened.student_runs():
            return
        owner = opened.student_attrs(run_name).get("run_dir")
    if owner is None or Path(owner) == run_dir.resolve():
        return
    raise ConfigError(f"{store}: student run {run_name!r} holds the embeddings of another run ({owner}); "
                      "pass --run-name with a new name to keep both (or, for distill, --no-embed)")


def load_student(run_dir: str | Path, checkpoint: str = "best", device: torch.device = torch.device("cpu")
                 ) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """A finished run's student from ``checkpoints/<checkpoint>.pt`` (eval mode, on ``device``),
    the run's resolved :class:`TrainConfig` (``config.yaml``) and the checkpoint payload."""
    import yaml

    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint {checkpoint!r}: choose best or last")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml; pass the --out directory of a `ccl-cache distill` run")
    try:
        saved = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: damaged ({type(exc).__name__}: {str(exc).splitlines()[0]}); restore it "
                              "from a copy or rewrite it from the run's checkpoint (its 'config')") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{cfg_path}: expected the run's settings (a mapping), got {type(saved).__name__}; "
                              "restore it from a copy or rewrite it from the run's checkpoint (its 'config')")
    config = TrainConfig.from_dict(saved)
    data = ckpt.load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")  # CPU; the weights move below
    student = build_student(config.student, int(data["num_classes"]), **config.student_options).to(device)
    student.load_state_dict(data["model"])
    return student.eval(), config, data


def embed_run(run_dir: str | Path, store: str | Path | None = None, checkpoint: str = "best",
              device: str = "auto", workers: int | None = None, run_name: str | None = None) -> dict[str, Any]:
    """(Re)write a trained run's student embeddings of every clip of ``store`` (default: the
    run's own store) from its ``best`` or ``last`` checkpoint, as ``/students/<run_name>``
    (default: the run's name)."""
    run_dir = Path(run_dir)
    dev = hardware.resolve_device(device)
    student, config, data = load_student(run_dir, checkpoint, dev)
    if run_name is not None:
        from ccl_cache.store.schema import validate_run

        validate_run(run_name)
    config = replace(config, device=str(dev), workers=config.workers if workers is None else workers,
                     amp=config.amp if dev.type == "cuda" else "off", run_name=run_name or config.run_name)
    attrs = {"method": config.method, "student": config.student, "checkpoint": checkpoint,
             "epoch": int(data["state"]["best_epoch"] if checkpoint == "best" else data["state"]["epoch"] - 1),
             "frames": config.frames, "size": config.size, "protocol": "non-overlapping windows averaged",
             "run_dir": str(run_dir.resolve())}
    check_student_run_free(store or config.store, str(config.run_name), run_dir)
    return embed_store(student, config, store or config.store, dev, attrs)
