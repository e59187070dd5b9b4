"""Exact search paths: the bfloat16-screened search returns the float32 top-k, its error bound
holds, its fallback keeps it exact where the screen cannot decide, and the backend choice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import ccl_cache.search.exact as exact_mod
from ccl_cache.errors import ConfigError
from ccl_cache.search.exact import ScreenedGallery, choose_exact_backend, l2_normalize, topk_exact
from ccl_cache.search.index import build_index
from ccl_cache.search.index_types import IndexConfig

N, D = 16_000, 48


def gallery_and_queries(kind: str, n: int = N, nq: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "random":
        g = rng.standard_normal((n, D))
        q = rng.standard_normal((nq, D))
    elif kind == "clustered":  # class-like structure: same-cluster cosines ~0.7
        centres = rng.standard_normal((30, D))
        g = centres[rng.integers(0, 30, n)] + 0.6 * rng.standard_normal((n, D))
        q = centres[rng.integers(0, 30, nq)] + 0.6 * rng.standard_normal((nq, D))
    else:  # near-duplicates: scores differ far below bfloat16's resolution (~0.004)
        base = rng.standard_normal(D)
        g = base + 1e-4 * rng.standard_normal((n, D))
        q = base + 1e-4 * rng.standard_normal((nq, D))
    return l2_normalize(g), l2_normalize(q)


def assert_exact_topk(scores: np.ndarray, rows: np.ndarray, q: np.ndarray, g: np.ndarray, k: int) -> None:
    """Each answer is a true top-k in float64, up to float32 rounding of near-ties (1e-6)."""
    true = q.astype(np.float64) @ g.astype(np.float64).T
    assert rows.shape == scores.shape == (len(q), k)
    for i in range(len(q)):
        assert len(set(rows[i].tolist())) == k
        np.testing.assert_allclose(scores[i], true[i, rows[i]], atol=1e-6)
        assert (np.diff(scores[i]) <= 1e-6).all()  # best first
        kth_true = np.sort(true[i])[::-1][k - 1]
        assert true[i, rows[i]].min() >= kth_true - 1e-6  # nothing better was left out


def assert_same_ranking(scores: np.ndarray, rows: np.ndarray, ref_scores: np.ndarray, ref_rows: np.ndarray,
                        atol: float = 1e-6) -> None:
    """Same rows in the same order, except where two scores tie within float32 rounding (paths
    that sum the same products in different orders may swap them)."""
    np.testing.assert_allclose(scores, ref_scores, atol=atol)
    differ = rows != ref_rows
    assert differ.mean() < 0.01 and (np.abs(scores - ref_scores)[differ] < atol).all()


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("k", [1, 10, 40])
def test_screened_search_is_the_float32_top_k(kind: str, k: int) -> None:
    g, q = gallery_and_queries(kind)
    screened = ScreenedGallery(g)
    assert screened.usable(N, k)  # the screen really runs at this size
    scores, rows = screened.search(q, k)
    assert_exact_topk(scores, rows, q, g, k)
    assert_same_ranking(scores, rows, *topk_exact(q, g, k, assume_normalized=True))
    # On embedding-like data the screen decides alone (a path that always fell back would be
    # exact too, but no faster than float32).
    assert screened.fallbacks < len(q) // 4


def test_near_duplicates_fall_back_and_stay_exact() -> None:
    g, q = gallery_and_queries("duplicates")
    screened = ScreenedGallery(g)
    scores, rows = screened.search(q, 10)
    assert screened.fallbacks == len(q)  # the screen cannot separate scores within 1e-4 ...
    assert_exact_topk(scores, rows, q, g, 10)  # ... and the fallback answers exactly


@pytest.mark.parametrize("kind", ["random", "clustered", "duplicates"])
def test_error_bound_holds_for_every_pair(kind: str) -> None:
    """|q·x − bf16 GEMM output| ≤ ε_q + u·|output|/(1−u) for every query and gallery row."""
    g, q = gallery_and_queries(kind, n=3000, nq=64, seed=1)
    screened = ScreenedGallery(g)
    qt = torch.from_numpy(q)
    q_low = qt.to(torch.bfloat16)
    out = (torch.from_numpy(g).to(torch.bfloat16) @ q_low.T).T.double()  # the GEMM the screen runs
    true = torch.from_numpy(q).double() @ torch.from_numpy(g).double().T
    u = 2.0 ** -8
    bound = screened.error_bound(qt, q_low)[:, None] + u * out.abs() / (1 - u)
    assert ((true - out).abs() <= bound).all()
    assert bound.max() < 0.02  # and it is tight enough to screen anything


def test_small_gallery_and_large_k_use_float32() -> None:
    g, q = gallery_and_queries("random", n=500)
    screened = ScreenedGallery(g)
    assert not screened.usable(500, 10)
    scores, rows = screened.search(q, 600)  # k > gallery size: all rows, ranked
    assert rows.shape == (len(q), 500)
    assert_exact_topk(scores, rows, q, g, 500)


def test_gallery_not_a_multiple_of_the_block_never_returns_padding() -> None:
    g, q = gallery_and_queries("random", n=N + 7)
    q = np.concatenate([q, -g[-3:]])  # queries whose best rows are the padded block's zero rows' rivals
    scores, rows = ScreenedGallery(g).search(q, 10)
    assert rows.max() < N + 7
    assert_exact_topk(scores, rows, q, g, 10)


def test_query_batches_share_one_screen_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 7 queries (the last one shorter) reuse one buffer: nothing of an earlier batch's
    screen leaks into a later answer."""
    g, q = gallery_and_queries("clustered")
    whole = ScreenedGallery(g).search(q, 10)
    monkeypatch.setattr(exact_mod, "_SCREEN_ENTRIES", 7 * N)
    scores, rows = ScreenedGallery(g).search(q, 10)
    np.testing.assert_array_equal(rows, whole[1])
    np.testing.assert_array_equal(scores, whole[0])


def test_searches_from_several_threads_share_the_buffer_safely() -> None:
    g, q = gallery_and_queries("clustered", nq=64)
    screened = ScreenedGallery(g)
    parts = [q[i::4] for i in range(4)]
    expected = [ScreenedGallery(g).search(part, 10) for part in parts]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda part: screened.search(part, 10), parts))
            for (scores, rows), (ref_scores, ref_rows) in zip(got, expected):
                np.testing.assert_array_equal(rows, ref_rows)
                np.testing.assert_array_equal(scores, ref_scores)


def test_gallery_with_fewer_groups_than_kept_blocks() -> None:
    """The smallest screened gallery for top-10: all its 25 groups are ranked (fewer than the 51
    that hold the 51 best blocks of a large gallery)."""
    kept_blocks, _ = ScreenedGallery._plan(10)
    n = 4 * kept_blocks * exact_mod._SCREEN_BLOCK
    g, q = gallery_and_queries("clustered", n=n)
    screened = ScreenedGallery(g)
    assert screened.usable(n, 10) and n // (exact_mod._SCREEN_BLOCK * exact_mod._SCREEN_GROUP) < kept_blocks + 1
    scores, rows = screened.search(q, 10)
    assert_exact_topk(scores, rows, q, g, 10)


def test_screened_refuses_bad_shapes() -> None:
    with pytest.raises(ConfigError, match="non-empty 2-D"):
        ScreenedGallery(np.zeros((0, 4), np.float32))
    screened = ScreenedGallery(gallery_and_queries("random", n=200)[0])
    with pytest.raises(ConfigError, match="same dim"):
        screened.search(np.zeros((2, D + 1), np.float32), 3)


def test_vector_index_screened_path_matches_faiss() -> None:
    g, q = gallery_and_queries("clustered")
    index = build_index(g, IndexConfig("flat"), rows=np.arange(N) + 7)
    index.exact_backend = "faiss"
    ref_scores, ref_rows = index.search(q, 10)
    index.exact_backend = "screened"
    scores, rows = index.search(q, 10)
    assert_same_ranking(scores, rows, ref_scores, ref_rows, atol=1e-5)


def test_backend_choice_by_device_and_measured_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_exact_backend(True, torch.device("cpu")) == "faiss"  # FAISS-GPU holds the index
    assert choose_exact_backend(False, torch.device("cuda")) == "torch"  # a GPU GEMM
    assert choose_exact_backend(False, torch.device("cpu"), 40, count=500) == "faiss"  # too small to screen
    calls: list[int] = []

    def fake_measure(dim: int) -> dict[str, float]:
        calls.append(dim)
        return {"faiss": 2.0, "screened": 1.0}

    monkeypatch.setattr(exact_mod, "_CPU_CHOICE", {})
    monkeypatch.setattr(exact_mod, "measure_cpu_exact", fake_measure)
    assert choose_exact_backend(False, torch.device("cpu"), 40) == "screened"  # the faster one
    assert choose_exact_backend(False, torch.device("cpu"), 40) == "screened"
    assert calls == [40]  # measured once (not for the small gallery), then remembered
    monkeypatch.setattr(exact_mod, "measure_cpu_exact", lambda dim: {"faiss": 1.0, "screened": 3.0})
    assert choose_exact_backend(False, torch.device("cpu"), 41) == "faiss"


def test_measure_cpu_exact_times_both_paths() -> None:
    seconds = exact_mod.measure_cpu_exact(16)
    assert set(seconds) == {"faiss", "screened"} and all(s > 0 for s in seconds.values())
