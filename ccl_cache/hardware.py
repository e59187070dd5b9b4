"""What the CPU and GPU can do fast, for the choices that depend on it (mixed precision)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["cpu_has_bf16", "cuda_has_bf16", "local_gpu", "resolve_device", "usable_cores"]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a job scheduler's share, not the
    machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX).

    Elsewhere bfloat16 is emulated and slower than float32, so callers keep float32 there.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def cuda_has_bf16(device: Any = None) -> bool:
    """Whether the CUDA GPU ``device`` (default: the current one) computes bfloat16 natively
    (compute capability 8.0 or newer).

    ``torch.cuda.is_bf16_supported()`` alone also says yes on older GPUs (V100, T4) where a bf16
    tensor can merely be created and the maths is emulated, slower than float32; and it asks
    about the current GPU, which is not ``cuda:N`` unless someone called ``set_device``.
    """
    import torch

    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_device(name: str) -> Any:
    """``"auto"`` (a GPU when CUDA is available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
    as a ``torch.device``; a GPU asked for where there is none is a ConfigError, not a CUDA error."""
    import torch

    from ccl_cache.errors import ConfigError

    if name not in ("auto", "cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"device {name!r}: choose auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here; pass --device cpu")
        if name != "cuda" and int(name[5:]) >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine shows {torch.cuda.device_count()} GPU(s) "
                              "(numbered from 0); pick one of them")
    return torch.device(name)


def local_gpu(local_rank: int) -> int:
    """The GPU index of the torchrun process ``LOCAL_RANK``: the rank itself, or 0 where the
    launcher shows each process only its own GPU (CUDA_VISIBLE_DEVICES per rank); more ranks
    than visible GPUs is a ConfigError, not a CUDA "invalid device ordinal"."""
    import torch

    from ccl_cache.errors import ConfigError

    visible = torch.cuda.device_count()
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise ConfigError(f"LOCAL_RANK={local_rank} but this process sees {visible} GPU(s); launch at most "
                          f"{visible} processes per machine, or let each see its own GPU with CUDA_VISIBLE_DEVICES")
    return local_rank
