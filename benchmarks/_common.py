"""Shared plumbing of the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

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
