"""The issue's proof that distillation works, as a test: CCL from the audio and image teachers is
not worse than the cross-entropy baseline on the synthetic dataset (Chen et al., CVPR 2021, Table 1
in miniature; ``benchmarks/ccl_vs_baseline.py``).

It runs the benchmark's one regime where the student can fit its training clips (``teachers6x``,
width 32, 300 epochs; README: CCL ahead of the baseline on most seeds), for seed 1 only
(measured: CCL 92.2 vs baseline 86.5). That takes ~20 minutes on 2 CPU cores (~7 to prepare the
dataset, teachers and store, ~6 per trained student; 24 measured while other runs shared the
cores), so it carries the ``proof`` marker and the README's test command leaves it out; run it
with ``python3 -m pytest -m proof``. No faster regime was found on this dataset: with a student
that does not fit its training set in few epochs, CCL's extra terms slow that fit and CCL trails
the baseline (README, "Does distillation work?"); smaller datasets left the student at 40-55 %
with seed noise larger than any effect. A fast version would assert something false or pass by
luck.
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


@pytest.mark.proof
@pytest.mark.timeout(3 * 3600)
def test_ccl_audio_image_not_worse_than_baseline(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the benchmark's setting: its recorded numbers are for one thread
    try:
        report = load_benchmark("ccl_vs_baseline").run("teachers6x", tmp_path, modalities=("AI",), seeds=1, epochs=300, width=32)
    finally:
        torch.set_num_threads(threads)
    ai = report["comparison"]["AI"]
    # The teachers know more about the student's test clips than chance (else there is nothing to distil).
    assert report["teacher_probe_test_top1"]["audio+image"] > 100 / 8
    assert ai["ccl"]["mean"] >= ai["baseline"]["mean"], ai
