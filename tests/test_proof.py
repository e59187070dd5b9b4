"""Does distillation work? Two tiers of evidence on the synthetic dataset (Chen et al., CVPR 2021,
Table 1 in miniature; ``benchmarks/ccl_vs_baseline.py``; the measured tables are in
docs/results.md).

- ``proof`` (left out of the README's test command, which must stay under 15 minutes on 2 cores;
  this check alone takes about 8): a **non-inferiority regression on one seed**, not a proof. The ``fewlabels`` scale (6 labelled clips per class, teachers trained on 36, the width-32
  student for 300 epochs), seed 1 only, CCL from both teachers must not fall below the baseline.
  Seed 1 was picked after the fact as the closest of five seeds, so the check fails when a change
  costs CCL its lead where the lead is thinnest; it says nothing about the size of the gain.
- ``proof`` too (``python3 -m pytest -m proof``): the stated claims at the same scale over five
  seeds: CCL's mean gain over the baseline is positive, and the
  permuted-teacher control (the train clips carry other train clips' teacher embeddings) loses
  it, falling to the baseline's level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_benchmarks import load_benchmark
from fixtures_distill import make_store


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_permuted_control_moves_only_train_embeddings(tmp_path: Path, suffix: str) -> None:
    """``--control permuted``: the copy's train clips carry other train clips' embeddings; nothing
    else changes, in the copy or in the original."""
    from ccl_cache.store import open_store

    store = make_store(tmp_path, suffix)
    copy = tmp_path / "control" / f"store{suffix}"
    report = load_benchmark("ccl_vs_baseline").permuted_teachers_copy(store, copy)
    with open_store(store) as original, open_store(copy) as permuted:
        train = np.asarray(original.clips.split).astype(str) == "train"
        for key in original.teacher_keys():
            emb, times, mask = original.load_teacher(key)
            new_emb, new_times, new_mask = permuted.load_teacher(key)
            np.testing.assert_array_equal(new_mask, mask)
            np.testing.assert_array_equal(new_times, times)
            np.testing.assert_array_equal(new_emb[~train], emb[~train])
            moved = train & (mask if mask.ndim == 1 else mask.any(axis=1))
            assert report[key]["rows_permuted"] == moved.sum() > 1
            rows = lambda x: sorted(map(bytes, x[moved].reshape(moved.sum(), -1)))  # noqa: E731
            assert rows(new_emb) == rows(emb)  # the same embeddings, on other clips
            assert not np.array_equal(new_emb[moved], emb[moved])
    assert load_benchmark("ccl_vs_baseline").permuted_teachers_copy(store, copy) == report  # reused, not rebuilt


def run_one_thread(scale: str, work: Path, seeds: int = 1, **options: object) -> dict:
    """ccl_vs_baseline.run with one torch thread: the setting its recorded numbers were made with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_benchmark("ccl_vs_baseline").run(scale, work, modalities=("AI",), seeds=seeds, **options)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.proof
@pytest.mark.timeout(3600)
def test_ccl_audio_image_non_inferior_on_seed_1_with_few_labels(tmp_path: Path) -> None:
    """Non-inferiority regression: ``fewlabels``, seed 1, CCL (A+I) >= baseline in video top-1."""
    ai = run_one_thread("fewlabels", tmp_path)["comparison"]["AI"]
    assert ai["ccl"]["mean"] >= ai["baseline"]["mean"], ai


PROOF_SEEDS = 5
BASELINE_LEVEL_POINTS = 1.0  # a control gain within this of the baseline counts as "at its level"


@pytest.mark.proof
@pytest.mark.timeout(6 * 3600)
def test_ccl_gains_over_seeds_and_the_permuted_teacher_control_loses_the_gain(tmp_path: Path) -> None:
    """``fewlabels`` over five seeds: CCL (A+I) gains over the baseline on average, and the same
    grid on the permuted-teacher copy of the store does not (what the teachers know is the cause)."""
    real = run_one_thread("fewlabels", tmp_path / "real", seeds=PROOF_SEEDS)["comparison"]["AI"]
    control = run_one_thread("fewlabels", tmp_path / "control", seeds=PROOF_SEEDS,
                             control="permuted")["comparison"]["AI"]
    assert real["gain_points"] > 0, real
    assert control["gain_points"] < real["gain_points"], (real, control)
    assert control["gain_points"] <= BASELINE_LEVEL_POINTS, control
