"""Shared pytest configuration: CPU by default, a `gpu` tier that runs only where CUDA exists."""

from __future__ import annotations

import pytest

# Shared, session-scoped pipeline fixtures (a tiny store with a trained run); see the module.
pytest_plugins = ["fixtures_pipeline"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
