"""Session fixtures: one tiny end-to-end pipeline (synthetic mp4s → teachers → Zarr store → a
trained CCL student → FAISS index), built once per test session and shared read-only.

Loaded from ``tests/conftest.py`` as a pytest plugin. Tests that write to any of these files must
copy them first (``shutil.copytree``): other tests read the same ones. Built with the demo's own
steps (:mod:`ccl_cache.experiments.demo`), so the fixture and ``ccl-cache demo`` cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ccl_cache.experiments.demo import DemoConfig, DemoPaths, build_index, distill, extract_store, make_dataset, teach_teachers


@dataclass(frozen=True)
class Pipeline:
    """Paths of the shared pipeline's outputs (treat as read-only)."""

    root: Path
    manifest: Path
    store: Path
    audio_weights: Path
    image_weights: Path
    run: str  # the student run's name in the store
    run_dir: Path  # its `ccl-cache distill --out` directory
    index: Path  # exact index of the run's train split
    classes: tuple[str, ...]
    config: DemoConfig


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """4 classes × 8 clips of 1 s at 64² (+ 6 pretrain clips per class), small teachers trained
    for 2 epochs, a `small` student trained with CCL for 2 epochs: about 30 s on 2 CPU cores."""
    root = tmp_path_factory.mktemp("pipeline")
    config = DemoConfig.quick(out=str(root), teach_epochs=2, epochs=2, methods=("ccl",))
    paths = DemoPaths(root)
    manifest = make_dataset(config, paths)
    teach_teachers(config, paths, manifest)
    extract_store(config, paths)
    distill(config, paths, "ccl")
    build_index(config, paths, "ccl")
    return Pipeline(root=root, manifest=paths.manifest, store=paths.store, audio_weights=paths.teacher("audio"),
                    image_weights=paths.teacher("image"), run="ccl", run_dir=paths.run("ccl"), index=paths.index,
                    classes=tuple(manifest.classes), config=config)
