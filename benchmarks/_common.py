"""Shared plumbing of the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


def print_json_in_workdir(run: Callable[[Path], dict[str, Any]], workdir: str | None, prefix: str) -> None:
    """Call ``run(folder)`` in ``workdir`` (kept) or a temporary folder (removed), print its JSON."""
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        json.dump(run(folder), sys.stdout, indent=2)
        sys.stdout.write("\n")
    finally:
        if not workdir:
            shutil.rmtree(folder, ignore_errors=True)


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """The generated originals of the decode and cache benchmarks: count, length, rate, size, GOP."""
    parser.add_argument("--clips", type=int, default=4, help="generated videos")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--gop", type=int, default=125, help="keyframe interval of the originals (frames)")
