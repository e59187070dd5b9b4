"""`ccl-cache synth`: write the synthetic audio-visual dataset (see ccl_cache.experiments.synth)."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ccl_cache.errors import ConfigError
from ccl_cache.manifest import Manifest
from ccl_cache.experiments.synth import APPEARANCE_CUES, SPLITS, SynthConfig, generate, load_truth
from ccl_cache_cli.common import console, echo_json, interactive

_DEFAULT = SynthConfig()
_OPTIONS = {"no_audio": "--no-audio-rate", "shared_cues": "--shared-cues/--unique-cues"}


def _option(field: str) -> str:
    """The option of SynthConfig field ``field``."""
    return _OPTIONS.get(field, "--" + field.replace("_", "-"))


def _summary(out_dir: Path, manifest: Manifest, seconds: float) -> dict[str, Any]:
    truth = load_truth(out_dir)
    per_class = Counter((r.label, r.split) for r in manifest.records)
    return {
        "out_dir": str(out_dir),
        "clips": len(manifest),
        "by_split": truth["counts"]["by_split"],
        "by_class": {c: {s: per_class[(c, s)] for s in SPLITS} for c in manifest.classes},
        "gap_clips": truth["counts"]["gap"],
        "music_clips": truth["counts"]["music"],
        "no_audio_clips": truth["counts"]["no_audio"],
        "files_written": len(manifest) + 3,  # videos + manifest.csv, vggsound.csv, synth.json
        "seconds": round(seconds, 2),
    }


def _show(summary: dict[str, Any]) -> None:
    table = Table(title=f"synthetic dataset in {summary['out_dir']}")
    table.add_column("class")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for name, counts in summary["by_class"].items():
        table.add_row(name, *(str(counts[s]) for s in SPLITS))
    table.add_row("[bold]total", *(f"[bold]{summary['by_split'][s]}" for s in SPLITS))
    console.print(table)
    console.print(
        f"{summary['clips']} clips, {summary['gap_clips']} with a semantic gap "
        f"({summary['music_clips']} music), {summary['no_audio_clips']} without audio; "
        f"{summary['files_written']} files written in {summary['seconds']:.1f} s"
    )


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", type=int, default=_DEFAULT.classes, show_default=True, help="Number of classes.")
@click.option("--clips-per-class", type=int, default=_DEFAULT.clips_per_class, show_default=True,
              help="Student clips per class (split into train/val/test).")
@click.option("--pretrain-clips-per-class", type=int, default=_DEFAULT.pretrain_clips_per_class,
              show_default=True, help="Extra clips per class for training the teachers (split 'pretrain').")
@click.option("--duration", type=float, default=_DEFAULT.duration, show_default=True, help="Seconds per clip.")
@click.option("--size", type=int, default=_DEFAULT.size, show_default=True, help="Frame height = width (even).")
@click.option("--fps", type=int, default=_DEFAULT.fps, show_default=True)
@click.option("--sample-rate", type=int, default=_DEFAULT.sample_rate, show_default=True)
@click.option("--gap", type=float, default=_DEFAULT.gap, show_default=True,
              help="Fraction of student clips whose sound belongs to another class or is music.")
@click.option("--no-audio-rate", type=float, default=_DEFAULT.no_audio, show_default=True,
              help="Fraction of student clips written without an audio stream.")
@click.option("--noise", type=float, default=_DEFAULT.noise, show_default=True, help="Noise level (0-1).")
@click.option("--val-fraction", type=float, default=_DEFAULT.val_fraction, show_default=True)
@click.option("--test-fraction", type=float, default=_DEFAULT.test_fraction, show_default=True)
@click.option("--shared-cues/--unique-cues", default=_DEFAULT.shared_cues, show_default=True,
              help="Shared: classes share appearance and sound in interleaved pairs, so neither teacher alone "
                   "knows every class. Unique: every class has its own appearance and sound.")
@click.option("--appearance-cue", type=click.Choice(APPEARANCE_CUES), default=_DEFAULT.appearance_cue,
              show_default=True, help="'shape': colour drawn at random per clip, the shape alone tells the class.")
@click.option("--seed", type=int, default=_DEFAULT.seed, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Encoding processes.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty OUT_DIR (replaces earlier synth files).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def synth(out_dir: Path, classes: int, clips_per_class: int, pretrain_clips_per_class: int, duration: float,
          size: int, fps: int, sample_rate: int, gap: float, no_audio_rate: float, noise: float,
          val_fraction: float, test_fraction: float, shared_cues: bool, appearance_cue: str, seed: int,
          workers: int, overwrite: bool, as_json: bool) -> None:
    """Write a synthetic audio-visual dataset of real mp4 files (H.264 + AAC) into OUT_DIR.

    Writes videos/*.mp4, manifest.csv (splits pretrain/train/val/test), vggsound.csv (the same
    files as a VGGSound listing) and synth.json (config and per-clip ground truth).
    """
    try:
        config = SynthConfig(
            classes=classes, clips_per_class=clips_per_class, pretrain_clips_per_class=pretrain_clips_per_class,
            duration=duration, size=size, fps=fps, sample_rate=sample_rate, gap=gap, no_audio=no_audio_rate,
            noise=noise, val_fraction=val_fraction, test_fraction=test_fraction, shared_cues=shared_cues,
            appearance_cue=appearance_cue, seed=seed,
        )
    except ConfigError as exc:  # the library names SynthConfig's fields; the user typed options
        raise ConfigError(re.sub(r"SynthConfig\.(\w+)", lambda m: _option(m.group(1)), str(exc))) from None
    started = time.perf_counter()
    columns = (TextColumn("writing clips"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not interactive()) as bar:
        task = bar.add_task("clips", total=None)
        manifest = generate(out_dir, config, workers=workers, overwrite=overwrite,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    summary = _summary(out_dir.absolute(), manifest, time.perf_counter() - started)
    if as_json:
        echo_json(summary)
    else:
        _show(summary)
