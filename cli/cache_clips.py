"""`ccl-cache cache-clips`: decode every clip of a store once into its training frame cache."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ccl_cache.codecs import FRAME_CODECS
from ccl_cache.extract import PROBE_ROWS, FrameCacheConfig, FrameCacheSummary, build_frame_cache, plan_frame_cache
from ccl_cache_cli.common import (config_fields, config_option, console, echo_json, interactive, no_probe_option, probes,
                                  resume_hint, resume_same_command, show_plan)


def _size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        h, _, w = value.lower().partition("x")
        return (int(h), int(w or h))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give HxW (e.g. 128x171) or one side for square frames") from None


@click.command()
@click.argument("store", type=click.Path(exists=True, dir_okay=True))
@config_option(FrameCacheConfig, "size", sep="x", show_default=True, callback=_size,
               help="Frame size HxW in the cache ({default} = the base of 112-pixel training crops).")
@config_option(FrameCacheConfig, "fps", type=click.FloatRange(min=0, min_open=True),
               help="Cache rate in frames/s (default: each video's native rate).")
@config_option(FrameCacheConfig, "max_frames", type=click.IntRange(min=1), help="Cap on cached frames per clip.")
@config_option(FrameCacheConfig, "workers", type=click.IntRange(min=0), show_default=True,
               help="Decode processes (0: decode in this process).")
@config_option(FrameCacheConfig, "codec", type=click.Choice(FRAME_CODECS.names()), show_default=True,
               help="How frames are kept: raw uint8 pixels (lossless, the largest, the fastest to read) or jpeg "
                    "(decoded with libjpeg-turbo when training; see --quality).")
@config_option(FrameCacheConfig, "quality", type=click.IntRange(1, 100), given_only=True,
               help="Quality of a lossy codec, 1-100 (default: the codec's: " + ", ".join(
                   f"{n} {FRAME_CODECS.get(n).default_quality}" for n in FRAME_CODECS.names()
                   if FRAME_CODECS.get(n).default_quality is not None) + ").")
@config_option(FrameCacheConfig, "overwrite", is_flag=True, help="Rebuild a cache made with other settings.")
@config_option(FrameCacheConfig, "force", is_flag=True, help="Take over the store's writer lease held by another process.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (with the plan) as JSON to stdout.")
@click.option("--quiet", is_flag=True, help="No plan or progress display.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (clips, frames' disk, free space, time from the first clips) and stop: nothing is written.")
@no_probe_option("the first clips (decoded and encoded)")
def cache_clips(store: str, as_json: bool, quiet: bool, dry_run: bool, no_probe: bool, **options: Any) -> None:
    """Decode each clip of STORE once into /frames (frames + timestamps) for fast training.

    Frames are kept by --codec (jpeg by default; raw keeps uint8 pixels: lossless, many times larger).
    `ccl-cache distill` reads windows from this cache, whichever codec it holds, when it holds a
    clip and from the media file otherwise. Resumable: a rerun continues with the clips not cached
    yet; the codec and quality must be the same (or pass --overwrite).
    """
    config = FrameCacheConfig(**config_fields(options, FrameCacheConfig))
    rows = PROBE_ROWS if probes(no_probe, quiet, dry_run) else 0
    plan = show_plan(lambda: plan_frame_cache(store, config, probe_rows=rows), dry_run, quiet, as_json)
    if plan is not None:
        plan.check()
    began = threading.Event()  # a row cached: the old cache is gone (an --overwrite done)
    with resume_hint(lambda: resume_same_command(config.overwrite and began.is_set())):
        if interactive() and not as_json and not quiet:
            columns = (TextColumn("[bold]cache-clips"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TimeRemainingColumn())
            with Progress(*columns, console=console) as bar:
                task = bar.add_task("cache", total=None)
                summary = build_frame_cache(store, config, progress=lambda done, total: (
                    began.set(), bar.update(task, completed=done, total=total)))
        else:
            summary = build_frame_cache(store, config, progress=lambda done, total: began.set())
    if as_json:
        echo_json({**dataclasses.asdict(summary), "clips_per_s": summary.clips_per_s, "plan": None if plan is None else plan.as_dict()})
    elif not quiet:
        _report(summary)


def _report(s: FrameCacheSummary) -> None:
    codec = s.codec if s.quality is None else f"{s.codec} q{s.quality}"
    console.print(f"{s.store}: cached {s.cached} clips ({s.frames} frames, {codec}) in {s.seconds:.1f} s "
                  f"({s.clips_per_s:.1f} clips/s); {s.skipped} already cached; {len(s.failed)} failed "
                  "(read from their files when training)", highlight=False)
    for row, message in list(s.failed.items())[:10]:
        console.print(f"  row {row}: {message}", highlight=False, style="red")
