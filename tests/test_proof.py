"""The issue's proof that distillation works, as tests: CCL from the audio and image teachers is
not worse than the cross-entropy baseline on the synthetic dataset (Chen et al., CVPR 2021, Table 1
in miniature; ``benchmarks/ccl_vs_baseline.py``).

The fast version runs the ``fewlabels`` scale (6 labelled clips per class, teachers trained on 36,
the width-32 student for 300 epochs) for seed 1: ~6 minutes on 2 CPU cores, dataset, teachers
and store included, in the default test run (marker ``slow``). Over 5 seeds CCL led on every one
(README); seed 1 is the closest (46.4 vs 44.8). With 150 epochs the lead held on 3 of 5 seeds
only, which is why the test does not shorten the training.

The full version (marker ``proof``, ~20 minutes, left out of the README's test command; run it
with ``python3 -m pytest -m proof``) runs ``teachers6x`` (18 labelled clips per class, teachers on
120), width 32, 300 epochs, seed 1 (measured: CCL 92.2 vs baseline 86.5; over 10 seeds CCL led by
+2.8 points on 7).
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


def run_one_thread(scale: str, work: Path, **options: object) -> dict:
    """ccl_vs_baseline.run with one torch thread: the setting its recorded numbers were made with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_benchmark("ccl_vs_baseline").run(scale, work, modalities=("AI",), seeds=1, **options)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_ccl_audio_image_not_worse_than_baseline_with_few_labels(tmp_path: Path) -> None:
    """The fast version (~6 min on 2 cores, in the default run): the ``fewlabels`` scale, seed 1.
    Over 5 seeds CCL led on every one, +5.1 points (README); seed 1 is the closest (46.4 vs 44.8)."""
    ai = run_one_thread("fewlabels", tmp_path)["comparison"]["AI"]
    assert ai["ccl"]["mean"] >= ai["baseline"]["mean"], ai


@pytest.mark.proof
@pytest.mark.timeout(3 * 3600)
def test_ccl_audio_image_not_worse_than_baseline(tmp_path: Path) -> None:
    report = run_one_thread("teachers6x", tmp_path, epochs=300, width=32)
    ai = report["comparison"]["AI"]
    # The teachers know more about the student's test clips than chance (else there is nothing to distil).
    assert report["teacher_probe_test_top1"]["audio+image"] > 100 / 8
    assert ai["ccl"]["mean"] >= ai["baseline"]["mean"], ai
