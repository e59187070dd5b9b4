"""Helpers shared by the command modules: consoles, JSON output, progress bars."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable, Iterator

import click
from rich.console import Console

from ccl_cache.fileio import to_plain

console = Console(stderr=True)
"""Human output (tables, progress) goes to stderr so stdout stays clean for --json."""


def echo_json(data: Any) -> None:
    click.echo(json.dumps(to_plain(data), indent=2))


def interactive() -> bool:
    """True when a person is watching (progress bars); plain log lines otherwise."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def resume_hint(hint: Callable[[], str]) -> Iterator[None]:
    """On Ctrl-C, say how to pick the work up again (``hint()``, read at that moment) before
    click's "Aborted." and exit status 130."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: {hint()}", highlight=False, soft_wrap=True)
        raise


def resume_same_command(replaced: bool) -> str:
    """The hint of a resumable writer (extract, cache-clips): what is written stays. ``replaced``:
    an --overwrite run had already replaced the old data, so the same command would start over."""
    how = "the same command without --overwrite" if replaced else "the same command"
    return f"what was written so far is kept; rerun {how} to resume"
