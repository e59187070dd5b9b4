"""`ccl-cache distill` and `ccl-cache embed`: parse options, call ccl_cache.train, report."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

import click
from click.core import ParameterSource
import yaml
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ccl_cache.data import DECODES, DEFAULT_WORKERS
from ccl_cache.errors import ConfigError
from ccl_cache.losses import LOSSES, parse_loss_options
from ccl_cache.students import STUDENTS
from ccl_cache.train import AMP_MODES, OPTIMIZERS, PRESETS, SCHEDULES, SOURCES, TrainConfig, embed_run, train
from ccl_cache.train.budget import PROBE_STEPS, PROBE_WARMUP, training_plan
from ccl_cache_cli.common import (config_fields, config_option, console, echo_json, interactive, no_probe_option, probes,
                                  resume_hint, show_plan)

SHOWN_PARTS = ("total", "ce")  # loss parts on the progress line; all parts go to metrics.jsonl


def log_to_console() -> None:
    """Library warnings (excluded clips, lazy teacher reads) as rich lines on stderr."""
    logger = logging.getLogger("ccl_cache")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_path=False, show_time=False))
    logger.setLevel(logging.WARNING)


def parse_kv(items: tuple[str, ...], what: str) -> dict[str, Any]:
    """``key=value`` strings → dict; values parsed as YAML scalars (1 → int, 0.5 → float)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r}: expected key=value, e.g. width=16")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip() and v.strip().lower() != "none")


def _milestones(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in _split_list(value))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated epochs, e.g. 150,225") from None


_PARAM_OF = {"student_options": "student_opt"}  # a config field -> its option's parameter, where the names differ


@click.command(epilog="Loss options per method: " + "; ".join(
    f"{name}: " + (", ".join(f"{o.name}={o.default}" for o in LOSSES.get(name).options()) or "none")
    for name in LOSSES.names()))
@click.argument("store", type=click.Path(exists=True, dir_okay=True))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper", show_default=True,
              help="A bundle of settings; options given explicitly win. paper: the paper's (a GPU job); small: the "
                   "demo's (small student, AdamW 3e-3, batch 8, 8 frames at 48², learns in minutes on a CPU).")
@config_option(TrainConfig, "method", type=click.Choice(LOSSES.names(), case_sensitive=False), show_default=True,
               help="Distillation method (the paper's CCL or a Table 1 baseline).")
@config_option(TrainConfig, "teachers", parse=_split_list, show_default=True,
               help="Teacher modalities (audio, image, audio,image) or store keys such as audio/cnn14.")
@config_option(TrainConfig, "student", type=click.Choice(STUDENTS.names()), show_default=True,
               help="Video student network.")
@click.option("--student-opt", multiple=True, metavar="KEY=VALUE", help="Student option, e.g. width=16 (repeatable).")
@click.option("--loss-opt", multiple=True, metavar="KEY=VALUE", help="Loss option, e.g. tau_audio=0.5 (repeatable).")
@config_option(TrainConfig, "epochs", type=click.IntRange(min=1), show_default=True)
@config_option(TrainConfig, "batch_size", type=click.IntRange(min=2), show_default=True)
@config_option(TrainConfig, "lr", type=click.FloatRange(min=0, min_open=True), show_default=True)
@config_option(TrainConfig, "momentum", type=click.FloatRange(min=0), show_default=True)
@config_option(TrainConfig, "weight_decay", type=click.FloatRange(min=0), show_default=True)
@config_option(TrainConfig, "optimizer", type=click.Choice(OPTIMIZERS), show_default=True)
@config_option(TrainConfig, "schedule", type=click.Choice(SCHEDULES), show_default=True,
               help="Student learning-rate schedule (the baselines' heads follow it; CCL's compositions stay constant).")
@config_option(TrainConfig, "milestones", parse=_milestones,
               help="MultiStep epochs, e.g. 150,225 (default: 50%,75% of --epochs).")
@config_option(TrainConfig, "frames", type=click.IntRange(min=1), show_default=True, help="Frames per clip (T).")
@config_option(TrainConfig, "stride", type=click.IntRange(min=1), show_default=True, help="Take every N-th frame.")
@config_option(TrainConfig, "size", type=click.IntRange(min=8), show_default=True, help="Crop side in pixels.")
@config_option(TrainConfig, "source", type=click.Choice(SOURCES), show_default=True,
               help="Frames from the store's frame cache (`ccl-cache cache-clips`) or the media files.")
@config_option(TrainConfig, "decode", type=click.Choice(DECODES), show_default=True,
               help="Where training windows of the frame cache are decoded: cpu (the loader's workers), device (on "
                    "the training device after the loader: one batched nvJPEG call per batch on CUDA), auto (device "
                    "on CUDA with a JPEG cache, else cpu).")
@config_option(TrainConfig, "workers", type=click.IntRange(min=0),
               help=f"DataLoader worker processes [{DEFAULT_WORKERS}, at most one per CPU core].")
@config_option(TrainConfig, "device", show_default=True, help="auto, cpu, cuda or cuda:N.")
@config_option(TrainConfig, "threads", type=click.IntRange(min=1),
               help="Torch CPU threads of this process (default: torch's, one per core; 1 is often fastest for "
                    "small students on a shared CPU).")
@config_option(TrainConfig, "amp", type=click.Choice(AMP_MODES), show_default=True,
               help="Mixed precision: auto = bf16 on CUDA GPUs that support it, else off; bf16 also on CPUs with "
                    "bfloat16 units (AMX/AVX512-BF16), where it is opt-in; fp16 needs CUDA.")
@config_option(TrainConfig, "channels_last", is_flag=True,
               help="channels_last_3d memory format (faster convolutions on GPUs, and on CPUs with --amp bf16).")
@config_option(TrainConfig, "compile", is_flag=True,
               help="torch.compile the training forward (the first step pays the compilation).")
@config_option(TrainConfig, "fused_optimizer", "--fused-optimizer/--no-fused-optimizer", show_default=True,
               help="The optimiser's fused kernel (one pass over all parameters). It rounds differently from the "
                    "per-tensor loop: --no-fused-optimizer reproduces runs made before the option.")
@config_option(TrainConfig, "grad_clip", type=click.FloatRange(min=0, min_open=True), help="Clip the gradient norm.")
@config_option(TrainConfig, "exclude_gaps", type=float, metavar="THRESHOLD",
               help="Leave out the training clips whose gap score (written by `ccl-cache gaps STORE`) is above "
                    "THRESHOLD (default: keep them all).")
@config_option(TrainConfig, "seed", type=int, show_default=True)
@config_option(TrainConfig, "deterministic", is_flag=True, help="Deterministic algorithms (reproducible, slower).")
@config_option(TrainConfig, "val_every", type=click.IntRange(min=1), show_default=True, help="Validate every N epochs.")
@config_option(TrainConfig, "val_fraction", type=click.FloatRange(0, 1, max_open=True), show_default=True,
               help="Share of train carved out for validation when the store has no 'val' split.")
@config_option(TrainConfig, "val_clips", type=click.IntRange(min=1), show_default=True,
               help="Evenly spaced validation clips per video.")
@config_option(TrainConfig, "test_max_windows", type=click.IntRange(min=1),
               help="Cap on test windows per video (default: every non-overlapping window).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory for every output.")
@config_option(TrainConfig, "run_name", help="Name of the run in the store (default: the --out folder name).")
@config_option(TrainConfig, "resume", is_flag=True, help="Continue the run in --out from checkpoints/last.pt.")
@config_option(TrainConfig, "log_every", type=click.IntRange(min=1), show_default=True, help="Steps per metrics line.")
@config_option(TrainConfig, "save_every", type=click.IntRange(min=0), show_default=True,
               help="Extra mid-epoch checkpoint every N steps (0: at epoch ends only).")
@config_option(TrainConfig, "write_embeddings", "--no-embed", "write_embeddings", flag_value=False,
               help="Do not write the student's embeddings into the store at the end.")
@click.option("--quiet", is_flag=True, help="No progress display and no summary table.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (clips, RAM, disk, time from a few timed steps) and stop; nothing is written.")
@no_probe_option(f"{PROBE_STEPS} training steps (the first {PROBE_WARMUP} warm up)")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON to stdout.")
def distill(store: str, out: str, student_opt: tuple[str, ...], loss_opt: tuple[str, ...], quiet: bool,
            dry_run: bool, no_probe: bool, as_json: bool, **options: Any) -> None:
    """Train a video student on STORE's clips from its cached teacher embeddings.

    Writes config.yaml, checkpoints/{last,best}.pt, metrics.jsonl and summary.json into --out, and
    the student's embedding of every clip into STORE (/students/<run>) for `ccl-cache index`.
    Under torchrun every process trains one shard of each batch (DistributedDataParallel).
    """
    preset = PRESETS[options.pop("preset")]
    loss_options = parse_loss_options(options["method"], loss_opt)
    student_options = parse_kv(student_opt, "--student-opt")
    config = TrainConfig(store=store, out=out, loss_options=loss_options, student_options=student_options,
                         **config_fields(options, TrainConfig))
    ctx = click.get_current_context()
    typed = {name for name in ctx.params if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    config = dataclasses.replace(config, **{field: value for field, value in preset.items()
                                            if _PARAM_OF.get(field, field) not in typed})
    steps = PROBE_STEPS if probes(no_probe, quiet, dry_run) else 0
    plan = show_plan(lambda: training_plan(config, probe_steps=steps), dry_run, quiet, as_json)
    if plan is not None:
        plan.check()
    log_to_console()
    with resume_hint(lambda: _resume_hint(Path(config.out))):
        summary = train(config, progress=None if quiet else progress_printer())
    if not summary:  # ranks other than 0 under torchrun
        return
    if as_json:
        echo_json(summary)
    if not quiet:
        console.print(summary_table(summary))
    emb = summary.get("embeddings")
    if emb is not None and not emb.get("written"):
        # The run is saved, but a result it owes the store is not: never a silent exit 0.
        click.secho(f"error: the student embeddings were not written: {emb.get('error')}\nfix: {emb.get('fix')}",
                    fg="red", err=True)
        raise click.exceptions.Exit(1)


def _resume_hint(out: Path) -> str:
    if (out / "checkpoints" / "last.pt").is_file():
        return f"{out / 'checkpoints' / 'last.pt'} holds the last saved step; rerun the same command with --resume"
    return ("no checkpoint was saved yet (the first at the end of epoch 1, or after --save-every steps); "
            "rerun the same command to start again")


def progress_printer() -> Any:
    """A rich progress bar on a terminal; plain lines otherwise."""
    return RichTrainingProgress() if interactive() else _plain


def _parts(loss: Mapping[str, float]) -> str:
    return " ".join(f"{k} {loss[k]:.4f}" for k in SHOWN_PARTS if k in loss)


def _plain(event: str, data: Mapping[str, Any]) -> None:
    if event == "start":
        console.print(f"train {data['train']} clips, val {data['val']}, test {data['test']} on {data['device']} "
                      f"(amp {data['amp']}, {data['world']} process(es))", highlight=False)
    elif event == "steps":
        console.print(f"epoch {data['epoch'] + 1} step {data['step']}/{data['steps']} {_parts(data['loss'])} "
                      f"lr {data['lr']:.3g} {data['clips_per_s']:.1f} clips/s, loader wait {data['loader_wait']:.0%}",
                      highlight=False)
    else:
        _report(event, data)


def _report(event: str, data: Mapping[str, Any]) -> None:
    if event == "epoch" and data.get("val"):
        val = data["val"]
        console.print(f"epoch {data['epoch'] + 1}/{data['epochs']}: val clip top-1 {val['clip_top1']:.4f} "
                      f"video top-1 {val['video_top1']:.4f} (best {data['best_val']:.4f})", highlight=False)
    elif event == "test":
        console.print(f"test (best checkpoint): video top-1 {data['video_top1']:.4f}, clip top-1 "
                      f"{data['clip_top1']:.4f} over {data['videos']} videos", highlight=False)
    elif event == "embed":
        console.print(f"student embeddings of {data['rows']} clips → {data['store']} (/students/{data['run']})",
                      highlight=False)


class RichTrainingProgress:
    """Epoch bar with loss parts, clips/s and ETA; epoch results printed above it."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, event: str, data: Mapping[str, Any]) -> None:
        if event == "start":
            _plain(event, data)
            self.bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[parts]}"), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            self.bar.start()
            self.task = self.bar.add_task("train", total=data["steps_per_epoch"], epoch=data["start_epoch"] + 1,
                                          parts="", rate="")
        elif event == "steps" and self.bar is not None:
            self.bar.update(self.task, completed=data["step"], epoch=f"{data['epoch'] + 1}",
                            parts=_parts(data["loss"]),
                            rate=f"{data['clips_per_s']:.1f} clips/s, wait {data['loader_wait']:.0%}")
        elif event == "epoch" and self.bar is not None and data["epoch"] + 1 < data["epochs"]:
            self.bar.reset(self.task, epoch=f"{data['epoch'] + 2}", parts="", rate="")  # reset replaces the fields
            _report(event, data)
        else:
            if event == "epoch" and self.bar is not None:  # the last epoch: evaluation output follows
                self.bar.stop()
                self.bar = None
            _report(event, data)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def summary_table(s: Mapping[str, Any]) -> Table:
    table = Table(title=f"distill {s['method']} → {s['outputs']['run_dir']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    test = s.get("test") or {}
    emb = s.get("embeddings") or {}
    rows = [
        ("run", s["run"]),
        ("teachers", ", ".join(s["teachers"].values()) or "none"),
        ("student", f"{s['student']} ({s['params']['student']:,} params)"),
        ("clips train / val / test", f"{s['data']['train']} / {s['data']['val']} / {s['data']['test']}"),
        ("val clip top-1 (best)", f"{_pct(s['val']['best_clip_top1'])} (epoch {s['val']['best_epoch'] + 1})"),
        ("test video top-1", _pct(test.get("video_top1"))),
        ("test clip top-1", _pct(test.get("clip_top1"))),
        ("embeddings", f"{emb.get('store')} /students/{emb.get('run')}" if emb.get("written")
         else (emb.get("fix") or "not written")),
        ("outputs", s["outputs"]["run_dir"]),
        ("time", f"{s['time_s']:.1f} s"),
    ]
    rows += [(f"excluded: {why}", str(n)) for why, n in s["data"]["excluded"].items()]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--store", default=None, type=click.Path(exists=True, dir_okay=True),
              help="Store whose clips to embed (default: the run's training store).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decode workers (default: the run's).")
@click.option("--run-name", default=None, help="Name of the run in the store (default: the run's own).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON to stdout.")
def embed(run_dir: str, store: str | None, checkpoint: str, device: str, workers: int | None, run_name: str | None,
          as_json: bool) -> None:
    """(Re)write RUN_DIR's student embeddings of every clip into the store (/students/<run>).

    Each clip's embedding is the student's pooled feature averaged over non-overlapping windows
    covering the clip (the test protocol); clips that cannot be decoded get NaN rows.
    """
    log_to_console()
    info = embed_run(run_dir, store=store, checkpoint=checkpoint, device=device, workers=workers, run_name=run_name)
    if as_json:
        echo_json(info)
    else:
        console.print(f"wrote {info['rows']} clip embeddings ({info['dim']}-d, {info['missing']} missing) of run "
                      f"{info['run']} → {info['store']} (/students/{info['run']})", highlight=False)
