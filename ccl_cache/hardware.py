"""What the CPU can do fast, for the choices that depend on it (mixed precision on CPU)."""

from __future__ import annotations

__all__ = ["cpu_has_bf16"]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX).

    Elsewhere bfloat16 is emulated and slower than float32, so callers keep float32 there.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False
