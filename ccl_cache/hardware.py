"""The machine a command runs on: usable cores, what the CPU and GPU compute fast (mixed
precision), the one device resolver every command uses, and this process's place in a torchrun
job (read once from its environment variables)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEVICE_CHOICES", "Launch", "check_device_name", "cpu_has_bf16", "cuda_has_bf16", "gpu_driver", "launch",
           "local_gpu", "resolve_device", "usable_cores"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")  # and "cuda:N"

CPUINFO = "/proc/cpuinfo"
# CPU flags of native bfloat16 arithmetic: x86's AVX512-BF16 and AMX-BF16 (the "flags"
# line), ARM's BF16 extension (the "Features" line).
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# What a loaded GPU driver leaves on Linux: NVIDIA's kernel module (its /proc entry and control
# device, also inside containers given a GPU), WSL's GPU paravirtualisation, ROCm's kernel driver
# (torch.cuda covers AMD GPUs in ROCm builds).
GPU_DRIVER_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None) -> int:
    """An integer environment variable of torchrun's (ConfigError naming it when unset or bad)."""
    from ccl_cache.errors import ConfigError

    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"environment variable {name}={raw!r}: expected an integer (torchrun sets it); "
                          "unset WORLD_SIZE to run in one process") from None


def launch() -> Launch:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; without WORLD_SIZE (or with 1) a
    single process, whose GPU is still its LOCAL_RANK's when that is set."""
    world = _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return Launch(local_rank=local)
    return Launch(_env_int("RANK", None), world, local)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a job scheduler's share, not the
    machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags /proc/cpuinfo lists (x86 "flags", ARM "Features"); None where it
    cannot be read (not Linux)."""
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: AVX512-BF16 or AMX-BF16 on x86, the BF16
    extension on ARM, read from /proc/cpuinfo (no torch import).

    Elsewhere bfloat16 is emulated and slower than float32, so callers keep float32 there. Where
    /proc/cpuinfo cannot be read, oneDNN's probe through torch answers.
    """
    flags = _cpu_flags()
    if flags is not None:
        return bool(flags & CPU_BF16_FLAGS)
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def gpu_driver() -> str | None:
    """What shows a GPU driver on this machine (a path from :data:`GPU_DRIVER_PATHS`, or
    nvidia-smi on the PATH), None where nothing does: then ``torch.cuda.is_available()`` is False
    and nothing needs to import torch to know it. Off Linux the driver cannot be seen this way, so
    the answer is "unknown" (ask torch)."""
    if not sys.platform.startswith("linux"):
        return "unknown"
    found = next((p for p in GPU_DRIVER_PATHS if Path(p).exists()), None)
    return found or shutil.which("nvidia-smi")


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


def check_device_name(name: str) -> str:
    """The name's form only (config validation, without importing torch)."""
    from ccl_cache.errors import ConfigError

    if name not in DEVICE_CHOICES and not (isinstance(name, str) and name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"device {name!r}: choose auto, cpu, cuda or cuda:N")
    return name


def resolve_device(name: str, where: Launch | None = None) -> Any:
    """``"auto"`` (a GPU when CUDA is available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
    as a ``torch.device``; a GPU asked for where there is none is a ConfigError, not a CUDA error.

    Under torchrun (``where``, default :func:`launch`) a plain GPU means this process's own, that of
    its LOCAL_RANK, and ``cuda:N`` is refused in a job of several processes (every rank would take
    GPU N).
    """
    import torch

    from ccl_cache.errors import ConfigError

    check_device_name(name)
    where = launch() if where is None else where
    if where.world > 1 and name.startswith("cuda:"):
        raise ConfigError(f"device {name!r} under torchrun ({where.world} processes): each process takes the GPU "
                          "of its LOCAL_RANK; pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here; pass --device cpu")
        if name != "cuda" and int(name[5:]) >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine shows {torch.cuda.device_count()} GPU(s) "
                              "(numbered from 0); pick one of them")
        if name == "cuda" and (where.world > 1 or "LOCAL_RANK" in os.environ):
            return torch.device(f"cuda:{local_gpu(where.local_rank)}")  # one GPU per torchrun process
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
