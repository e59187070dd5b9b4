"""`ccl-cache teach`: parse options, call ccl_cache.experiments.teach.train_teacher, report."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, ContextManager

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ccl_cache.manifest import load_manifest
from ccl_cache.experiments.teach import Progress as ProgressFn
from ccl_cache.experiments.teach import TeachConfig, report_path, train_teacher
from ccl_cache.teachers import MODALITIES, teacher_names
from ccl_cache_cli.common import ManifestFormat, config_fields, config_option, console, echo_json, interactive


def _check_arch(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A registered teacher of the chosen modality, or "pkg.module:factory"."""
    modality = ctx.params.get("modality")
    if ":" in value or value in teacher_names(modality):
        return value
    choices = ", ".join(teacher_names(modality) + ["pkg.module:factory"])
    raise click.BadParameter(f"{value!r} is not an {modality} teacher; choose one of: {choices}")


def _none(value: str | None) -> str | None:
    return None if value is None or value.lower() in ("none", "random") else value


@click.command("teach")
@click.argument("manifest", type=click.Path(dir_okay=True))
@click.option("--modality", type=click.Choice(MODALITIES), required=True, is_eager=True,
              help="Which modality the teacher learns from.")
@click.option("--arch", required=True, callback=_check_arch,
              help=f"Teacher: audio {', '.join(teacher_names('audio'))}; image {', '.join(teacher_names('image'))}; "
              "or pkg.module:factory.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (e.g. teacher.pt); the report goes beside it as .json.")
@click.option("--format", "fmt", type=ManifestFormat(), default="auto", show_default=True, help=ManifestFormat.help)
@click.option("--root", type=click.Path(exists=True, file_okay=False), default=None, help="Folder that relative media paths start from.")
@config_option(TeachConfig, "split", show_default=True,
               help="Clips to train on ('pretrain' falls back to 'train' when the manifest has none).")
@config_option(TeachConfig, "epochs", type=click.IntRange(min=1), show_default=True)
@config_option(TeachConfig, "lr", type=click.FloatRange(min=0, min_open=True), show_default=True,
               help="AdamW learning rate.")
@config_option(TeachConfig, "batch_size", type=click.IntRange(min=2), show_default=True)
@config_option(TeachConfig, "val_fraction", type=click.FloatRange(0, 1, max_open=True), show_default=True,
               help="Share of each class held out for the accuracy report.")
@config_option(TeachConfig, "weights", none="none", parse=_none, show_default=True,
               help="Start from a weights file, 'imagenet' (ResNets) or none (random).")
@config_option(TeachConfig, "seed", type=int, show_default=True)
@config_option(TeachConfig, "image_size", type=click.IntRange(min=16),
               help="Frame side for image teachers (default: the teacher's own, 112 for ResNets).")
@config_option(TeachConfig, "frames_per_clip", type=click.IntRange(min=1), show_default=True,
               help="Frames decoded per clip for image teachers (one random frame per clip per epoch).")
@config_option(TeachConfig, "audio_seconds", type=click.FloatRange(min=0, min_open=True), show_default=True,
               help="Audio window per training example (random crop; centre crop to evaluate).")
@config_option(TeachConfig, "device", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress display and no summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON to stdout.")
def teach(manifest: str, modality: str, arch: str, out: str, fmt: str, root: str | None, overwrite: bool,
          quiet: bool, as_json: bool, **options: Any) -> None:
    """Train (or fine-tune) a teacher backbone + linear head on MANIFEST's labelled clips.

    The checkpoint loads as teacher weights: `ccl-cache extract --audio-weights CKPT` (or
    --image-weights) with the same --arch as the teacher name.
    """
    clips = load_manifest(manifest, format=fmt, root=root)
    config = TeachConfig(modality=modality, arch=arch, **config_fields(options, TeachConfig))
    with _progress(quiet) as update:
        report = train_teacher(clips, config, out, progress=update, overwrite=overwrite)
    if as_json:
        echo_json(report)
    if not quiet:
        console.print(summary_table(report))
        console.print(f"checkpoint: {out}\nreport: {report_path(out)}", highlight=False)
    missing = report["classes_without_clips"]
    if missing:  # shown even with --quiet/--json: a teacher that never saw a class is worth a word
        console.print(f"[yellow]warning: {len(missing)} class(es) had no usable clip in split {report['split']!r}, so "
                      f"the teacher never saw them: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}; "
                      "add clips of them to that split (or check the failures in the report)", highlight=False)


def _progress(quiet: bool) -> ContextManager[ProgressFn | None]:
    if quiet:
        return nullcontext(None)
    if not interactive():
        return nullcontext(_plain_progress())
    return _RichProgress()


class _RichProgress:
    """A rich bar for decoding, then one for the epochs with the latest loss and accuracy."""

    def __enter__(self) -> ProgressFn:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn())  # fmt: skip
        self.bar = Progress(*columns, console=console)
        self.bar.__enter__()
        self.tasks: dict[str, Any] = {}
        return self.update

    def update(self, stage: str, done: int, total: int, info: dict[str, Any]) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total, info="")
        self.bar.update(self.tasks[stage], completed=done, total=total, info=_describe(info))

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)


def _plain_progress(every_s: float = 10.0) -> ProgressFn:
    """Log lines for non-terminals: every epoch, and decoding at most every ``every_s`` seconds."""
    last = [0.0]

    def update(stage: str, done: int, total: int, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if stage == "decode" and now - last[0] < every_s and done < total:
            return
        last[0] = now
        console.print(f"teach {stage}: {done}/{total} {_describe(info)}", highlight=False)

    return update


def _describe(info: dict[str, Any]) -> str:
    parts = [f"loss {info['loss']:.4f}"] if "loss" in info else []
    if info.get("val_accuracy") is not None:
        parts.append(f"val top-1 {100 * info['val_accuracy']:.1f}%")
    return ", ".join(parts)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def summary_table(report: dict[str, Any]) -> Table:
    clips = report["clips"]
    table = Table(title=f"teach {report['arch']} ({report['modality']}) on split {report['split']!r}",
                  show_header=False)  # fmt: skip
    table.add_column(style="bold")
    table.add_column(justify="right")
    last = report["epochs"][-1]
    rows: list[tuple[str, str]] = [
        ("classes", str(report["num_classes"])),
        ("clips used / in split", f"{clips['used']} / {clips['in_split']}"),
        ("train / held out", f"{clips['train']} / {clips['val']}"),
        ("failed to decode", str(clips["failed"])),
        ("skipped (no audio)", str(clips["skipped_no_audio"])),
        ("epochs", str(len(report["epochs"]))),
        ("final loss", f"{last['loss']:.4f}"),
        ("train top-1", _pct(last["train_accuracy"])),
        ("held-out top-1", _pct(report["val_accuracy"])),
        ("held-out chance (majority class)", _pct(report["val_chance"])),
        ("time", f"{report['seconds']:.1f} s on {report['device']}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table

