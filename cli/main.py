"""Entry point: a click group whose commands are imported only when used.

Lazy loading keeps ``ccl-cache --help`` and ``ccl-cache probe`` fast: torch, FAISS and zarr are
imported by the commands that need them, not at start-up.
"""

from __future__ import annotations

import importlib
import sys

import click

from ccl_cache import __version__
from ccl_cache.errors import CclCacheError

# command name -> (module under ccl_cache_cli, attribute, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("synth", "synth", "Write a synthetic audio-visual dataset of real mp4 files."),
    "probe": ("probe", "probe", "Show what the decoder sees in media files."),
    "teach": ("teach", "teach", "Train or fine-tune a teacher on labelled clips."),
    "extract": ("extract", "extract", "Run the teachers once and cache their embeddings in a store."),
    "merge": ("extract", "merge", "Join HDF5 shard stores into one store."),
    "info": ("info", "info", "Summarise a store: clips, teachers, coverage, health, provenance."),
    "verify": ("verify", "verify", "Read every chunk of a store and name each damaged one (--repair)."),
    "gaps": ("gaps", "gaps", "Rank the clips whose sound disagrees with their picture (the semantic gap)."),
    "cache-clips": ("cache_clips", "cache_clips", "Decode each clip once into the store's training frame cache."),
    "distill": ("distill", "distill", "Train a video student from cached teacher embeddings."),
    "embed": ("distill", "embed", "(Re)write a trained student's embeddings into the store."),
    "index": ("index", "index", "Build a FAISS index over student or teacher embeddings."),
    "retrieve": ("retrieve", "retrieve", "Search an index with video clips, audio files or clip ids."),
    "benchmark": ("benchmark", "benchmark", "Offline retrieval/recognition benchmarks and the method table."),
    "demo": ("demo", "demo", "Run the whole pipeline on the embedded synthetic dataset."),
    "doctor": ("doctor", "doctor", "Check what this machine can do: libraries, codecs, GPUs, disk, memory."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module the first time the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"ccl_cache_cli.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table, so --help does not import every command's dependencies.
        with formatter.section("Commands"):
            formatter.write_dl([(name, info[2]) for name, info in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ccl-cache")
def cli() -> None:
    """ccl-cache: distil audio and image teachers into a video student (Chen et al., CVPR 2021).

    Pipeline: synth/your videos → extract (teachers → store) → distill (student) → index →
    retrieve / benchmark.  Run `ccl-cache demo` to see it end to end.
    """


def _one_message(exc: BaseException) -> str:
    """The error's own message. Raised in a DataLoader worker, torch rebuilds it with the worker's
    traceback in front ("Caught StoreError in DataLoader worker process 0. Original Traceback
    ..."): a user's damaged file deserves the message alone, as in the main process."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]  # "ccl_cache.errors.StoreError: <the message>"
    return last.split(": ", 1)[1] if ": " in last else last


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: library errors become one red line and exit status 2."""
    try:
        # Without standalone mode click returns a command's ctx.exit(code) instead of exiting.
        status = cli.main(args=argv, prog_name="ccl-cache", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except CclCacheError as exc:
        click.secho(f"error: {_one_message(exc)}", fg="red", err=True)
        sys.exit(2)
    if isinstance(status, int) and status:
        sys.exit(status)


if __name__ == "__main__":
    main()
