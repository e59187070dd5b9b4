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
from ccl_cache_cli.common import ConfigOption, config_fields, config_option, console, echo_json, interactive


def _option(field: str) -> str:
    """The option of SynthConfig field ``field`` (of the running command; spelt as one for a field it
    has no option for)."""
    for param in click.get_current_context().command.params:
        if isinstance(param, ConfigOption) and param.field == field:
            return "/".join([param.opts[0], *param.secondary_opts])
    return "--" + field.replace("_", "-")


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
@config_option(SynthConfig, "classes", type=int, show_default=True, help="Number of classes.")
@config_option(SynthConfig, "clips_per_class", type=int, show_default=True,
               help="Student clips per class (split into train/val/test).")
@config_option(SynthConfig, "pretrain_clips_per_class", type=int, show_default=True,
               help="Extra clips per class for training the teachers (split 'pretrain').")
@config_option(SynthConfig, "duration", type=float, show_default=True, help="Seconds per clip.")
@config_option(SynthConfig, "size", type=int, show_default=True, help="Frame height = width (even).")
@config_option(SynthConfig, "fps", type=int, show_default=True)
@config_option(SynthConfig, "sample_rate", type=int, show_default=True)
@config_option(SynthConfig, "gap", type=float, show_default=True,
               help="Fraction of student clips whose sound belongs to another class or is music.")
@config_option(SynthConfig, "no_audio", "--no-audio-rate", type=float, show_default=True,
               help="Fraction of student clips written without an audio stream.")
@config_option(SynthConfig, "noise", type=float, show_default=True, help="Noise level (0-1).")
@config_option(SynthConfig, "val_fraction", type=float, show_default=True)
@config_option(SynthConfig, "test_fraction", type=float, show_default=True)
@config_option(SynthConfig, "shared_cues", "--shared-cues/--unique-cues", show_default=True,
               help="Shared: classes share appearance and sound in interleaved pairs, so neither teacher alone "
                    "knows every class. Unique: every class has its own appearance and sound.")
@config_option(SynthConfig, "appearance_cue", type=click.Choice(APPEARANCE_CUES), show_default=True,
               help="'shape': colour drawn at random per clip, the shape alone tells the class.")
@config_option(SynthConfig, "seed", type=int, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Encoding processes.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty OUT_DIR (replaces earlier synth files).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def synth(out_dir: Path, workers: int, overwrite: bool, as_json: bool, **options: Any) -> None:
    """Write a synthetic audio-visual dataset of real mp4 files (H.264 + AAC) into OUT_DIR.

    Writes videos/*.mp4, manifest.csv (splits pretrain/train/val/test), vggsound.csv (the same
    files as a VGGSound listing) and synth.json (config and per-clip ground truth).
    """
    try:
        config = SynthConfig(**config_fields(options, SynthConfig))
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
