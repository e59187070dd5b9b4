"""ccl-cache: audio-visual knowledge distillation with cached teacher embeddings.

Implements "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (Chen, Xian,
Koepke, Shan, Akata, CVPR 2021) as a toolkit: teachers run once into a Zarr/HDF5 store, a video
student is distilled from the cached embeddings, and FAISS indexes the result. The rooms follow
the data: ``media`` → ``teachers`` → ``extract`` → ``store`` → ``data`` → ``losses`` + ``students``
→ ``train`` → ``search`` → ``evaluate``; ``experiments`` holds the synthetic dataset, the demo and
the method table. README.md shows the tree; docs/api.md the contracts.

The names a user starts from are importable from here; they load their room on first use, so
``import ccl_cache`` stays cheap (decode workers import it without torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from ccl_cache.errors import CclCacheError

__version__ = "0.1.0"

# name → (module, its name there), loaded on first access. The trainer is exported as ``distill``
# (the command's name): ``ccl_cache.train`` is the package of the training loop.
_EXPORTS = {
    "load_manifest": "ccl_cache.manifest",
    "open_store": "ccl_cache.store",
    "create_store": "ccl_cache.store",
    "ExtractConfig": "ccl_cache.extract",
    "run_extraction": "ccl_cache.extract",
    "TrainConfig": "ccl_cache.train",
    "distill": "ccl_cache.train:train",
    "build_loss": "ccl_cache.losses",
    "IndexConfig": "ccl_cache.search",
    "build_index": "ccl_cache.search",
    "index_store": "ccl_cache.search",
    "load_index": "ccl_cache.search",
}

__all__ = ["CclCacheError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'ccl_cache' has no attribute {name!r}")
    module, _, attr = where.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
