"""`ccl-cache doctor`: what this machine can do, one table row per check, with the fixes."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ccl_cache.doctor import Diagnosis, diagnose
from ccl_cache_cli.common import console, echo_json

_SECTIONS = {"python": "Python and libraries", "media": "FFmpeg (PyAV)", "gpu": "GPUs", "machine": "machine"}


def _table(diagnosis: Diagnosis) -> Table:
    table = Table(title="ccl-cache doctor", title_justify="left")
    for column in ("check", "value", "status", "needed", "fix"):
        table.add_column(column, no_wrap=column in ("check", "status", "needed"))
    group = None
    for check in diagnosis.checks:
        if check.group != group:
            if group is not None:
                table.add_section()
            table.add_row(f"[bold]{_SECTIONS.get(check.group, check.group)}", "", "", "", "")
            group = check.group
        status = "[green]ok" if check.ok else ("[red]missing" if check.required else "[yellow]no")
        table.add_row(f"  {escape(check.name)}", escape(check.value or "-"), status,
                      "required" if check.required else "optional", escape(check.fix or ""))
    return table


@click.command("doctor")
@click.option("--path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder whose free disk space is checked (where stores and runs go).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
def doctor(path: Path, as_json: bool) -> None:
    """Check what this machine can do: library versions (torch, PyAV and its FFmpeg, zarr, h5py and
    HDF5, FAISS, numpy), decoders for common codecs, the encoders `synth` writes with, CUDA devices,
    bfloat16 units, FAISS on the GPU, usable cores, free disk and available memory; each missing
    item with its fix.

    Exit status: 0 when everything the CPU pipeline requires is present (optional items, such as a
    GPU, may be missing), 1 when a required item is missing.
    """
    diagnosis = diagnose(path)
    if as_json:
        echo_json(diagnosis.to_dict())
    else:
        console.print(_table(diagnosis))
        optional = ", ".join(diagnosis.missing_optional)
        if diagnosis.ok:
            console.print("[green]everything the CPU pipeline requires is present[/]"
                          + (f"; optional, not available: {escape(optional)}" if optional else ""), highlight=False)
        else:
            console.print(f"[red]required, missing: {escape(', '.join(diagnosis.missing_required))}[/]"
                          + (f"; optional, not available: {escape(optional)}" if optional else ""), highlight=False)
    if not diagnosis.ok:
        # SystemExit, not ctx.exit(1): under standalone_mode=False ctx.exit's code is returned, not used.
        raise SystemExit(1)
