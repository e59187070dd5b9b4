"""Device names: one resolver for every command (train, teach, retrieve), errors that say the fix."""

from __future__ import annotations

import pytest
import torch

from ccl_cache import hardware
from ccl_cache.errors import ConfigError


@pytest.mark.parametrize("name, message", [("gpu", "choose auto, cpu, cuda or cuda:N"),
                                           ("cuda:x", "choose auto, cpu, cuda or cuda:N")])
def test_unknown_device_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hardware.resolve_device(name)


def test_a_gpu_that_is_not_there_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'cuda': CUDA is not available here; pass --device cpu"):
        hardware.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert hardware.resolve_device("auto") == torch.device("cuda")
    assert hardware.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="'cuda:2': this machine shows 2 GPU"):
        hardware.resolve_device("cuda:2")
