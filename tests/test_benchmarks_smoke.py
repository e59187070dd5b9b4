"""Every benchmark script runs at the tiny scale of ``benchmarks/run_all.py`` and prints one JSON
document with the keys the table is built from; ``run_all`` writes its JSON and Markdown files.

No timing thresholds: rates depend on the machine and its load. What is checked is that each
script runs end to end, measures its baseline in the same run, and reports sane quantities
(positive rates, ratios consistent with the rates they come from, recalls within [0, 1]).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fixtures_benchmarks import load_benchmark

run_all = load_benchmark("run_all")

EXPECTED_KEYS = {
    "decode": {"original", "cache", "reencode", "items", "disk_MB_per_clip", "quality", "audio_16k", "ratios"},
    "extract": {"benchmark", "cpu_count", "results"},
    "store": {"rows", "batch", "layouts"},
    "loader": {"config", "file", "cache", "model", "ratios"},
    "distill_step": {"config", "step", "optimizer", "lookups", "student_params"},
    "mfu": {"benchmark", "device", "config", "fwd_gflop_per_clip", "variants", "speedup_vs_fp32"},
    "retrieval": {"benchmark", "k", "dim", "results"},
    "scale": {"benchmark", "sizes", "config", "machine", "stages", "figures", "superlinear"},
    "gaps": {"benchmark", "config", "sets", "summary"},
}


def _positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_decode(r: dict[str, Any]) -> None:
    for source in ("original", "cache", "reencode"):
        assert r[source]["frames_per_window"] == r["config"]["frames"]
        assert _positive(r[source]["windows_per_cpu_s"])
    assert r["ratios"]["cache_vs_original"] == pytest.approx(
        r["cache"]["windows_per_cpu_s"] / r["original"]["windows_per_cpu_s"])
    # The uint8 frame cache is far larger on disk than the H.264 copies (the documented trade-off).
    assert r["disk_MB_per_clip"]["cache"] > r["disk_MB_per_clip"]["reencode"]
    assert r["original"]["decoded_per_window_est"] >= r["config"]["frames"]


def check_extract(r: dict[str, Any]) -> None:
    (setting,) = r["results"]
    assert setting["failed"] == 0 and setting["clips"] > 0
    assert all(_positive(setting[k]) for k in ("decode_clips_per_s", "inference_clips_per_s", "e2e_clips_per_s"))
    assert 0 < setting["overlap_efficiency"]


def check_store(r: dict[str, Any]) -> None:
    for layouts in r["layouts"].values():
        assert layouts["memmap"]["random_unsorted_rows_per_s_vs_memmap"] == 1.0  # the baseline itself
        assert all(_positive(v["random_unsorted_rows_per_s"]) for v in layouts.values())


def check_loader(r: dict[str, Any]) -> None:
    assert set(r["file"]) == set(r["cache"]) and r["model"]
    assert all(_positive(v["clips_per_s"]) for part in ("file", "cache") for v in r[part].values())


def check_distill_step(r: dict[str, Any]) -> None:
    step = r["step"]
    assert _positive(step["cached"]["cpu_s_per_step"]) and _positive(step["online"]["cpu_s_per_step"])
    assert step["speedup"] == pytest.approx(step["online"]["cpu_s_per_step"] / step["cached"]["cpu_s_per_step"])
    assert step["flop_bound_speedup"] > 1.0  # the online teacher adds work, never removes it
    for name in ("sgd", "adamw"):
        x = r["optimizer"][name]
        assert x["speedup"] == pytest.approx(x["loop_cpu_s_per_step"] / x["fused_cpu_s_per_step"])  # loop over fused
    bf16 = r["cpu_bf16"]  # the tiny scale asks for it; CPUs without bfloat16 units say why not
    assert "skipped" in bf16 or bf16["speedup"] == pytest.approx(
        bf16["fp32_cpu_s_per_step"] / bf16["bf16_channels_last_cpu_s_per_step"])  # float32 time over bf16
    for per_batch in r["lookups"].values():
        for modality in ("audio", "image"):
            assert all(_positive(per_batch[modality][k]) for k in ("numpy_gather", "lookup", "lookup_batch",
                                                                     "lookup_batch_lazy"))


def check_mfu(r: dict[str, Any]) -> None:
    assert r["fwd_gflop_per_clip"] > 0 and set(r["variants"]) == {"fp32", "bf16", "bf16-cl", "bf16-cl-online"}
    assert r["cached_vs_online_teacher"] == pytest.approx(
        r["variants"]["bf16-cl"]["clips_per_s"] / r["variants"]["bf16-cl-online"]["clips_per_s"])
    for x in r["variants"].values():
        assert _positive(x["clips_per_s"]) and x["achieved_tflops"] == pytest.approx(
            3 * r["fwd_gflop_per_clip"] * x["clips_per_s"] / 1000)
        assert (x["mfu"] is None) == (r["peak_bf16_tflops"] is None)  # no made-up peak for a CPU


def check_retrieval(r: dict[str, Any]) -> None:
    (entry,) = r["results"]
    exact = entry["exact"]
    assert exact["agreement"] > 0.99  # FAISS and torch agree on the exact top-k
    assert exact["screened_identical"] == 1.0  # the bfloat16 screen is exact, not approximate
    assert 0.0 <= exact["screened_fallback_fraction"] <= 1.0 and _positive(exact["screened_bf16_qps"])
    assert exact["library_choice"] in ("faiss", "screened")  # CPU: measured, never "torch"
    for point in entry["ann"]["ivf"]["sweep"]:
        assert 0.0 <= point[f"recall@{r['k']}"] <= 1.0 and _positive(point["qps"])


def check_scale(r: dict[str, Any]) -> None:
    assert len(r["sizes"]) >= 2
    for n in r["sizes"]:
        st = r["stages"][str(n)]
        assert st["build"]["disk_MB"] > 0 and st["merge"]["disk_MB"] > 0
        assert st["info"]["done"] == n and st["info"]["duplicate_rows"] == 0  # every row written, none twice
        splits = st["splits"]
        assert splits["train"] + splits["val"] + splits["test"] == splits["usable"] <= n
        assert st["dataset"]["batches"] == splits["train"] // r["config"]["batch"] and all(st["dataset"]["in_ram"])
        assert st["index_flat"]["recall@10"] > 0.99  # flat is exact: it agrees with faiss.knn
        assert 0.0 <= st["index_ivf"]["recall@10"] <= 1.0 and 1 <= st["index_ivf"]["nprobe"] <= st["index_ivf"]["nlist"]
        assert all(t["done"] == n for t in st["merge"]["teachers"].values())  # the shards cover every row
        resume = st["resume"]  # a kill at 50 %: the second half of the chunks is left to do
        assert resume["todo_chunks"] == [resume["chunks"] - resume["chunks"] // 2] * 2
        assert resume["planned_chunks"] == resume["chunks"] - resume["chunks"] // 2
        for stage in st.values():
            assert all(v >= 0 for k, v in stage.items() if k.endswith("_s")) and stage["peak_rss_MB"] > 0
    for name, fig in r["figures"].items():
        assert len(fig["values"]) == len(r["sizes"]) and len(fig["growth"]) == len(r["sizes"]) - 1
        assert fig["superlinear"] == (name in r["superlinear"])
        if len(r["sizes"]) == 2:  # one doubling: the overall growth is that doubling's
            assert fig["overall_growth"] == fig["growth"][0]


def check_gaps(r: dict[str, Any]) -> None:
    (entry,) = r["sets"]
    assert entry["gap_clips"] > 0 and entry["clips"] > entry["gap_clips"]
    for mode in ("labels", "label_free"):
        assert set(entry[mode]) == {"floor_pretrain_probe", *r["config"]["methods"]}
        for result in entry[mode].values():
            assert 0.0 <= result["ap"] <= 1.0 and 0.0 <= result["p_at_n"] <= 1.0
    # With labels, a wrong sound is found far above chance even by the tiny set's teachers.
    assert entry["labels"]["likelihood"]["ap"] > entry["random_ap"]


CHECKS = {"decode": check_decode, "extract": check_extract, "store": check_store, "loader": check_loader,
          "distill_step": check_distill_step, "mfu": check_mfu, "retrieval": check_retrieval, "scale": check_scale,
          "gaps": check_gaps}
SLOW = {"extract", "loader", "distill_step", "decode", "mfu", "gaps"}  # the longest at the tiny scale: full run only


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in run_all.BENCHES])
def test_benchmark_runs_at_tiny_scale_and_prints_its_json(name: str) -> None:
    outcome = run_all.run_bench(name, run_all.SCALES["tiny"][name], timeout=280)
    assert "error" not in outcome, outcome
    result = outcome["result"]
    assert EXPECTED_KEYS[name] <= set(result), sorted(result)
    CHECKS[name](result)
    rows = run_all.ROWS[name](result)
    assert rows and all(row.stage and row.ours for row in rows)
    for row in rows:  # a "met" verdict only where there is a target and a ratio to judge
        assert row.met is None or (row.target != "—" and row.ratio is not None)


@pytest.mark.slow  # in the full run, not the quick loop (see README)
def test_run_all_writes_json_and_markdown(tmp_path: Path) -> None:
    code = run_all.main(["--scale", "tiny", "--only", "store", "retrieval", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench-tiny.json").read_text(encoding="utf-8"))
    assert set(report["benchmarks"]) == {"store", "retrieval"} and not report["meta"]["errors"]
    table = (tmp_path / "bench-tiny.md").read_text(encoding="utf-8")
    assert "| stage | ours | same-run baseline | ratio | target | met? |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + len(report["rows"])
    assert any("IndexFlatIP" in row["baseline"] for row in report["rows"])


def test_run_all_reports_a_failing_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(run_all.SCALES["tiny"], "store", ["--no-such-option"])
    code = run_all.main(["--scale", "tiny", "--only", "store", "--out", str(tmp_path)])
    assert code == 1
    report = json.loads((tmp_path / "bench-tiny.json").read_text(encoding="utf-8"))
    assert "exit status" in report["meta"]["errors"]["store"]
    assert "failed: exit status" in (tmp_path / "bench-tiny.md").read_text(encoding="utf-8")
