"""Finding the semantic gap: how well each ``ccl-cache gaps`` method ranks the synthetic dataset's
gap clips (a sound of another class, or class-agnostic music) above the clean ones.

For each gap rate and data seed it builds a synthetic set the way ``ccl-cache demo`` does (synth →
small teachers trained on the pretrain split → extraction into a store), scores the student clips
with every method, with labels and label-free, and measures average precision (AP) and precision at
the number of gap clips (P@n) against ``synth.json``. Beside them: a random ranking, and the floors
of the issue (#20): linear probes fitted on the pretrain clips alone, −log p_audio(label) with
labels and −log Σ_c p_audio(c)·p_image(c) label-free. Prints one JSON document.

    python benchmarks/bench_gaps.py --gaps 0.1 0.3 --seeds 1 2 3 --workdir /tmp/gap-sets
    python benchmarks/bench_gaps.py --quick --gaps 0.3 --seeds 1     # a smoke test (~1 min)

The methods' settings (GapConfig defaults) were chosen on data seed 0; report other seeds.
``--workdir`` keeps the built sets, and a later run with the same sizes reuses them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small dense solves: threads only fight on a shared CPU
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from _common import print_json_in_workdir  # noqa: E402


def build_set(folder: Path, demo: Any) -> float:
    """synth → teach → extract into ``folder`` (skipped when a set of the same sizes is there)."""
    from ccl_cache.experiments.demo import DemoPaths, extract_store, make_dataset, teach_teachers

    marker = folder / "built.json"
    wanted = json.loads(json.dumps({k: v for k, v in asdict(demo).items() if k not in ("out", "overwrite")}))
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return 0.0
    if folder.exists():  # another size, or a build that did not finish: start over
        shutil.rmtree(folder)
    began = time.perf_counter()
    paths = DemoPaths(folder)
    manifest = make_dataset(demo, paths)
    teach_teachers(demo, paths, manifest)
    extract_store(demo, paths)
    marker.write_text(json.dumps(wanted))
    return time.perf_counter() - began


def floors(data: Any) -> dict[str, np.ndarray]:
    """The issue's floors: plain probes fitted on the pretrain clips alone."""
    from ccl_cache.gaps.methods.base import agreement_log_proba, label_log_proba
    from ccl_cache.gaps.models import LinearProbe

    shrinkage = data.config.shrinkage
    audio = LinearProbe.fit(data.ref_audio, data.ref_labels, data.classes, shrinkage).log_proba(data.audio)
    image = LinearProbe.fit(data.ref_image, data.ref_labels, data.classes, shrinkage).log_proba(data.image)
    return {"labels": -label_log_proba(audio, data.labels), "label_free": -agreement_log_proba(audio, image)}


KINDS = ("music", "other_class_fits_picture", "other_class")


def gap_kind(clip: dict[str, Any], design: dict[str, dict[str, Any]]) -> str:
    """What a gap clip carries: music; the sound of a class that shares its picture's appearance
    with some class of that sound (``other_class_fits_picture``: single frames and the sound alone
    cannot tell it from a clean clip of that class, only the label or the motion can); or the
    sound of a class no such class explains (``other_class``)."""
    if clip["audio_class"] == "music":
        return "music"
    look = design[clip["video_class"]]["appearance_group"]
    heard = design[clip["audio_class"]]["sound_group"]
    fits = any(c["appearance_group"] == look and c["sound_group"] == heard for c in design.values())
    return "other_class_fits_picture" if fits else "other_class"


def score_set(folder: Path, methods: list[str], config: Any) -> dict[str, Any]:
    from ccl_cache.data.splits import resolve_teachers
    from ccl_cache.experiments.synth import load_truth
    from ccl_cache.gaps import METHODS, evaluate_ranking, truth_mask
    from ccl_cache.gaps.data import load_data
    from ccl_cache.gaps.evaluate import average_precision, precision_at_n
    from ccl_cache.store import open_store

    truth = load_truth(folder / "data")
    by_id = {c["id"]: c for c in truth["clips"]}
    design = {c["name"]: c for c in truth["classes"]}
    out: dict[str, Any] = {}
    with open_store(folder / "store.zarr") as store:
        teachers = resolve_teachers(store, config.teachers)
        for mode, label_free in (("labels", False), ("label_free", True)):
            results: dict[str, Any] = {}
            data, rows, _ = load_data(store, teachers, replace(config, label_free=False))
            ids = [str(i) for i in np.asarray(store.clips.id)[rows]]
            gap = truth_mask(truth, ids)
            base = evaluate_ranking(np.zeros(len(gap)), gap)
            floor = floors(data)[mode]
            results["floor_pretrain_probe"] = {"ap": average_precision(floor, gap), "p_at_n": precision_at_n(floor, gap)}
            for name in methods:
                cfg = replace(config, method=name, label_free=label_free)
                data, _, _ = load_data(store, teachers, cfg)
                began = time.perf_counter()
                scores = METHODS.get(name)(data)
                entry = evaluate_ranking(scores, gap)
                top = set(np.argsort(-scores, kind="stable")[: int(gap.sum())].tolist())
                missed = [by_id[ids[i]] for i in np.flatnonzero(gap) if i not in top]
                visible = np.array([not g or gap_kind(by_id[i], design) != "other_class_fits_picture"
                                    for i, g in zip(ids, gap)])
                results[name] = {"ap": entry["ap"], "p_at_n": entry["p_at_n"], "seconds": time.perf_counter() - began,
                                 # AP with the clips that only the label or the motion can expose left out
                                 "ap_without_fits_picture": average_precision(scores[visible], gap[visible]),
                                 "missed": {kind: sum(gap_kind(c, design) == kind for c in missed) for kind in KINDS}}
            out[mode] = results
        out["clips"], out["gap_clips"] = base["clips"], base["gap_clips"]
        out["gap_kinds"] = {kind: sum(gap_kind(by_id[i], design) == kind for i in np.array(ids)[gap]) for kind in KINDS}
        out["random_ap"] = base["random_ap"]
    return out


def summarize(sets: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst AP, mean P@n, per gap rate, mode and method, over the data seeds."""
    summary: dict[str, Any] = {}
    for rate in sorted({s["gap"] for s in sets}):
        at = [s for s in sets if s["gap"] == rate]
        per: dict[str, Any] = {"random_ap": float(np.mean([s["random_ap"] for s in at])), "seeds": [s["seed"] for s in at]}
        for mode in ("labels", "label_free"):
            per[mode] = {name: {"ap_mean": float(np.mean([s[mode][name]["ap"] for s in at])),
                                "ap_min": float(np.min([s[mode][name]["ap"] for s in at])),
                                "p_at_n_mean": float(np.mean([s[mode][name]["p_at_n"] for s in at])),
                                **({"ap_without_fits_picture_mean": float(np.mean(
                                    [s[mode][name]["ap_without_fits_picture"] for s in at]))}
                                   if "ap_without_fits_picture" in at[0][mode][name] else {})}
                         for name in at[0][mode]}
        summary[str(rate)] = per
    return summary


def run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ccl_cache.experiments.demo import DemoConfig
    from ccl_cache.gaps import METHODS, GapConfig

    methods = args.methods or METHODS.names()
    config = GapConfig(folds=args.folds)
    sets = []
    for rate in args.gaps:
        for seed in args.seeds:
            base = DemoConfig.quick() if args.quick else DemoConfig()
            demo = replace(base, out=str(folder / f"g{rate}_s{seed}"), gap=rate, seed=seed, overwrite=True)
            built = build_set(folder / f"g{rate}_s{seed}", demo)
            sets.append({"gap": rate, "seed": seed, "build_seconds": built,
                         **score_set(folder / f"g{rate}_s{seed}", methods, config)})
            print(f"[bench_gaps] gap {rate} seed {seed}: " + ", ".join(
                f"{m} {sets[-1]['labels'][m]['ap']:.3f}/{sets[-1]['label_free'][m]['ap']:.3f}" for m in methods),
                file=sys.stderr, flush=True)
    sizes = DemoConfig.quick() if args.quick else DemoConfig()
    return {"benchmark": "gaps", "config": {"gap": config.to_dict(), "classes": sizes.classes,
                                            "clips_per_class": sizes.clips_per_class,
                                            "pretrain_clips_per_class": sizes.pretrain_clips_per_class,
                                            "duration": sizes.duration, "teach_epochs": sizes.teach_epochs,
                                            "methods": methods, "tuned_on_seed": 0},
            "sets": sets, "summary": summarize(sets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gaps", type=float, nargs="+", default=[0.1, 0.3], help="gap rates of the synthetic sets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="data seeds (0 tuned the defaults)")
    parser.add_argument("--methods", nargs="+", default=None, help="methods to score (default: all)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the demo's --quick sizes (a smoke test)")
    parser.add_argument("--workdir", default=None, help="keep (and reuse) the built sets here")
    args = parser.parse_args()
    print_json_in_workdir(lambda folder: run(folder, args), args.workdir, "ccl-bench-gaps-")


if __name__ == "__main__":
    main()
