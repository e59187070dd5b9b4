"""Writing a manifest as a generic CSV (:func:`write_csv`), which the ``csv`` format reads back."""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath

from ccl_cache.fileio import atomic_path
from ccl_cache.manifest.records import Manifest

CSV_COLUMNS: tuple[str, ...] = ("id", "path", "label", "split", "start", "end")


def write_csv(manifest: Manifest, path: str | Path, relative: bool = True) -> None:
    """Write ``manifest`` as a generic CSV (id,path,label,split,start,end), atomically.

    With ``relative`` (default), paths inside the CSV's folder are written relative to it, so
    the folder can be moved; :func:`load_manifest` resolves them against the CSV's folder again.
    Times are written with ``repr`` so that reading gives the same floats back.
    """
    path = Path(os.path.abspath(path))
    folder = str(path.parent)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for r in manifest.records:
                file = r.path
                if relative and os.path.isabs(file) and os.path.commonpath([folder, file]) == folder:
                    file = PurePosixPath(*Path(os.path.relpath(file, folder)).parts).as_posix()
                times = ["" if t is None else repr(float(t)) for t in (r.start, r.end)]
                writer.writerow([r.id, file, r.label, r.split, *times])
