"""Does leaving the detected gap clips out of training change CCL's video top-1?

At the ``fewlabels`` scale of ``table1_synthetic.py`` / ``ccl_vs_baseline.py`` (6 labelled clips
per class for the student, 30 % of the student's clips with a semantic gap), the store's clips are
scored by ``ccl-cache gaps`` (default method, with labels), and CCL from both teachers (AI) is
trained with every training clip and with the clips scoring above a threshold left out
(``distill --exclude-gaps``), same seeds and settings. The threshold is the scores' median plus
``--mads`` median absolute deviations (a rule that needs no ground truth). Reported: test video
top-1 per seed of both, the gain, and how many of the left-out clips were true gap clips
(``synth.json``). Prints one JSON document.

    python benchmarks/gaps_training.py --work /tmp/fewlabels --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's steps

import table1_synthetic as t1  # noqa: E402

from ccl_cache.experiments.synth import load_truth  # noqa: E402
from ccl_cache.experiments.table import Cell  # noqa: E402
from ccl_cache.gaps import GapConfig, save_to_store, score_gaps, truth_mask  # noqa: E402
from ccl_cache.train import train  # noqa: E402


def threshold_rule(scores: np.ndarray, mads: float) -> float:
    """median + ``mads`` × median absolute deviation of the scores."""
    median = float(np.median(scores))
    return median + mads * float(np.median(np.abs(scores - median)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="the fewlabels work folder (dataset, teachers, store; reused)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="default: the scale's")
    parser.add_argument("--mads", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    scale = t1.SCALES["fewlabels"]
    began = time.perf_counter()
    paths, info, seconds = t1.prepare(scale, Path(args.work))
    result = score_gaps(paths.store, GapConfig())
    save_to_store(result)
    threshold = threshold_rule(result.scores, args.mads)
    truth = truth_mask(load_truth(paths.data), result.ids)
    train_rows = np.array([s == "train" for s in result.splits])
    left_out = train_rows & (result.scores > threshold)
    epochs = args.epochs or scale.epochs
    runs: dict[str, dict[str, float]] = {"all_clips": {}, "gaps_left_out": {}}
    # Only the CCL cells (the table would add the baseline), seed-major so that a stopped run
    # leaves whole pairs; each cell is configured as the method table configures it.
    for seed in range(1, args.seeds + 1):
        for name, extra in (("all_clips", {}), ("gaps_left_out", {"exclude_gaps": threshold})):
            table = t1.table_config(scale, paths, ("ccl",), ("AI",), args.seeds, epochs,
                                    out=Path(args.work) / f"gaps_training_{name}")
            table = replace(table, train_options={**table.train_options, **extra})
            config = table.cell_config(Cell("ccl", "AI", seed))
            summary_file = Path(config.out) / "summary.json"
            summary = (json.loads(summary_file.read_text()) if summary_file.is_file() else train(config))
            runs[name][str(seed)] = summary["test"]["video_top1"]
            print(f"[gaps_training] seed {seed} {name}: video top-1 {runs[name][str(seed)]:.4f}", file=sys.stderr,
                  flush=True)
    seeds = sorted(runs["all_clips"], key=int)
    gains = [runs["gaps_left_out"][s] - runs["all_clips"][s] for s in seeds]
    report = {
        "benchmark": "gaps_training", "scale": scale.name, "epochs": epochs, "seeds": [int(s) for s in seeds],
        "threshold": threshold, "rule": f"median + {args.mads:g} MAD",
        "train_clips": int(train_rows.sum()), "train_gap_clips": int((train_rows & truth).sum()),
        "left_out": int(left_out.sum()), "left_out_true_gaps": int((left_out & truth).sum()),
        "video_top1": runs, "gain_points": [100 * g for g in gains],
        "gain_mean_points": 100 * float(np.mean(gains)), "wins": int(sum(g > 0 for g in gains)),
        "prepare_seconds": seconds, "seconds": round(time.perf_counter() - began, 1),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
