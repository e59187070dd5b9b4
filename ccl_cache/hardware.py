"""What the CPU and GPU can do fast, for the choices that depend on it (mixed precision)."""

from __future__ import annotations

__all__ = ["cpu_has_bf16", "cuda_has_bf16"]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX).

    Elsewhere bfloat16 is emulated and slower than float32, so callers keep float32 there.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def cuda_has_bf16() -> bool:
    """Whether the current CUDA GPU computes bfloat16 natively (compute capability 8.0 or newer).

    ``torch.cuda.is_bf16_supported()`` alone also says yes on older GPUs (V100, T4) where a bf16
    tensor can merely be created and the maths is emulated, slower than float32.
    """
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
