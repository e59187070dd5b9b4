"""`ccl-cache benchmark retrieval`: metrics, query exclusion, ANN recall, report files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ccl_cache.errors import ConfigError
from ccl_cache.evaluate import retrieval_metrics
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.search.benchmark import RetrievalBenchConfig, run_benchmark, self_exclusion
from ccl_cache.store import create_store
from ccl_cache_cli.main import cli

CLASSES = ("cat", "dog", "owl", "pig")
TRAIN, TEST = 30, 5  # clips per class


def _store(tmp_path: Path, structured: bool = True) -> dict:
    """A store without media: a student run (class-structured or random) and a masked teacher."""
    rng = np.random.default_rng(0)
    records = [ClipRecord(f"{c}_{split}_{i}", f"/nowhere/{c}_{split}_{i}.mp4", c, split)
               for c in CLASSES for split, count in (("train", TRAIN), ("test", TEST)) for i in range(count)]
    manifest = Manifest.from_records(records, CLASSES)
    labels = manifest.labels()
    n, dim = len(records), 16
    centres = rng.standard_normal((len(CLASSES), dim)) * (2.0 if structured else 0.0)
    student = (centres[labels] + rng.standard_normal((n, dim))).astype(np.float32)
    teacher = (centres[labels] + 2.0 * rng.standard_normal((n, dim))).astype(np.float32)
    mask = np.ones(n, bool)
    mask[::7] = False  # "no audio" rows: left out of the teacher's queries and gallery
    run_dir = tmp_path / "run_a"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"run": "run_a", "test": {"video_top1": 0.75, "clip_top1": 0.5}}))
    path = tmp_path / "bench.zarr"
    with create_store(path, manifest, chunk_rows=64) as store:
        store.write_student("run_a", student, {"method": "ccl", "run_dir": str(run_dir)})
        store.create_teacher("audio/fake", dim, None, dtype="float32", fingerprint={"name": "fake"})
        store.write_rows("audio/fake", slice(0, n), teacher, np.zeros((n, 1, 2)), mask)
    split = np.array([r.split for r in records])
    return {"path": path, "run_dir": run_dir, "student": student, "teacher": teacher, "mask": mask,
            "labels": labels, "split": split}


@pytest.fixture
def bench(tmp_path: Path) -> dict:
    return _store(tmp_path)


def test_metrics_match_evaluate(bench: dict) -> None:
    res = run_benchmark(RetrievalBenchConfig(store=str(bench["path"]), runs=(str(bench["run_dir"]),),
                                             teachers=("audio/fake",)))
    student, teacher = res.results
    q, g = bench["split"] == "test", bench["split"] == "train"
    lab = bench["labels"]
    want = retrieval_metrics(bench["student"][q], lab[q], bench["student"][g], lab[g]).as_dict()
    assert student.exact == want
    assert (student.n_queries, student.n_gallery) == (q.sum(), g.sum())
    assert student.source.label == "run_a (ccl)"
    assert student.recognition == {"video_top1": 0.75, "clip_top1": 0.5}
    # The teacher's masked rows are left out of both sides and counted.
    qm, gm = q & bench["mask"], g & bench["mask"]
    want_t = retrieval_metrics(bench["teacher"][qm], lab[qm], bench["teacher"][gm], lab[gm]).as_dict()
    assert teacher.exact == want_t
    assert teacher.excluded["queries"]["missing"] == int((q & ~bench["mask"]).sum())
    assert teacher.n_gallery == int(gm.sum())
    # Class structure is learnt: the student is far above chance (25 %).
    assert student.recall(1) > 0.6


def test_query_exclusion_when_splits_overlap(tmp_path: Path) -> None:
    data = _store(tmp_path, structured=False)
    res = run_benchmark(RetrievalBenchConfig(store=str(data["path"]), runs=("run_a",), queries="train", gallery="train"))
    r = res.results[0]
    g = data["split"] == "train"
    emb, lab = data["student"][g], data["labels"][g]
    # Each clip is its own nearest neighbour: without exclusion Recall@1 would be 1.
    assert retrieval_metrics(emb, lab, emb, lab).recall[1] == 1.0
    want = retrieval_metrics(emb, lab, emb, lab, exclude_self=np.arange(len(emb))).as_dict()
    assert r.exact == want
    assert r.exact["recall@1"] < 0.6  # random embeddings: near chance once the query is excluded


def test_self_exclusion_positions() -> None:
    assert self_exclusion(np.array([5, 9, 2]), np.array([2, 3, 5])).tolist() == [2, -1, 0]


def test_ann_recall_against_exact(bench: dict) -> None:
    base = dict(store=str(bench["path"]), runs=("run_a",), queries="all", gallery="train")
    full = run_benchmark(RetrievalBenchConfig(**base, index_type="factory:IVF4,Flat", nprobe=4)).results[0]
    # Probing every list is exhaustive: the index agrees with exact search.
    assert all(full.ann[f"recall_vs_exact@{k}"] == pytest.approx(1.0) for k in (1, 5, 10))
    assert full.ann["metrics"]["recall@1"] == pytest.approx(full.exact["recall@1"])
    assert full.ann["metrics"]["recall@10"] == pytest.approx(full.exact["recall@10"])
    flat = run_benchmark(RetrievalBenchConfig(**base, index_type="flat")).results[0]
    assert flat.ann["factory"] == "Flat" and flat.ann["recall_vs_exact@50"] == pytest.approx(1.0)
    one = run_benchmark(RetrievalBenchConfig(**base, index_type="factory:IVF4,Flat", nprobe=1)).results[0]
    values = [one.ann[f"recall_vs_exact@{k}"] for k in (1, 2, 5, 10, 20, 50)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert one.ann["factory"] == "IVF4,Flat" and one.ann["nprobe"] == 1
    assert values[-1] < 1.0  # one list of four cannot hold all 50 exact neighbours of every query


def test_outputs_written(bench: dict, tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = run_benchmark(RetrievalBenchConfig(store=str(bench["path"]), runs=(str(bench["run_dir"]),),
                                             teachers=("audio/fake",), index_type="hnsw", out=str(out)))
    assert set(res.outputs) == {"json", "markdown", "plot"}
    assert (out / "recall_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "retrieval.md").read_text()
    assert "run_a (ccl)" in md and "teacher audio/fake" in md and "R@50" in md and "| owl |" in md
    data = json.loads((out / "retrieval.json").read_text())
    assert [s["label"] for s in data["sources"]] == ["run_a (ccl)", "teacher audio/fake"]
    assert data["sources"][0]["exact"]["recall@1"] == res.results[0].exact["recall@1"]
    assert data["sources"][0]["ann"]["index_type"] == "hnsw"


def test_bad_sources_are_clear_errors(bench: dict) -> None:
    with pytest.raises(ConfigError, match="nothing to benchmark"):
        run_benchmark(RetrievalBenchConfig(store=str(bench["path"])))
    with pytest.raises(ConfigError, match="no teacher 'image/none'.*audio/fake"):
        run_benchmark(RetrievalBenchConfig(store=str(bench["path"]), teachers=("image/none",)))
    with pytest.raises(ConfigError, match="no student run 'ghost'"):
        run_benchmark(RetrievalBenchConfig(store=str(bench["path"]), runs=("ghost",)))
    with pytest.raises(ConfigError, match="no clips in split 'val'"):
        run_benchmark(RetrievalBenchConfig(store=str(bench["path"]), runs=("run_a",), queries="val"))
    with pytest.raises(ConfigError, match="nprobe=3.*pass --index-type"):  # was silently ignored
        run_benchmark(RetrievalBenchConfig(store=str(bench["path"]), runs=("run_a",), nprobe=3))


def test_cli_json_and_table(bench: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["benchmark", "retrieval", str(bench["path"]), "--run", str(bench["run_dir"]), "--teacher", "audio/fake",
            "--ks", "1,5", "--out", str(tmp_path / "o")]
    res = runner.invoke(cli, args + ["--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ks"] == [1, 5] and len(data["sources"]) == 2
    assert set(data["sources"][0]["exact"]) >= {"recall@1", "recall@5", "mAP", "precision@5"}
    human = runner.invoke(cli, args)
    assert human.exit_code == 0, human.output
    assert "R@5" in human.output and "recall_at_k.png" in human.output
    assert "retrieval" in runner.invoke(cli, ["benchmark", "--help"]).output


def test_html_page(bench: dict, tmp_path: Path) -> None:
    """--html: table, inline SVG curves (teachers dashed), the first N query clips beside each
    source's top k; this store has no media, so the players say 'not found' instead of breaking."""
    page = tmp_path / "bench.html"
    res = run_benchmark(RetrievalBenchConfig(store=str(bench["path"]), runs=("run_a",), teachers=("audio/fake",),
                                             queries="all", html=str(page), html_queries=3, html_k=4))
    assert res.outputs == {"html": str(page)}
    html = page.read_text(encoding="utf-8")
    assert html.count("<section>") == 3 and html.count("<h3>run_a (ccl)</h3>") == 3
    assert html.count("<polyline") == 2 and 'stroke-dasharray="6 4"' in html and "<table>" in html
    assert all(f"<h2>cat_train_{i}</h2>" in html for i in range(3))  # the first clips of the query split
    student, teacher = res.results
    assert sorted(student.samples) == [0, 1, 2] and all(len(h) == 4 for h in student.samples.values())
    # The teacher masks row 0: that sample shows why instead of results.
    assert sorted(teacher.samples) == [1, 2] and html.count("has no embedding of this clip") == 1
    # Results are the exact ranking's head with the query's own clip left out (queries overlap the gallery).
    for row, hits in student.samples.items():
        assert row not in [g for g, _ in hits] and all(a[1] >= b[1] for a, b in zip(hits, hits[1:]))
        emb = bench["student"] / np.linalg.norm(bench["student"], axis=1, keepdims=True)
        train = np.flatnonzero(bench["split"] == "train")
        sims = emb[train] @ emb[row]
        order = [int(train[j]) for j in np.argsort(-sims, kind="stable") if train[j] != row][:4]
        assert [g for g, _ in hits] == order
    assert html.count("not found: /nowhere/") == 3 * (1 + 4) + 2 * 4
    with pytest.raises(ConfigError, match="html_queries=-1"):
        run_benchmark(RetrievalBenchConfig(store=str(bench["path"]), runs=("run_a",), html=str(page), html_queries=-1))
