"""Training checkpoints: atomic, ``torch.load(weights_only=True)``-safe, resumable exactly.

A checkpoint holds everything the next step depends on: model and loss-module state (heads,
memory banks), optimiser, scheduler and AMP scaler state, the RNG states of Python, NumPy and
torch (CPU and CUDA), the epoch, the global step and the data position (epoch and batches
already consumed in it; the sampler's order is a pure function of ``seed`` and ``epoch``).
Only tensors and builtins are stored, so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ccl_cache.errors import CheckpointError
from ccl_cache.fileio import atomic_path

FORMAT = "ccl-cache-checkpoint"
VERSION = 1


@dataclass
class TrainState:
    """Where a run stands: completed epochs, batches consumed in the current one, best val."""

    epoch: int = 0  # the epoch being trained (0-based); equals epochs when finished
    step_in_epoch: int = 0  # batches of `epoch` already trained (0 at an epoch boundary)
    global_step: int = 0
    best_val: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch val metrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainState":
        return cls(**{k: data[k] for k in cls().to_dict()})


def capture_rng() -> dict[str, Any]:
    """RNG states of Python, NumPy (legacy global) and torch as tensors/lists (weights_only-safe)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].cpu().numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    # torch takes RNG states as CPU tensors only, wherever the checkpoint was loaded.
    torch.set_rng_state(state["torch"].cpu())
    # A CPU resume of a CUDA run (or the reverse) keeps going; only matching devices restore.
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def content_sha256(payload: Mapping[str, Any]) -> str:
    """SHA-256 of every tensor in ``payload`` (names, dtypes, shapes and bytes, in a fixed order):
    recorded at save and checked at load, so flipped or replaced bytes in a checkpoint's weights
    are named, not trained on or searched with. The file's own bytes are not hashed: the digest
    travels inside the file, so a crash can never leave a digest and a file that disagree."""
    h = hashlib.sha256()

    def walk(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                walk(f"{name}/{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{name}/{i}", item)

    walk("", {k: v for k, v in payload.items() if k != "sha256"})
    return h.hexdigest()


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (tensors and builtins only) atomically: a crash keeps the old file. The
    tensors' :func:`content_sha256` is stored with them."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    data["sha256"] = content_sha256(data)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def refused_global(exc: pickle.UnpicklingError) -> str | None:
    """The line of a ``weights_only`` error naming the Python object (GLOBAL) it would not load, or
    None when the error is about the bytes themselves (junk, a truncated file)."""
    lines = [line.strip() for line in str(exc).splitlines() if "global" in line.lower()]
    return lines[0] if lines else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; CheckpointError when missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no checkpoint here; train first (ccl-cache distill ... --out {path.parent.parent})"
            " or pass the run directory that holds checkpoints/last.pt"
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = refused_global(exc)
        if blocked is None:  # not a pickle at all (junk, truncated): the generic message below
            raise CheckpointError(
                f"{path}: cannot be read as a ccl-cache checkpoint (not a torch.save file); delete it "
                "and resume from the other checkpoint, or retrain"
            ) from exc
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and builtins, "
            f"which torch.load(weights_only=True) will not execute ({blocked}); it was not written by "
            "ccl-cache. Use a checkpoint from a run you trust, or retrain"
        ) from exc
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise CheckpointError(
            f"{path}: cannot be read as a ccl-cache checkpoint ({type(exc).__name__}: {exc}); "
            "delete it and resume from the other checkpoint, or retrain"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a ccl-cache checkpoint (format={FORMAT!r} expected)")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {data.get('version')!r}, this ccl-cache reads {VERSION}; "
            "retrain or use the ccl-cache version that wrote it"
        )
    if "sha256" in data and content_sha256(data) != data["sha256"]:  # older checkpoints hold none
        raise CheckpointError(
            f"{path}: damaged: its weights do not match the SHA-256 recorded when it was saved (changed bytes "
            "on disk); resume or load from the other checkpoint (best.pt / last.pt), restore it from a copy, or retrain"
        )
    for name, tensor in (data.get("model") or {}).items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"{path}: the student's weights hold NaN or infinite values ({name!r}): the run diverged before "
                "this checkpoint was saved; use the other checkpoint (best.pt / last.pt), or retrain with a lower "
                "--lr, --grad-clip or --amp off"
            )
    return data


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: frozenset[str]
) -> list[str]:
    """Names (with both values) of the config fields that differ, skipping ``ignore``."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        if saved.get(key) != current.get(key):
            diffs.append(f"{key}: checkpoint={saved.get(key)!r} now={current.get(key)!r}")
    return diffs


def check_resume_config(
    path: str | Path, saved: Mapping[str, Any], current: Mapping[str, Any], ignore: frozenset[str]
) -> None:
    """CheckpointError naming every differing field when resuming with another configuration."""
    diffs = config_differences(saved, current, ignore)
    if diffs:
        raise CheckpointError(
            f"{path}: cannot resume, the configuration differs from the checkpoint's: "
            + "; ".join(diffs)
            + ". Resume with the original options, or start a new run with another --out"
        )
