"""Retrieval and recognition metrics against brute-force NumPy computations."""

from __future__ import annotations

import numpy as np
import pytest

from ccl_cache.errors import ConfigError
from ccl_cache.evaluate import (
    clip_top1,
    count_relevant,
    metrics_from_ranking,
    retrieval_metrics,
    top_k_accuracy,
    topk_exact,
    video_scores,
    video_top1,
)

KS = (1, 2, 5, 10, 50)


def brute_force(q, ql, g, gl, ks, exclude=None):
    """One query at a time, plain Python ranking: (recall, precision, mAP, per-class recall)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    hits_at = {k: [] for k in ks}
    prec_at = {k: [] for k in ks}
    aps = []
    for i in range(len(q)):
        cand = [j for j in range(len(g)) if exclude is None or j != exclude[i]]
        order = sorted(cand, key=lambda j: (-float(qn[i] @ gn[j]), j))
        rel = [gl[j] == ql[i] for j in order]
        for k in ks:
            kk = min(k, len(order))
            hits_at[k].append(any(rel[:kk]))
            prec_at[k].append(sum(rel[:kk]) / kk)
        n_rel = sum(rel)
        if n_rel:
            found, total = 0, 0.0
            for r, is_rel in enumerate(rel, start=1):
                if is_rel:
                    found += 1
                    total += found / r
            aps.append(total / n_rel)
    per_class = {int(c): {k: float(np.mean([h for h, lab in zip(hits_at[k], ql) if lab == c])) for k in ks}
                 for c in np.unique(ql)}
    return ({k: float(np.mean(v)) for k, v in hits_at.items()}, {k: float(np.mean(v)) for k, v in prec_at.items()},
            float(np.mean(aps)), per_class)


def assert_matches(metrics, reference):
    recall, precision, mean_ap, per_class = reference
    for k in recall:
        assert metrics.recall[k] == pytest.approx(recall[k])
        assert metrics.precision[k] == pytest.approx(precision[k])
    assert metrics.mean_ap == pytest.approx(mean_ap)
    assert metrics.per_class_recall.keys() == per_class.keys()
    for c, by_k in per_class.items():
        assert metrics.per_class_recall[c] == pytest.approx(by_k)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((5, 16))
    gl = rng.integers(0, 5, 120)
    ql = rng.integers(0, 5, 30)
    g = (centers[gl] + 2.0 * rng.standard_normal((120, 16))).astype(np.float32)
    q = (centers[ql] + 2.0 * rng.standard_normal((30, 16))).astype(np.float32)
    return q, ql, g, gl


def test_retrieval_metrics_match_brute_force(data):
    q, ql, g, gl = data
    metrics = retrieval_metrics(q, ql, g, gl, ks=KS)
    assert_matches(metrics, brute_force(q, ql, g, gl, KS))
    assert metrics.n_queries == 30 and metrics.ranking_length == 120
    # Recall can only grow with K; clustered data makes it informative (not 0, not trivially 1 at K=1).
    values = [metrics.recall[k] for k in KS]
    assert values == sorted(values) and 0 < values[0] < 1


def test_exclude_self_matches_brute_force(data):
    _, _, g, gl = data
    exclude = np.arange(len(g))
    metrics = retrieval_metrics(g, gl, g, gl, ks=KS, exclude_self=exclude)
    assert_matches(metrics, brute_force(g, gl, g, gl, KS, exclude))
    # Without exclusion every query finds itself first.
    assert retrieval_metrics(g, gl, g, gl, ks=(1,)).recall[1] == 1.0
    assert metrics.recall[1] < 1.0


def test_partial_exclusion_and_relevant_counts(data):
    q, ql, g, gl = data
    exclude = np.where(np.arange(len(q)) % 2 == 0, np.arange(len(q)), -1)
    metrics = retrieval_metrics(q, ql, g, gl, ks=KS, exclude_self=exclude)
    assert_matches(metrics, brute_force(q, ql, g, gl, KS, exclude))
    counts = count_relevant(ql, gl, exclude)
    expected = [sum(1 for j in range(len(g)) if gl[j] == ql[i] and j != exclude[i]) for i in range(len(q))]
    np.testing.assert_array_equal(counts, expected)


def one_hot(rows, dim=4):
    out = np.zeros((len(rows), dim), np.float32)
    out[np.arange(len(rows)), rows] = 1.0
    return out


def test_ties_are_ranked_by_gallery_row():
    # Gallery rows 1, 2, 3 are the same vector as the query (exact ties); row 0 is orthogonal.
    gallery = one_hot([1, 0, 0, 0])
    gallery_labels = np.array([0, 0, 1, 1])
    query = one_hot([0])
    m = retrieval_metrics(query, [0], gallery, gallery_labels, ks=(1, 2, 3))
    # Stable order 1, 2, 3, 0 -> labels 0, 1, 1, 0: a hit at 1, AP = (1/1 + 2/4) / 2.
    assert m.recall == {1: 1.0, 2: 1.0, 3: 1.0}
    assert m.precision[2] == pytest.approx(0.5)
    assert m.mean_ap == pytest.approx(0.75)
    # A query of class 1 sees the tie order from the other side: miss at 1, hit at 2.
    m1 = retrieval_metrics(query, [1], gallery, gallery_labels, ks=(1, 2))
    assert m1.recall == {1: 0.0, 2: 1.0}
    # The fast exact path follows the same rule, also when a tie straddles the k cut.
    for k in (1, 2, 3, 4):
        _, rows = topk_exact(query, gallery, k)
        np.testing.assert_array_equal(rows[0], [1, 2, 3, 0][:k])


def test_k_larger_than_gallery_is_capped():
    gallery = one_hot([0, 1, 2])
    labels = np.array([0, 1, 1])
    m = retrieval_metrics(one_hot([1]), [1], gallery, labels, ks=(1, 5, 100))
    assert m.recall == {1: 1.0, 5: 1.0, 100: 1.0}
    # Precision@K divides by the capped K (the gallery size 3): 2 of 3 share the class.
    assert m.precision[5] == pytest.approx(2 / 3)
    assert m.precision[100] == pytest.approx(2 / 3)
    scores, rows = topk_exact(one_hot([1]), gallery, 10)
    assert rows.shape == (1, 3) and rows[0, 0] == 1 and scores[0, 0] == pytest.approx(1.0)


def test_metrics_from_ranking_equals_full_ranking_and_handles_padding(data):
    q, ql, g, gl = data
    _, rows = topk_exact(q, g, len(g))
    nrel = count_relevant(ql, gl)
    full = metrics_from_ranking(gl[rows], ql, nrel, ks=KS)
    assert_matches(full, brute_force(q, ql, g, gl, KS))
    # A truncated ranking (as from an ANN index) keeps Recall@K for K <= depth; its mAP is a
    # lower bound because n_relevant still counts every relevant gallery row.
    top = gl[rows[:, :10]]
    truncated = metrics_from_ranking(top, ql, nrel, ks=(1, 5, 10))
    assert truncated.recall == pytest.approx({k: full.recall[k] for k in (1, 5, 10)})
    assert truncated.mean_ap < full.mean_ap
    # Padding (-1, FAISS's "no result") is never a hit and not counted by precision.
    padded = np.concatenate([top[:, :3], -np.ones((len(top), 7), np.int64)], axis=1)
    m = metrics_from_ranking(padded, ql, nrel, ks=(3, 10))
    assert m.recall[10] == pytest.approx(m.recall[3])
    assert m.recall[3] == pytest.approx(float(np.mean((top[:, :3] == ql[:, None]).any(axis=1))))
    assert m.precision[10] == pytest.approx(m.precision[3])


def test_queries_without_relevant_items_are_left_out_of_map():
    gallery = one_hot([0, 1])
    m = retrieval_metrics(one_hot([0, 1]), [0, 3], gallery, [0, 1], ks=(1,))
    assert m.n_queries_no_relevant == 1
    assert m.recall[1] == 0.5  # the class-3 query is a miss
    assert m.mean_ap == 1.0    # and is not averaged into mAP
    assert m.per_class_recall == {0: {1: 1.0}, 3: {1: 0.0}}


def test_topk_exact_matches_numpy(data):
    q, _, g, _ = data
    scores, rows = topk_exact(q, g, 7, batch=4)  # several query batches
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = qn @ gn.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, 1), rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_config_errors(data):
    q, ql, g, gl = data
    with pytest.raises(ConfigError, match="exclude_self"):
        retrieval_metrics(q, ql, g, gl, exclude_self=np.arange(5))
    with pytest.raises(ConfigError, match="dim"):
        retrieval_metrics(q[:, :8], ql, g, gl)
    with pytest.raises(ConfigError, match="labels"):
        retrieval_metrics(q, ql[:-1], g, gl)
    with pytest.raises(ConfigError, match="NaN"):
        retrieval_metrics(np.full_like(q, np.nan), ql, g, gl)
    with pytest.raises(ConfigError, match="n_relevant"):
        metrics_from_ranking(np.zeros((1, 3), np.int64), [0], [1])


def test_top_k_accuracy_and_clip_top1():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    labels = np.array([1, 2, 0])
    # Row 0 ties classes 0 and 1: the lower class wins top-1, so label 1 is a top-1 miss.
    assert clip_top1(logits, labels) == pytest.approx(1 / 3)
    assert top_k_accuracy(logits, labels, 2) == pytest.approx(1.0)
    assert top_k_accuracy(logits, labels, 3) == 1.0


def test_video_top1_averages_softmax_not_logits_or_votes():
    # Video "a": one confident window for class 0, two moderate ones for class 1. Averaging
    # softmax says class 1 (the label); averaging logits would say class 0 (checked below).
    windows = np.array([[10.0, 0.0], [0.0, 3.0], [0.0, 3.0], [5.0, 0.0]])
    vids = np.array(["a", "a", "a", "b"])
    labels = np.array([1, 1, 1, 0])
    assert video_top1(windows, vids, labels) == 1.0
    ids, probs = video_scores(windows, vids)
    assert list(ids) == ["a", "b"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert windows[:3].mean(axis=0).argmax() == 0  # the logit average disagrees
    with pytest.raises(ConfigError, match="different labels"):
        video_top1(windows, vids, np.array([1, 0, 1, 0]))
    with pytest.raises(ConfigError, match="2 labels for 4 windows: give one label per window"):
        video_top1(windows, vids, np.array([1, 0]))  # one per video: was numpy's "shape mismatch"
