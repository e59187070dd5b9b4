"""Run every ccl-cache benchmark at one scale; write one JSON and one Markdown table.

Each benchmark script runs in its own process (a clean interpreter, its own threads), prints one
JSON document, and measures its own baseline in the same run. This collects them and turns
them into rows: stage, our figure, the same-run baseline, their ratio, the target of the
performance issue (#8), and whether it is met. On a shared machine absolute rates drift with
the load; ratios measured side by side are what the targets are about.

    python benchmarks/run_all.py --scale small --out benchmarks/results
    python benchmarks/run_all.py --scale tiny --only decode distill_step

Scales: ``tiny`` (seconds per benchmark: a smoke test), ``small`` (the 10 s 360p and 200k x 512
settings the targets name, in about ten minutes on two loaded cores), ``full`` (more clips,
steps and queries; the scale simulation's 25k-200k rows need ``--timeout`` of an hour). For the
scale simulation (``bench_scale.py``: 25k and 50k rows at ``small``, ~3 more minutes) the baseline
is the same figure at the smallest N and the ratio its growth per doubling of N. Writes
``<out>/bench-<scale>.json`` (every benchmark's JSON + the rows) and ``<out>/bench-<scale>.md``
(the table), both atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
BENCHES = ("decode", "extract", "store", "loader", "distill_step", "mfu", "retrieval", "scale", "gaps")

# Arguments of each benchmark script per scale (the scripts' own defaults otherwise).
SCALES: dict[str, dict[str, list[str]]] = {
    "tiny": {
        "decode": ["--clips", "1", "--seconds", "2", "--height", "144", "--width", "256", "--gop", "50",
                   "--windows", "6"],
        "extract": ["--quick", "--only", "2s-112p"],
        "store": ["--rows", "1024", "--frames", "1", "--batches", "4"],
        "loader": ["--quick", "--clips", "4", "--epochs", "1", "--steps", "1", "--workers", "0"],
        "distill_step": ["--student", "small", "--frames", "8", "--size", "32", "--batch", "2", "--steps", "1",
                         "--rows", "512", "--lookup-batches", "3", "--cpu-bf16"],
        "mfu": ["--student", "small", "--frames", "8", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1",
                "--variants", "fp32", "bf16", "bf16-cl", "bf16-cl-online"],
        "retrieval": ["--sizes", "4000", "--queries", "100", "--data", "clustered", "--clusters", "50",
                      "--types", "ivf", "--threads", "1"],
        "scale": ["--sizes", "1000,2000", "--queries", "50", "--repeats", "1"],
        "gaps": ["--quick", "--gaps", "0.3", "--seeds", "1", "--methods", "likelihood", "audio"],
    },
    "small": {
        "decode": ["--clips", "4", "--windows", "48"],
        "extract": ["--only", "10s-360p"],
        "store": ["--rows", "10000", "--batches", "20"],
        "loader": ["--quick", "--clips", "16", "--epochs", "2", "--workers", "0", "2"],
        "distill_step": ["--student", "r21d_ccl", "--batch", "4", "--steps", "2", "--cpu-bf16"],
        # The GPU target's model and clip size; a CPU gets a small batch (GPUs: run bench_mfu.py alone).
        "mfu": ["--batch", "2", "--steps", "2", "--warmup", "1", "--variants", "fp32", "bf16-cl", "bf16-cl-online"],
        "retrieval": ["--sizes", "200000", "--queries", "1000", "--data", "clustered", "--types", "ivf",
                      "--threads", "1"],
        "scale": ["--sizes", "25000,50000"],
        "gaps": ["--gaps", "0.1", "0.3", "--seeds", "1", "2"],
    },
    "full": {
        "decode": ["--clips", "12", "--windows", "200"],
        "extract": [],
        "store": [],
        "loader": [],
        "distill_step": ["--student", "r21d_ccl", "--batch", "16", "--steps", "3", "--cpu-bf16"],
        "mfu": [],
        "retrieval": ["--sizes", "200000", "--queries", "2000", "--threads", "0"],
        "scale": [],  # 25k to 200k rows: give run_all a --timeout of an hour or more
        "gaps": ["--gaps", "0.1", "0.3", "--seeds", "1", "2", "3", "4"],
    },
}


@dataclass(frozen=True)
class Row:
    """One line of the table: our figure against the baseline measured in the same run."""

    stage: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None  # None: no target (information)


def run_bench(name: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``bench_<name>.py`` and parse its JSON; failures are reported, not raised."""
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *args]
    began = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "command": cmd}
    seconds = round(time.perf_counter() - began, 1)
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}", "stderr": proc.stderr[-4000:], "command": cmd,
                "seconds": seconds}
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        return {"error": f"output is not JSON ({exc})", "stdout": proc.stdout[-2000:], "command": cmd}
    return {"result": result, "command": cmd, "seconds": seconds}


# --------------------------------------------------------------------------------------------
# Rows per benchmark (each reads only its own JSON)


def _fmt(value: float, unit: str = "") -> str:
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    return f"{text} {unit}".strip()


def _ratio_row(stage: str, ours: float, base: float, unit: str, target: float | None,
               ours_note: str = "", base_note: str = "") -> Row:
    ratio = ours / base if base else None
    met = None if target is None or ratio is None else ratio >= target
    return Row(stage, _fmt(ours, unit) + ours_note, _fmt(base, unit) + base_note, ratio,
               "—" if target is None else f"≥ {target:g}×", met)


def rows_decode(r: dict[str, Any]) -> list[Row]:
    unit = "windows/s/core"
    size = f"{r['config']['width']}x{r['config']['height']} GOP {r['config']['gop']}"
    orig = r["original"]["windows_per_cpu_s"]
    return [
        _ratio_row(f"Training windows: frame cache vs seeking the originals ({size})",
                   r["cache"]["windows_per_cpu_s"], orig, unit, 3.0),
        _ratio_row(f"Training windows: 172x128 GOP {r['config']['reencode_gop']} re-encode vs the originals",
                   r["reencode"]["windows_per_cpu_s"], orig, unit, 3.0,
                   ours_note=f" ({r['quality']['reencode_psnr_db_vs_cache']:.1f} dB PSNR)"),
        _ratio_row("Training items (window + crop/flip/normalise, 1 thread): frame cache vs files",
                   r["items"]["cache"]["items_per_cpu_s"], r["items"]["file"]["items_per_cpu_s"], "items/s/core", None),
        Row("Disk per clip: frame cache / re-encode / original",
            f"{r['disk_MB_per_clip']['cache']:.2f} / {r['disk_MB_per_clip']['reencode']:.2f} MB",
            f"{r['disk_MB_per_clip']['original']:.2f} MB", None, "—", None),
        Row("Audio decode + resample to 16 kHz mono (per clip)", f"{r['audio_16k']['ms_per_clip_cpu']:.1f} ms CPU",
            "—", None, "—", None),
    ]


def rows_extract(r: dict[str, Any]) -> list[Row]:
    out = []
    cores = max(1, int(r.get("cpu_count") or 1))
    spread_e2e: dict[str, float] = {}
    for s in r["results"]:
        name = f"{s['clip_seconds']:g} s {s['frame_size']}p, small teachers"
        policy = s.get("frame_sampling", "spread")
        if policy != "spread":
            name += f", --frame-sampling {policy}"
        if s.get("amp"):
            name += ", --amp" + (" (bfloat16)" if s.get("amp_active") else " (no bfloat16 units: float32)")
        e2e, dec = s["e2e_clips_per_s"] / cores, s["decode_clips_per_s"] / cores
        if policy == "spread" and not s.get("amp"):
            spread_e2e[s["setting"]] = e2e
        elif s["setting"] in spread_e2e:
            out.append(_ratio_row(f"Extraction end to end, {name} vs spread ({s['clips']} clips)", e2e,
                                  spread_e2e[s["setting"]], "clips/s/core", None))
        inf = s["inference_clips_per_s"] / cores
        per_core_target = 8.0 if s["clip_seconds"] >= 10 else None
        out.append(Row(f"Extraction end to end, {name} ({s['clips']} clips)", _fmt(e2e, "clips/s/core"),
                       f"{_fmt(dec, 'clips/s/core')} decode alone", e2e / dec if dec else None,
                       "≥ 8 clips/s/core" if per_core_target else "—",
                       None if per_core_target is None else e2e >= per_core_target))
        slowest = min(dec, inf)
        out.append(Row(f"Extraction overlap efficiency, {name}", f"{s['overlap_efficiency']:.2f}",
                       f"{_fmt(slowest, 'clips/s/core')} slowest stage alone", s["overlap_efficiency"],
                       "≥ 0.85", s["overlap_efficiency"] >= 0.85))
    return out


def rows_store(r: dict[str, Any]) -> list[Row]:
    out = []
    for k, layouts in r["layouts"].items():
        base = layouts["memmap"]
        best = "zarr-none-256"  # the store's default layout
        z = layouts[best]
        out.append(_ratio_row(f"Store write, {best}, {k} ({r['rows']} rows)", z["write_MBps"],
                              base["write_MBps"], "MB/s", None, base_note=" memmap"))
        out.append(_ratio_row(f"Store random {r['batch']}-row reads, {best}, {k}", z["random_unsorted_rows_per_s"],
                              base["random_unsorted_rows_per_s"], "rows/s", None, base_note=" memmap"))
        h = layouts["hdf5-none-256"]
        out.append(_ratio_row(f"Store random {r['batch']}-row reads, hdf5-none-256, {k}",
                              h["random_unsorted_rows_per_s"], base["random_unsorted_rows_per_s"], "rows/s", None,
                              base_note=" memmap"))
    return out


def rows_loader(r: dict[str, Any]) -> list[Row]:
    out = []
    cfg = r["config"]
    what = f"{cfg['frames']}x{cfg['size']}² from {cfg['video_size']}p {cfg['duration']:g} s files"
    for key, file in r["file"].items():
        out.append(_ratio_row(f"DataLoader ({key.replace('_', ' ')}): frame cache vs files, {what}",
                              r["cache"][key]["clips_per_s"], file["clips_per_s"], "clips/s", None))
    best_cache = max(c["clips_per_s"] for c in r["cache"].values())
    for name, model in r["model"].items():
        out.append(_ratio_row(f"DataLoader (frame cache, best) vs `{name}` train step, CPU", best_cache,
                              model["clips_per_s"], "clips/s", 1.0, base_note=" step"))
    return out


def rows_distill_step(r: dict[str, Any]) -> list[Row]:
    cfg, step = r["config"], r["step"]
    what = f"{cfg['student']}, batch {cfg['batch']}, {cfg['frames']}x{cfg['size']}², {cfg['threads']} thread(s)"
    cached, online = 1 / step["cached"]["cpu_s_per_step"], 1 / step["online"]["cpu_s_per_step"]
    out = [_ratio_row(f"Distillation step: cached teacher vs online ResNet-34 ({what})", cached, online,
                      "steps/CPU-s", 1.5,
                      base_note=f" (FLOP bound {step['flop_bound_speedup']:.3f}×)")]
    for name, x in r.get("optimizer", {}).items():
        out.append(_ratio_row(f"Training step (cached), fused {name} kernel vs per-tensor loop ({what})",
                              1 / x["fused_cpu_s_per_step"], 1 / x["loop_cpu_s_per_step"], "steps/CPU-s", None))
    bf16 = r.get("cpu_bf16", {})
    if "speedup" in bf16:
        out.append(_ratio_row(f"Training step (cached), bf16 autocast + channels_last_3d vs float32 on CPU ({what})",
                              1 / bf16["bf16_channels_last_cpu_s_per_step"], 1 / bf16["fp32_cpu_s_per_step"],
                              "steps/CPU-s", None))
    for key, per in r["lookups"].items():
        batch = key.split("_")[1]
        for modality, level in (("image", "frame-level K=8"), ("audio", "clip-level")):
            x = per[modality]
            stage = f"Train-time lookups, {modality} ({level}), batch {batch}: lookup_batch vs numpy gather"
            out.append(_ratio_row(stage, x["lookup_batch"], x["numpy_gather"], "rows/s", 0.5))
        x = per["image"]
        out.append(_ratio_row(f"Train-time lookups, image, batch {batch}, lazy store reads (no RAM) vs numpy gather",
                              x["lookup_batch_lazy"], x["numpy_gather"], "rows/s", None))
    return out


def rows_mfu(r: dict[str, Any]) -> list[Row]:
    cfg = r["config"]
    what = f"{cfg['student']}, batch {cfg['batch']}, {cfg['frames']}x{cfg['size']}², {r['device_name']}"
    base = r["variants"].get("fp32")
    out = []
    for variant, x in r["variants"].items():
        if variant == "fp32":
            continue
        mfu = x["mfu"]
        ours = f"{x['clips_per_s']:.1f} clips/s, " + ("MFU unknown (no peak for this device)" if mfu is None
                                                       else f"MFU {100 * mfu:.1f} %")
        baseline = "—" if base is None else f"{base['clips_per_s']:.1f} clips/s fp32"
        ratio = None if base is None else x["clips_per_s"] / base["clips_per_s"]
        target_applies = r["device"].startswith("cuda") and variant.startswith("bf16") and "online" not in variant
        out.append(Row(f"Student training step, {variant} ({what})", ours, baseline, ratio,
                       "MFU ≥ 30 % (CUDA)" if target_applies else "—",
                       None if not target_applies or mfu is None else mfu >= 0.30))
    if "cached_vs_online_teacher" in r:
        cached, online = r["variants"]["bf16-cl"], r["variants"]["bf16-cl-online"]
        out.append(_ratio_row(f"Distillation step, cached teacher vs online ResNet-34, bf16-cl ({what})",
                              cached["clips_per_s"], online["clips_per_s"], "clips/s", 1.5))
    return out


def rows_retrieval(r: dict[str, Any]) -> list[Row]:
    out, k = [], r["k"]
    qps = {"faiss": "faiss_flatip_qps", "torch": "torch_matmul_topk_qps", "screened": "screened_bf16_qps"}
    for entry in r["results"]:
        ex = entry["exact"]
        where = f"{entry['n'] // 1000}k×{r['dim']} {entry['data']}, {r['torch_threads']} thread(s)"
        backend = ex["library_choice"]  # measured by choose_exact_backend in the benchmark's process
        out.append(_ratio_row(f"Exact search, library's CPU choice ({backend}), {where}", ex[qps[backend]],
                              ex["faiss_flatip_qps"], "q/s", 2.0, base_note=" IndexFlatIP"))
        out.append(_ratio_row(f"Exact search, bfloat16-screened (exact), {where}", ex["screened_bf16_qps"],
                              ex["faiss_flatip_qps"], "q/s", None, base_note=" IndexFlatIP",
                              ours_note=f" ({ex['screened_fallback_fraction']:.1%} fallbacks)"))
        out.append(_ratio_row(f"Exact search, torch float32 matmul + topk, {where}", ex["torch_matmul_topk_qps"],
                              ex["faiss_flatip_qps"], "q/s", None, base_note=" IndexFlatIP"))
        ivf = entry["ann"].get("ivf_default")  # what a user gets: nprobe calibrated at build time
        if ivf:
            recall = ivf[f"recall@{k}"]
            row = _ratio_row(f"IVF default ({ivf['factory']}, calibrated nprobe {ivf['nprobe']}), {where}", ivf["qps"],
                             ex["faiss_flatip_qps"], "q/s", 10.0, ours_note=f" (recall@{k} {recall:.3f})",
                             base_note=" IndexFlatIP")
            met = bool(row.met) and recall >= 0.95
            out.append(Row(row.stage, row.ours, row.baseline, row.ratio, f"≥ 10× at recall@{k} ≥ 0.95", met))
    return out


def rows_scale(r: dict[str, Any]) -> list[Row]:
    """Each figure at the largest N against the smallest; the ratio is its growth per doubling of
    N over that range, and a cost's target is to grow no faster than the benchmark's flag."""
    sizes, flag, out = r["sizes"], r["flag_growth"], []
    if len(sizes) < 2:
        return out
    n0, n1, kilo = sizes[0], sizes[-1], lambda n: f"{n / 1000:g}k"
    for name, fig in r["figures"].items():
        v0, v1 = fig["values"][0], fig["values"][-1]
        if v0 is None or v1 is None:
            continue
        growth, cost = fig["overall_growth"], fig["kind"] == "cost"
        out.append(Row(f"Scale, {name.strip()} ({kilo(n1)} vs {kilo(n0)} rows)", _fmt(v1, fig["unit"]),
                       f"{_fmt(v0, fig['unit'])} at {kilo(n0)}", growth,
                       f"≤ {flag:g}× per doubling" if cost else "—",
                       (growth <= flag) if cost and growth is not None else None))
    return out


def rows_gaps(r: dict[str, Any]) -> list[Row]:
    """Average precision of the default method against the issue's floor (probes fitted on the
    pretrain clips alone), with labels and label-free, per gap rate (mean over the data seeds)."""
    out = []
    default = "likelihood" if "likelihood" in r["config"]["methods"] else r["config"]["methods"][0]
    for rate, per in r["summary"].items():
        for mode, target in (("labels", 0.97), ("label_free", 0.85)):
            ours, floor = per[mode][default], per[mode]["floor_pretrain_probe"]
            ratio = ours["ap_mean"] / floor["ap_mean"] if floor["ap_mean"] > 0 else None
            out.append(Row(f"Gap finding, {default} {mode.replace('_', '-')}, gap {rate} (seeds "
                           f"{','.join(map(str, per['seeds']))})", f"AP {ours['ap_mean']:.3f} (min {ours['ap_min']:.3f})",
                           f"AP {floor['ap_mean']:.3f} pretrain probes (random {per['random_ap']:.3f})", ratio,
                           f"AP ≥ {target}", ours["ap_mean"] >= target))
    return out


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "decode": rows_decode, "extract": rows_extract, "store": rows_store, "loader": rows_loader,
    "distill_step": rows_distill_step, "mfu": rows_mfu, "retrieval": rows_retrieval, "scale": rows_scale,
    "gaps": rows_gaps,
}


# --------------------------------------------------------------------------------------------


def to_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [f"Scale `{meta['scale']}`, {meta['cpu_count']} CPU cores, {meta['machine']}, "
             f"{meta['seconds']:.0f} s in all. Command: `{meta['command']}`", "",
             "| stage | ours | same-run baseline | ratio | target | met? |", "|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}×"
        met = {True: "yes", False: "**no**", None: "—"}[row.met]
        lines.append(f"| {row.stage} | {row.ours} | {row.baseline} | {ratio} | {row.target} | {met} |")
    for name, error in meta["errors"].items():
        lines.append(f"| {name} | failed: {error} | | | | **no** |")
    return "\n".join(lines) + "\n"


def collect(scale: str, only: list[str], timeout: float) -> tuple[dict[str, Any], list[Row], dict[str, str]]:
    results: dict[str, Any] = {}
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for name in only:
        print(f"[run_all] {name} ({scale}) ...", file=sys.stderr, flush=True)
        outcome = run_bench(name, SCALES[scale][name], timeout)
        results[name] = outcome
        if "error" in outcome:
            errors[name] = outcome["error"]
            print(f"[run_all] {name} failed: {outcome['error']}\n{outcome.get('stderr', '')}", file=sys.stderr)
            continue
        print(f"[run_all] {name} done in {outcome['seconds']} s", file=sys.stderr, flush=True)
        try:
            rows += ROWS[name](outcome["result"])
        except (KeyError, TypeError, ZeroDivisionError) as exc:  # a script changed its JSON
            errors[name] = f"unexpected JSON ({type(exc).__name__}: {exc})"
    return results, rows, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for bench-<scale>.json/.md")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per benchmark")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    from ccl_cache.fileio import atomic_write_text

    began = time.perf_counter()
    results, rows, errors = collect(args.scale, args.only, args.timeout)
    meta = {"scale": args.scale, "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "python": platform.python_version(), "seconds": time.perf_counter() - began, "errors": errors,
            "command": "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "rows": [asdict(r) for r in rows], "benchmarks": results}
    atomic_write_text(out / f"bench-{args.scale}.json", json.dumps(report, indent=2) + "\n")
    table = to_markdown(rows, meta)
    atomic_write_text(out / f"bench-{args.scale}.md", table)
    print(table)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
