"""The README's Python API example, run as written on a small synthetic dataset.

The example reads ``data/manifest.csv`` and ``teachers/{audio,image}.pt`` (what the README's
steps 0 and 1 write) and writes ``av.zarr``, ``runs/ccl`` and ``idx/ccl``; the test makes those
inputs in a temporary folder (a tiny dataset and seeded random small teachers, so it stays fast)
and runs the code block there, unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ccl_cache.experiments.synth import SynthConfig, generate
from ccl_cache.store import open_store
from ccl_cache.testing.extraction import save_small_teachers

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Python API"


def readme_example() -> str:
    """The first ```python block after the README's "## Python API" heading."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    found = re.search(r"^```python\n(.*?)^```", text.split(HEADING, 1)[1], re.S | re.M)
    assert found, f"README.md: no ```python block after {HEADING!r}"
    return found.group(1)


@pytest.fixture
def readme_inputs(tmp_path: Path) -> Path:
    """``data/manifest.csv`` (3 classes × 6 clips of 1 s at 32²) and ``teachers/*.pt`` in tmp_path."""
    generate(tmp_path / "data", SynthConfig(classes=3, clips_per_class=6, duration=1.0, size=32,
                                            pretrain_clips_per_class=0, gap=0.3, seed=0), workers=1)
    teachers = tmp_path / "teachers"
    teachers.mkdir()
    audio, image = save_small_teachers(teachers, audio_seed=1, image_seed=2, image_size=64)
    audio.rename(teachers / "audio.pt")
    image.rename(teachers / "image.pt")
    return tmp_path


@pytest.fixture
def one_thread() -> Any:
    """One torch thread while the example trains: its tiny steps gain nothing from a shared pool."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.mark.slow  # in the full run, not the quick loop (see README)
@pytest.mark.filterwarnings("ignore:teacher .* uses RANDOM weights")
def test_readme_python_example_runs(readme_inputs: Path, monkeypatch: pytest.MonkeyPatch, one_thread: Any) -> None:
    monkeypatch.chdir(readme_inputs)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_example(), f"{README}:{HEADING}", "exec"), namespace)

    manifest, summary, index = namespace["manifest"], namespace["summary"], namespace["index"]
    scores, rows = namespace["scores"], namespace["rows"]
    assert len(manifest.classes) == 3
    assert summary["method"] == "ccl" and summary["test"] is not None
    assert 0.0 <= summary["test"]["video_top1"] <= 1.0
    with open_store(readme_inputs / "av.zarr") as store:
        ids = np.asarray(store.clips.id).astype(str)
        split = np.asarray(store.clips.split).astype(str)
        assert store.teacher_keys() == ["audio/small_audio", "image/small_image"]
        assert "ccl" in store.student_runs()
    n_test = int((split == "test").sum())
    assert n_test > 0
    # k results per test clip, best first, every one a train clip of the store (the indexed split).
    assert rows.shape == scores.shape == (n_test, 5)
    assert (rows >= 0).all() and (split[rows] == "train").all()
    assert set(index.meta.clip_ids) == set(ids[split == "train"])
    assert set(ids[rows.ravel()]) <= set(index.meta.clip_ids)
    assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 1e-6).all()
    assert (np.abs(scores) <= 1.0 + 1e-5).all()  # cosine similarities
