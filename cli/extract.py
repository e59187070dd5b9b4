"""`ccl-cache extract` and `ccl-cache merge`: parse options, call ccl_cache.extract, report."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Any, Callable

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ccl_cache.extract import (
    FRAME_SAMPLING,
    MAX_IMAGE_SIZE,
    PROBE_CLIPS,
    ExtractConfig,
    ExtractSummary,
    ProgressEvent,
    merge_shards,
    plan_extraction,
    run_extraction,
)
from ccl_cache.teachers import teacher_names
from ccl_cache_cli.common import (ManifestFormat, config_fields, config_option, console, echo_json, interactive,
                                  no_probe_option, probes, resume_hint, resume_same_command, show_plan)


def _teacher_option(modality: str) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """Validate a teacher name: a registered one of ``modality``, "pkg.module:factory" or "none"."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None or value.lower() == "none":
            return None
        if value in teacher_names(modality) or ":" in value:
            return value
        choices = ", ".join(teacher_names(modality) + ["pkg.module:factory", "none"])
        raise click.BadParameter(f"{value!r} is not an {modality} teacher; choose one of: {choices}")

    return check


def _none(value: str | None) -> str | None:
    return None if value is None or value.lower() in ("none", "random") else value


@click.command(
    epilog="Exit status: 0 every clip has its embeddings; 1 some clips failed (listed in the store's "
    "failure ledger and in STORE.failures.jsonl; rerun with --retry-failed); 2 usage or "
    "configuration error (nothing extracted)."
)
@click.argument("manifest", type=click.Path(dir_okay=True))
@click.option("--store", "store", required=True, help="Output store: OUT.zarr (Zarr directory) or OUT.h5 (HDF5).")
@config_option(ExtractConfig, "format", "--format", "fmt", type=ManifestFormat(), show_default=True,
               help=ManifestFormat.help)
@config_option(ExtractConfig, "root", type=click.Path(exists=True, file_okay=False),
               help="Folder that relative media paths start from.")
@config_option(ExtractConfig, "audio_teacher", show_default=True, callback=_teacher_option("audio"),
               help=f"Audio teacher: {', '.join(teacher_names('audio'))}, pkg.module:factory, or none.")
@config_option(ExtractConfig, "audio_weights", none="none", parse=_none, show_default=True,
               help="Audio teacher weights file (PANNs .pth or a `ccl-cache teach` checkpoint), or none (random).")
@config_option(ExtractConfig, "image_teacher", show_default=True, callback=_teacher_option("image"),
               help=f"Image teacher: {', '.join(teacher_names('image'))}, pkg.module:factory, or none.")
@config_option(ExtractConfig, "image_weights", none="none", parse=_none, show_default=True,
               help="Image teacher weights: imagenet, a weights file, or none (random).")
@config_option(ExtractConfig, "image_size", type=click.IntRange(min=8, max=MAX_IMAGE_SIZE), show_default=True,
               help="Side of the square frames the image teacher sees (the paper: 112).")
@config_option(ExtractConfig, "frames_per_clip", type=click.IntRange(min=1), show_default=True,
               help="Frames per clip for the image teacher, at the centres of equal parts of the clip.")
@config_option(ExtractConfig, "frame_sampling", type=click.Choice(FRAME_SAMPLING), show_default=True,
               help="Which frame stands for each of the K sample times. spread: the frame shown at that time "
               "(decodes from the keyframe before each time: on long GOPs ~10x more frames than K). keyframes: "
               "the keyframe nearest each time, distinct while the clip has enough; decodes only the clip's ~N "
               "keyframes instead, but frames land on keyframe times, so with long GOPs several of the K frames "
               "may be the same picture. Recorded in the store: resuming needs the same choice.")
@config_option(ExtractConfig, "audio_segment", type=click.FloatRange(min=0, min_open=True),
               help="Embed audio per SECONDS-long segment (default: one embedding per clip).")
@config_option(ExtractConfig, "dtype", type=click.Choice(["float16", "float32"]), show_default=True,
               help="Embedding storage type.")
@config_option(ExtractConfig, "batch_size", type=click.IntRange(min=1), show_default=True,
               help="Clips per batch = rows per store chunk (a new store's chunk size).")
@config_option(ExtractConfig, "workers", type=click.IntRange(min=0), show_default=True,
               help="Decode processes (0: decode in the main process, no timeouts).")
@config_option(ExtractConfig, "device", show_default=True, help="auto, cpu, cuda or cuda:N.")
@config_option(ExtractConfig, "amp", is_flag=True,
               help="Mixed precision (autocast): bfloat16 on CUDA GPUs that have it (else float16) and on CPUs "
                    "with bfloat16 units (AMX/AVX512-BF16; other CPUs stay float32).")
@config_option(ExtractConfig, "threads", type=click.IntRange(min=1),
               help="Torch threads for the teachers (default on CPU: the cores the decode workers leave, at "
                    "least 1; on CUDA: torch's).")
@config_option(ExtractConfig, "shard", metavar="I/N",
               help="Process shard I of N (0-based); default: torchrun's RANK/WORLD_SIZE, else everything.")
@config_option(ExtractConfig, "overwrite", is_flag=True,
               help="Replace the teachers' arrays (or a store of another manifest).")
@config_option(ExtractConfig, "retry_failed", is_flag=True,
               help="Redo only the rows in the failure ledger (and unfinished rows).")
@config_option(ExtractConfig, "min_coverage", type=click.FloatRange(0, 1), show_default=True,
               help="Clips whose window decodes less than this fraction are recorded as 'partial' failures; "
                    "clips whose audio covers less of it, as 'partial-audio' (audio only).")
@config_option(ExtractConfig, "strict", is_flag=True, help="Treat decoder errors inside a clip as failures.")
@config_option(ExtractConfig, "timeout_s", "--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
               show_default=True, help="Seconds one clip may take to decode before its worker is replaced.")
@config_option(ExtractConfig, "force", is_flag=True,
               help="Take over the store's writer lease held by another process.")
@click.option("--quiet", is_flag=True, help="No plan, progress display or summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (with the plan) as JSON to stdout.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (clips, disk, free space, time from the first clips) and stop: nothing is written.")
@no_probe_option("the first clips (decoded and run through the teachers, with random weights)")
def extract(manifest: str, store: str, quiet: bool, as_json: bool, dry_run: bool, no_probe: bool,
            **options: Any) -> None:
    """Run the audio and image teachers once over MANIFEST's clips and cache their embeddings.

    Resumable: a rerun skips the rows already done. Several processes can split the work with
    --shard I/N (Zarr: one shared store; HDF5: one file per shard, joined by `ccl-cache merge`).
    """
    config = ExtractConfig(manifest=manifest, store=store, **config_fields(options, ExtractConfig))
    clips = PROBE_CLIPS if probes(no_probe, quiet, dry_run) else 0
    plan = show_plan(lambda: plan_extraction(config, probe_clips=clips), dry_run, quiet, as_json)
    began = threading.Event()  # a progress event: the store and its teachers are made (an --overwrite done)
    with resume_hint(lambda: resume_same_command(config.overwrite and began.is_set())):
        summary = _run_with_progress(config, quiet, lambda event: began.set())
    if as_json:
        echo_json({**dataclasses.asdict(summary), "exit_code": summary.exit_code,
                   "plan": None if plan is None else plan.as_dict()})
    if not quiet:
        console.print(summary_table(summary))
    sys.exit(summary.exit_code)


def _run_with_progress(config: ExtractConfig, quiet: bool, mark: Callable[[ProgressEvent], None]) -> ExtractSummary:
    """Run with a progress display (none when ``quiet``); ``mark`` sees every event too."""
    def also(show: Callable[[ProgressEvent], None]) -> Callable[[ProgressEvent], None]:
        return lambda event: (mark(event), show(event))[-1]

    if quiet:
        return run_extraction(config, progress=mark)
    if not interactive():
        return run_extraction(config, progress=also(_plain_progress()))
    columns = (
        TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("[red]{task.fields[failed]}"),
    )  # fmt: skip
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("extract", total=None, rate="", failed="")

        def update(event: ProgressEvent) -> None:
            rate = event.processed / event.elapsed if event.elapsed > 0 else 0.0
            failed = f"{event.failed} failed" if event.failed else ""
            bar.update(task, total=event.total, completed=event.done, rate=f"{rate:.1f} clips/s", failed=failed)

        return run_extraction(config, progress=also(update))


def _plain_progress(every_s: float = 10.0) -> Callable[[ProgressEvent], None]:
    """Log lines for non-terminals (CI, nohup): at most one per ``every_s`` seconds, plus the last."""
    last = [0.0]

    def update(event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - last[0] < every_s and event.done < event.total:
            return
        last[0] = now
        rate = event.processed / event.elapsed if event.elapsed > 0 else 0.0
        console.print(
            f"extract: {event.done}/{event.total} clips ({event.skipped} already done), "
            f"{rate:.1f} clips/s, {event.failed} failed, {event.missing_audio} without audio",
            highlight=False,
        )

    return update


def summary_table(s: ExtractSummary) -> Table:
    table = Table(title=f"extract → {s.store}" + (f" (shard {s.shard})" if s.shard else ""), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("teachers", ", ".join(s.teachers)),
        ("clips in this run's range", str(s.rows)),
        ("done now", str(s.processed - s.failed)),
        ("failed now", str(s.failed)),
        ("skipped (already done)", str(s.skipped)),
        ("without audio (masked)", str(s.missing_audio)),
        ("failed in the ledger", str(s.failed_total)),
        ("time", f"{s.seconds:.1f} s"),
        ("clips/s", f"{s.clips_per_s:.2f}"),
    ]
    rows += [(f"  failure: {reason}", str(count)) for reason, count in sorted(s.failures_by_reason.items())]
    if s.failed_total:
        rows.append(("failure log", s.failure_log))
    for name, value in rows:
        table.add_row(name, value)
    return table


@click.command()
@click.argument("output", type=click.Path(dir_okay=True))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=True))
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the merge report as JSON to stdout.")
def merge(output: str, shards: tuple[str, ...], overwrite: bool, as_json: bool) -> None:
    """Join the shard stores SHARDS (from `extract --shard I/N` on an .h5 store) into OUTPUT."""
    report = merge_shards(list(shards), output, overwrite=overwrite)
    if as_json:
        echo_json(report)
    else:
        console.print(f"merged {len(shards)} shard stores into {output}", highlight=False)
        for key, info in report["teachers"].items():
            console.print(f"  {key}: {info['done']} of {report['rows']} rows done", highlight=False)
