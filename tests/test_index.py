"""FAISS index build/save/load/search, sidecar checks and refusal of damaged or foreign indexes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ccl_cache.errors import ConfigError, IndexMismatchError
from ccl_cache.evaluate import count_relevant, metrics_from_ranking, retrieval_metrics
from ccl_cache.search.exact import topk_exact
from ccl_cache.search.calibrate import nprobe_ladder
from ccl_cache.search.gallery import collect_vectors
from ccl_cache.search.index import build_index, load_index
from ccl_cache.search.index_types import INDEX_TYPES, IndexConfig, choose_nlist, choose_pq_m
from ccl_cache.search.sidecar import INDEX_FILE, META_FILE
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store

N, D = 2000, 32
ROW_OFFSET = 100  # vectors are store rows 100..2099, so id -> row mapping is exercised
TYPES = INDEX_TYPES.names() + ["factory:IVF16,Flat"]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors (like class-structured embeddings) and their cluster labels."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, D)).astype(np.float32)
    labels = rng.integers(0, 20, N)
    vectors = centres[labels] + 0.5 * rng.standard_normal((N, D)).astype(np.float32)
    return vectors.astype(np.float32), labels


@pytest.fixture(scope="module")
def flat_dir(tmp_path_factory: pytest.TempPathFactory, data) -> Path:
    out = tmp_path_factory.mktemp("flat") / "idx"
    build_index(data[0], IndexConfig("flat"), rows=np.arange(N) + ROW_OFFSET, source="test").save(out)
    return out


@pytest.mark.parametrize("index_type", TYPES)
def test_round_trip_each_index_type(tmp_path: Path, data, index_type: str) -> None:
    vectors, _ = data
    rows = np.arange(N) + ROW_OFFSET
    ids = [f"clip{r}" for r in rows]
    built = build_index(vectors, IndexConfig(index_type), rows=rows, clip_ids=ids, source="student:run", split="train")
    scores_before, rows_before = built.search(vectors[:50], 10)
    out = built.save(tmp_path / "idx")
    assert sorted(p.name for p in out.iterdir()) == [INDEX_FILE, META_FILE]  # no temp debris
    loaded = load_index(out)
    scores, found = loaded.search(vectors[:50], 10)
    # The saved index answers exactly as the built one did.
    np.testing.assert_array_equal(found, rows_before)
    np.testing.assert_allclose(scores, scores_before, rtol=1e-5, atol=1e-6)
    assert loaded.meta.count == N and loaded.meta.dim == D and loaded.meta.clip_ids == tuple(ids)
    assert loaded.meta.source == "student:run" and loaded.meta.split == "train"
    assert set(found.ravel()) <= set(rows.tolist())  # FAISS ids mapped to store rows
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    if index_type != "ivfpq":  # PQ scores are approximate cosines and may pass 1
        assert (scores <= 1.0 + 1e-5).all()
    # Uncompressed indexes find (nearly) all exact neighbours on clustered data; 4-byte PQ codes
    # of 32-d vectors lose much, but still far beat chance (10 / 2000 = 0.005).
    _, exact = topk_exact(vectors[:50], vectors, 10)
    overlap = np.mean([len(set(a) & set(b - ROW_OFFSET)) / 10 for a, b in zip(exact, found)])
    assert overlap >= (0.2 if index_type == "ivfpq" else 0.95)


def test_flat_self_query_returns_itself_first(flat_dir: Path, data) -> None:
    vectors, _ = data
    scores, rows = load_index(flat_dir).search(vectors, 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(N) + ROW_OFFSET)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "screened"])
def test_flat_exact_paths_match_faiss(flat_dir: Path, data, backend: str) -> None:
    vectors, _ = data
    index = load_index(flat_dir)
    assert index.exact_backend == "faiss"  # 2000 rows: too few for the screen, nothing to measure
    index.exact_backend = "faiss"
    faiss_scores, faiss_rows = index.search(vectors[:64], 5)
    index.exact_backend = backend
    scores, rows = index.search(vectors[:64], 5)
    np.testing.assert_array_equal(rows, faiss_rows)
    np.testing.assert_allclose(scores, faiss_scores, atol=1e-5)


def test_exact_backend_refuses_unknown_names_and_non_flat_indexes(data) -> None:
    vectors, _ = data
    flat = build_index(vectors, IndexConfig("flat"))
    with pytest.raises(ConfigError, match="'gpu' is not one of faiss, torch, screened"):
        flat.exact_backend = "gpu"
    ivf = build_index(vectors, IndexConfig("ivf"))
    assert ivf.exact_backend == "faiss"
    with pytest.raises(ConfigError, match="needs a flat index held on the CPU; this one is ivf"):
        ivf.exact_backend = "screened"


def test_ann_ranking_evaluates_like_exact(flat_dir: Path, data) -> None:
    vectors, labels = data
    q, ql = vectors[:100], labels[:100]
    exact = retrieval_metrics(q, ql, vectors, labels, ks=(1, 5, 10), exclude_self=np.arange(100))
    _, rows = load_index(flat_dir).search(q, 11)
    rows = rows - ROW_OFFSET
    # Drop each query's own row (the first hit) as exclude_self does, then evaluate the ranking.
    ranked = np.array([[r for r in row if r != i][:10] for i, row in enumerate(rows)])
    from_index = metrics_from_ranking(labels[ranked], ql, count_relevant(ql, labels, np.arange(100)), ks=(1, 5, 10))
    assert from_index.recall == pytest.approx(exact.recall)


@pytest.mark.parametrize("k", [8, 10**12])
def test_k_larger_than_the_index_is_cut_to_its_size(tmp_path: Path, data, k: int) -> None:
    """``retrieve --k 1000000000`` on a small index was killed by the OOM killer (it padded every
    query's answer to k); k beyond the index's size now means every vector, allocated as such."""
    index = build_index(data[0][:5], IndexConfig("flat"))
    scores, rows = index.search(data[0][:2], k)
    assert rows.shape == scores.shape == (2, 5) and np.isfinite(scores).all()
    assert set(rows[0]) == set(range(5))


def test_defaults_from_the_data() -> None:
    assert choose_nlist(2000) == 2000 // 39  # the 39-points-per-list cap binds on small galleries
    assert choose_nlist(1_000_000) == 4000
    assert choose_nlist(10) == 1
    assert choose_pq_m(512) == 64 and 32 % choose_pq_m(32) == 0
    spec = build_index(np.random.default_rng(1).standard_normal((1000, 8)).astype(np.float32), IndexConfig("ivf", nprobe=3))
    assert spec.meta.factory == f"IVF{choose_nlist(1000)},Flat" and spec.meta.nprobe == 3


# --------------------------------------------------------------------------------------------
# nprobe calibration


def _independent_recall(index_dir: Path, vectors: np.ndarray, seed: int = 0, k: int = 10) -> float:
    """recall@k of a saved IVF index at its recorded nprobe, recomputed from scratch: numpy exact
    cosine top-(k+1), the index's own top-(k+1), each query's own id dropped from both."""
    loaded = load_index(index_dir)
    n = len(vectors)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(256, n), replace=False))
    x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = np.argsort(-(x[sample] @ x.T), axis=1, kind="stable")[:, :k + 1]
    _, found = loaded.search(vectors[sample], k + 1)  # rows == FAISS ids (built without rows)
    hits = []
    for e, f, me in zip(exact, found, sample):
        truth = [int(i) for i in e if i != me][:k]
        approx = [int(i) for i in f if i != me and i >= 0][:k]
        hits.append(len(set(truth) & set(approx)) / k)
    return float(np.mean(hits))


def test_calibration_picks_a_small_nprobe_on_clustered_data(tmp_path: Path, data) -> None:
    vectors, _ = data
    built = build_index(vectors, IndexConfig("ivf"))
    cal = built.meta.calibration
    nlist = choose_nlist(N)
    assert cal is not None and cal["reached"] and cal["recall"] >= 0.95 and cal["target_recall"] == 0.95
    assert cal["queries"] == 256 and cal["k"] == 10
    # 20 tight clusters over 51 lists: a few lists per query suffice.
    assert built.meta.nprobe == cal["nprobe"] <= 8 < nlist
    assert built.index.nprobe == built.meta.nprobe  # the index searches with what was chosen
    out = built.save(tmp_path / "idx")
    assert _independent_recall(out, vectors) == pytest.approx(cal["recall"], abs=1e-9)


def test_calibration_climbs_higher_on_random_data(data) -> None:
    clustered = build_index(data[0], IndexConfig("ivf")).meta
    rng = np.random.default_rng(7)
    random = build_index(rng.standard_normal((N, D)).astype(np.float32), IndexConfig("ivf")).meta
    cal = random.calibration
    assert random.nprobe > clustered.nprobe and cal["reached"] and cal["recall"] >= 0.95
    ladder = [p for p, _ in cal["ladder"]]
    # The rungs tried are the start of 1, 2, 4, ..., nlist, stopping at the first that reaches the target.
    assert ladder == nprobe_ladder(choose_nlist(N))[:len(ladder)] and ladder == sorted(set(ladder))
    assert ladder[-1] == random.nprobe
    assert all(r < 0.95 for _, r in cal["ladder"][:-1]) and cal["ladder"][-1][1] == cal["recall"]
    assert not any("calibration" in note for note in build_index(data[0], IndexConfig("ivf")).notes)
    # Random vectors have no clusters for IVF to exploit: a target needing every list says flat is better.
    full = build_index(rng.standard_normal((N, D)).astype(np.float32), IndexConfig("ivf", target_recall=1.0))
    assert full.meta.nprobe == choose_nlist(N) and any("--type flat" in note for note in full.notes)
    # A laxer target stops no later.
    lax = build_index(rng.standard_normal((N, D)).astype(np.float32), IndexConfig("ivf", target_recall=0.5)).meta
    assert lax.nprobe < random.nprobe and lax.calibration["target_recall"] == 0.5


def test_nprobe_ladder() -> None:
    assert nprobe_ladder(1) == [1]
    assert nprobe_ladder(8) == [1, 2, 4, 8]
    assert nprobe_ladder(51) == [1, 2, 4, 8, 16, 32, 51]


def test_explicit_nprobe_skips_calibration(data) -> None:
    meta = build_index(data[0], IndexConfig("ivf", nprobe=3)).meta
    assert meta.nprobe == 3 and meta.calibration is None
    assert build_index(data[0][:200], IndexConfig("hnsw")).meta.calibration is None
    with pytest.raises(ConfigError, match="target_recall"):
        build_index(data[0][:200], IndexConfig("ivf", target_recall=0.0))


def test_gpu_placement_gives_pq_indexes_float16_lookup_tables(monkeypatch: pytest.MonkeyPatch, data) -> None:
    """faiss-gpu refuses to clone the default IVF-PQ (PQ64x8 at d=512) with float32 lookup tables:
    they exceed a block's 48 KiB of shared memory. No GPU here, so FAISS's GPU calls are stand-ins
    that record what they were given (the clone returns the CPU index)."""
    import faiss

    from ccl_cache.search import vector_index as index_module
    from ccl_cache.search.index_types import resolve_spec

    class ClonerOptions:
        useFloat16LookupTables = False

    cloned = []
    monkeypatch.setattr(index_module, "_faiss_gpu_available", lambda: True)
    monkeypatch.setattr(index_module.hardware, "resolve_device", lambda device, where=None: None)  # "cuda:1" needs no GPU here
    monkeypatch.setattr(index_module, "_GPU_RESOURCES", {})
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", ClonerOptions, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu",
                        lambda res, gpu, index, options: cloned.append((gpu, options)) or index, raising=False)
    for spec, float16 in ((resolve_spec(IndexConfig("ivfpq"), 200_000, 512), True),
                          (resolve_spec(IndexConfig("ivf"), 200_000, 512), False)):
        assert ("PQ64x8" in spec.factory) is float16
        index, on_gpu = index_module._place(faiss.IndexFlatIP(8), spec, "cuda:1", [])
        assert on_gpu and cloned[-1][0] == 1 and cloned[-1][1].useFloat16LookupTables is float16


def test_gpu_searches_refuse_more_results_than_faiss_gpu_returns(data) -> None:
    from ccl_cache.search.vector_index import GPU_MAX_K, VectorIndex

    vectors = np.vstack([data[0], data[0][:100] + 0.01])  # more rows than FAISS-GPU may return
    built = build_index(vectors, IndexConfig("ivf", nprobe=4))
    on_gpu = VectorIndex(built.index, built.meta, on_gpu=True)  # a CPU index standing in for a GPU one
    assert on_gpu.search(data[0][:2], 10)[1].shape == (2, 10)
    with pytest.raises(ConfigError, match=f"k={GPU_MAX_K + 1} exceeds the {GPU_MAX_K} results"):
        on_gpu.search(data[0][:2], GPU_MAX_K + 1)
    assert built.search(data[0][:2], GPU_MAX_K + 1)[1].shape == (2, GPU_MAX_K + 1)  # the CPU has no limit


def test_lossy_ivfpq_records_its_best_rung_and_a_note() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((N, D)).astype(np.float32)
    # Two 4-bit codes for 32 random dimensions: far too coarse to reach 0.95 at any nprobe.
    built = build_index(vectors, IndexConfig("ivfpq", pq_m=2, pq_nbits=4))
    cal = built.meta.calibration
    assert not cal["reached"] and cal["recall"] < 0.95
    assert [p for p, _ in cal["ladder"]] == nprobe_ladder(choose_nlist(N))  # climbed to the top
    best = max(r for _, r in cal["ladder"])
    assert cal["recall"] == best and built.meta.nprobe == cal["nprobe"]
    assert cal["nprobe"] == min(p for p, r in cal["ladder"] if r == best)  # fewest lists among the best
    note = next(n for n in built.notes if "calibration" in n)
    assert f"{best:.3f}" in note and "--type flat" in note and "pq_m" in note


def test_calibration_survives_save_load_and_old_sidecars_load(tmp_path: Path, data) -> None:
    built = build_index(data[0], IndexConfig("ivf"))
    out = built.save(tmp_path / "idx")
    loaded = load_index(out)
    assert loaded.meta.calibration == built.meta.calibration
    assert loaded.meta.nprobe == built.meta.nprobe == loaded.index.nprobe
    # A sidecar written before calibration existed has no such field: it loads, uncalibrated.
    meta = json.loads((out / META_FILE).read_text())
    del meta["calibration"]
    (out / META_FILE).write_text(json.dumps(meta))
    old = load_index(out)
    assert old.meta.calibration is None and old.meta.nprobe == built.meta.nprobe == old.index.nprobe


def test_truncated_index_file_is_refused(tmp_path: Path, flat_dir: Path) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    for name in (INDEX_FILE, META_FILE):
        (out / name).write_bytes((flat_dir / name).read_bytes())
    data = (out / INDEX_FILE).read_bytes()
    (out / INDEX_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexMismatchError, match=INDEX_FILE):
        load_index(out)
    # Without the checksum, FAISS's own read or the ntotal check still refuses it.
    with pytest.raises(IndexMismatchError, match=INDEX_FILE):
        load_index(out, verify=False)


@pytest.mark.parametrize("field,value", [("dim", D + 1), ("count", N - 1), ("format", "other"), ("format_version", 99)])
def test_sidecar_mismatch_is_refused(tmp_path: Path, flat_dir: Path, field: str, value: object) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    (out / INDEX_FILE).write_bytes((flat_dir / INDEX_FILE).read_bytes())
    meta = json.loads((flat_dir / META_FILE).read_text())
    meta[field] = value
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexMismatchError):
        load_index(out)


def test_missing_files_and_bad_json_are_refused(tmp_path: Path, flat_dir: Path) -> None:
    with pytest.raises(IndexMismatchError, match="missing index.faiss"):
        load_index(tmp_path)
    out = tmp_path / "idx"
    out.mkdir()
    (out / INDEX_FILE).write_bytes((flat_dir / INDEX_FILE).read_bytes())
    (out / META_FILE).write_text("{not json")
    with pytest.raises(IndexMismatchError, match="JSON"):
        load_index(out)


def test_query_dimension_is_checked(flat_dir: Path) -> None:
    with pytest.raises(IndexMismatchError, match="dimension 16"):
        load_index(flat_dir).search(np.ones((2, 16), np.float32), 3)


def test_save_refuses_to_clobber_and_overwrites_atomically(tmp_path: Path, data) -> None:
    out = tmp_path / "idx"
    build_index(data[0][:100], IndexConfig("flat")).save(out)
    with pytest.raises(ConfigError, match="overwrite"):
        build_index(data[0][:50], IndexConfig("flat")).save(out)
    assert load_index(out).count == 100  # the refused save left the old index intact
    build_index(data[0][:50], IndexConfig("flat")).save(out, overwrite=True)
    assert load_index(out).count == 50
    assert sorted(p.name for p in out.iterdir()) == [INDEX_FILE, META_FILE]


def test_a_save_killed_between_its_two_files_is_completed_by_the_same_command(tmp_path: Path, data,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a kill after the sidecar moved in and before the index followed left a pair that
    load_index refuses and that the same command then refused to replace without --overwrite."""
    import os

    from ccl_cache.search import index as index_mod

    out = tmp_path / "idx"
    real, moves = os.replace, []

    def dies_on_the_second_move(src, dst):  # noqa: ANN001, ANN202
        moves.append(Path(dst).name)
        if len(moves) == 2:
            raise KeyboardInterrupt  # the process dies here, as under SIGKILL
        return real(src, dst)

    monkeypatch.setattr(index_mod.os, "replace", dies_on_the_second_move)  # the os module fileio uses too
    with pytest.raises(KeyboardInterrupt):
        build_index(data[0][:100], IndexConfig("flat")).save(out)
    monkeypatch.setattr(index_mod.os, "replace", real)
    assert moves == [META_FILE, INDEX_FILE]
    with pytest.raises(IndexMismatchError):
        load_index(out)
    build_index(data[0][:100], IndexConfig("flat")).save(out)  # the rerun, without --overwrite
    assert load_index(out).count == 100
    with pytest.raises(ConfigError, match="overwrite"):  # a finished index is still protected
        build_index(data[0][:50], IndexConfig("flat")).save(out)


def test_bad_build_requests(data) -> None:
    with pytest.raises(ConfigError, match="unknown index type"):
        build_index(data[0], IndexConfig("annoy"))
    with pytest.raises(ConfigError, match="NaN"):
        build_index(np.full((4, 3), np.nan, np.float32))
    with pytest.raises(ConfigError, match="FAISS cannot build 'NotAnIndex' for d=32: could not parse index string NotAnIndex; see"):
        build_index(data[0], IndexConfig("factory:NotAnIndex"))
    with pytest.raises(ConfigError, match="does not divide"):
        build_index(data[0], IndexConfig("ivfpq", pq_m=5))
    with pytest.raises(ConfigError, match="nlist=4 does not apply to a 'flat' index"):  # was ignored
        build_index(data[0][:100], IndexConfig("flat", nlist=4))
    with pytest.raises(ConfigError, match="ef_search=5 does not apply"):
        build_index(data[0][:100], IndexConfig("ivf", ef_search=5))
    with pytest.raises(ConfigError, match="efSearch=5 does not apply"):
        build_index(data[0][:100], IndexConfig("flat")).set_search_params(ef_search=5)


# --------------------------------------------------------------------------------------------
# Stores: fingerprints and the vectors an index is built from


def make_store(path: Path, n: int = 12, frames: int | None = 3, prefix: str = "v"):
    records = [ClipRecord(id=f"{prefix}{i}", path=f"/data/v{i}.mp4", label=("a", "b")[i % 2],
                          split=("train", "test")[i % 3 == 2]) for i in range(n)]
    store = create_store(path, Manifest.from_records(records), chunk_rows=4)
    rng = np.random.default_rng(3)
    store.write_student("run1", rng.standard_normal((n, 16)).astype(np.float32), {"student": "small"})
    store.create_teacher("audio/small_audio", dim=8, frames=frames, dtype="float32", fingerprint={"arch": "test"})
    shape = (4, 8) if frames is None else (4, frames, 8)
    for lo in range(0, n - 4, 4):  # the last chunk stays unextracted
        mask = np.ones(shape[:-1], bool)
        if lo == 0:
            mask[1] = False  # row 1: no audio at all
            if frames is not None:
                mask[3, 1:] = False  # row 3: only its first frame is valid
        emb = rng.standard_normal(shape).astype(np.float32)
        times = np.zeros((4, frames or 1, 2))
        store.write_rows("audio/small_audio", slice(lo, lo + 4), emb, times, mask)
    return store


def test_store_fingerprint_is_checked(tmp_path: Path) -> None:
    store = make_store(tmp_path / "a.zarr")
    other = make_store(tmp_path / "b.zarr", prefix="w")  # same size, other clips
    src = collect_vectors(store, run="run1", split="all")
    out = tmp_path / "idx"
    build_index(src.vectors, rows=src.rows, clip_ids=src.clip_ids, store=store).save(out)
    assert load_index(out, store=store).count == 12
    assert load_index(out, store=str(tmp_path / "a.zarr")).count == 12
    meta = json.loads((out / META_FILE).read_text())
    assert meta["store_fingerprint"]["n"] == 12 and meta["store_fingerprint"]["manifest_sha256"]
    with pytest.raises(IndexMismatchError, match="manifest_sha256"):
        load_index(out, store=other)
    meta["store_fingerprint"]["created"] = "1999-01-01T00:00:00+00:00"  # the store was re-created
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexMismatchError, match="created"):
        load_index(out, store=store)
    unbound = tmp_path / "unbound"
    build_index(src.vectors).save(unbound)
    with pytest.raises(IndexMismatchError, match="without a store"):
        load_index(unbound, store=store)
    store.close()
    other.close()


@pytest.mark.parametrize("frames", [None, 3])
def test_collect_teacher_vectors_masks_and_averages(tmp_path: Path, frames: int | None) -> None:
    store = make_store(tmp_path / "s.h5", frames=frames)
    src = collect_vectors(store, teacher="audio/small_audio", split="train")
    train = [i for i in range(12) if i % 3 != 2]
    # Rows 8..11 were never extracted, row 1 has no audio.
    assert src.rows.tolist() == [r for r in train if r < 8 and r != 1]
    assert src.excluded == {"not_extracted": len([r for r in train if r >= 8]), "missing": 1}
    assert src.clip_ids == tuple(f"v{r}" for r in src.rows)
    emb, _, mask = store.read_rows("audio/small_audio", src.rows)
    if frames is None:
        np.testing.assert_allclose(src.vectors, emb)
    else:
        expected = (emb * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(src.vectors, expected, rtol=1e-6)
        first = src.rows.tolist().index(0)  # row 0: all frames valid -> the plain mean
        np.testing.assert_allclose(src.vectors[first], emb[first].mean(axis=0), rtol=1e-6)
        three = src.rows.tolist().index(3)  # row 3: only its first frame is valid
        np.testing.assert_allclose(src.vectors[three], emb[three, 0], rtol=1e-6)
    assert src.source == "teacher:audio/small_audio"
    student = collect_vectors(store, run="run1", split="test")
    assert student.rows.tolist() == [2, 5, 8, 11] and student.excluded == {}
    with pytest.raises(ConfigError, match="split"):
        collect_vectors(store, run="run1", split="val")
    with pytest.raises(ConfigError, match="no teacher"):
        collect_vectors(store, teacher="image/none")
    store.close()


def test_a_run_directory_is_matched_by_identity_not_by_name(tmp_path: Path) -> None:
    """`index STORE --run <run dir of another store>` used this store's same-named /students/<run>
    (and `benchmark retrieval` showed the other run's top-1 beside it). The directory must be the
    one that wrote the store's run."""
    from ccl_cache.errors import ConfigError
    from ccl_cache.manifest import ClipRecord, Manifest
    from ccl_cache.search.gallery import resolve_run
    from ccl_cache.store import create_store

    mine, other = tmp_path / "a" / "run", tmp_path / "b" / "run"
    for folder in (mine, other):
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text('{"run": "run"}')
    records = [ClipRecord(f"c{i}", f"/v/{i}.mp4", "x") for i in range(4)]
    with create_store(tmp_path / "s.zarr", Manifest.from_records(records), chunk_rows=2) as store:
        store.write_student("run", np.zeros((4, 3)), {"run_dir": str(mine)})
        assert resolve_run(store, mine) == resolve_run(store, "run") == "run"
        with pytest.raises(ConfigError, match=r"was written by .*a/run, not by .*b/run.*--run-name NAME"):
            resolve_run(store, other)
