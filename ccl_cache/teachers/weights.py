"""Loading teacher weights: files (safely), built-in downloads, or random with a warning.

Weight files are read with ``torch.load(weights_only=True)``: a file that holds anything but
tensors and plain containers (for example a pickle that would run code when loaded) is refused.
Accepted layouts: a raw state dict; ``{"state_dict": ...}`` (including the checkpoints written
by ``ccl-cache teach``, format ``"ccl-cache-teacher"``); ``{"model": ...}`` (released PANNs
files). A ``module.`` prefix left by DataParallel/DDP is removed.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ccl_cache.errors import TeacherError
from ccl_cache.fileio import sha256_file
from ccl_cache.teachers.base import Teacher

RANDOM_SPECS = ("", "none", "random")
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl", ".tar")
_SHOW_KEYS = 5  # how many offending keys an error message lists


def is_random_spec(weights: str | Path | None) -> bool:
    """True for None / "none" / "random": the caller asks for untrained weights."""
    return weights is None or str(weights).strip().lower() in RANDOM_SPECS


def read_state_file(path: str | Path, arch: str | None = None) -> dict[str, Tensor]:
    """Read a weights file safely and return the backbone state dict it holds."""
    path = Path(path)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        blocked = [line.strip() for line in str(exc).splitlines() if "global" in line.lower()]
        if not blocked:  # junk bytes, not a refused Python object: the "not readable" message below
            raise TeacherError(
                f"{path}: not a readable PyTorch weights file (not a torch.save file); expected a file "
                "written by torch.save (a state dict or a `ccl-cache teach` checkpoint)"
            ) from exc
        first = blocked[0]
        raise TeacherError(
            f"{path}: refused to load: the file holds Python objects other than tensors, which "
            f"torch.load(weights_only=True) will not execute ({first}). Re-save only the weights "
            "with torch.save(model.state_dict(), path) from code you trust"
        ) from exc
    except Exception as exc:  # torch.load fails on junk with many types (KeyError, EOFError...)
        raise TeacherError(
            f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc}); expected "
            "a file written by torch.save (a state dict or a `ccl-cache teach` checkpoint)"
        ) from exc
    return unwrap_state(obj, path, arch)


def unwrap_state(obj: Any, path: str | Path, arch: str | None = None) -> dict[str, Tensor]:
    """Find the state dict inside the accepted file layouts (see module docstring)."""
    if not isinstance(obj, dict):
        raise TeacherError(f"{path}: holds a {type(obj).__name__}, expected a state dict (a dict of tensors)")
    if obj.get("format") == "ccl-cache-teacher" and arch is not None and obj.get("arch") != arch:
        raise TeacherError(
            f"{path}: is a `ccl-cache teach` checkpoint for arch {obj.get('arch')!r}, not {arch!r}; "
            f"use --arch {obj.get('arch')} or a checkpoint trained for {arch}"
        )
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad or not obj:
        raise TeacherError(
            f"{path}: expected a dict of tensors (a state dict); "
            + (f"entries {bad[:_SHOW_KEYS]} are not tensors" if bad else "it is empty")
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_state(teacher: Teacher, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``teacher.backbone``; any missing, unexpected or misshapen key is an error."""
    teacher.check_state(state, source)
    state = {k: v for k, v in state.items() if not k.startswith(teacher.ignore_prefixes)}
    expected = teacher.backbone.state_dict()
    # BatchNorm's counter is absent from old checkpoints and unused in eval mode.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or misshapen:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:_SHOW_KEYS])}{' ...' if len(keys) > _SHOW_KEYS else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshapen))
            if keys
        ]
        raise TeacherError(
            f"{source}: weights do not fit teacher {teacher.name!r} (arch {teacher.arch}): "
            + "; ".join(parts)
            + ". Check that the file was trained for this architecture"
        )
    teacher.backbone.load_state_dict(state, strict=False)


def _weights_hint(teacher: Teacher) -> str:
    """What to pass as weights for this teacher: built-in tags exist for the image ResNets only."""
    if teacher.modality == "image":
        return "an existing weights file (or 'imagenet' for the ResNet teachers)"
    return ("an existing weights file (for cnn14/cnn14_emb512 the released PANNs checkpoint, e.g. "
            "Cnn14_emb512*.pth, or a `ccl-cache teach` checkpoint)")


def apply_weights(teacher: Teacher, weights: str | Path | None) -> None:
    """Give ``teacher`` its weights and set ``teacher.weights`` to what its fingerprint records.

    ``weights``: None/"none"/"random" (random init, warned), a path to a weights file
    (recorded as its sha256), or a built-in tag such as "imagenet" (see ``pretrained_state``).
    """
    if is_random_spec(weights):
        teacher.weights = "random"
        warnings.warn(
            f"teacher {teacher.name!r} uses RANDOM weights (weights='random'): its embeddings "
            f"carry no learned knowledge. Pass {_weights_hint(teacher)} unless this is a smoke test",
            UserWarning,
            stacklevel=3,
        )
        return
    spec = str(weights)
    path = Path(spec).expanduser()
    if path.is_file():
        load_state(teacher, read_state_file(path, teacher.arch), str(path))
        teacher.weights = sha256_file(path)
        return
    if path.exists():
        raise TeacherError(f"weights {spec!r} is a directory; expected a weights file (.pth/.pt)")
    if "/" in spec or "\\" in spec or spec.lower().endswith(WEIGHT_SUFFIXES):
        raise TeacherError(f"weights file {spec!r} not found; pass {_weights_hint(teacher)}, or 'none' for random weights")
    state, label = teacher.pretrained_state(spec)
    load_state(teacher, state, label)
    teacher.weights = label
