"""Helpers shared by the command modules: consoles, JSON output, progress bars."""

from __future__ import annotations

import json
import sys
from typing import Any

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
