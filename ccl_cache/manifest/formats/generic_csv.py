"""The ``csv`` format: a generic CSV with header ``id,path,label[,split,start,end]``."""

from __future__ import annotations

from typing import Sequence

from ccl_cache.errors import ManifestError
from ccl_cache.manifest.parse import (
    READERS, _check_labels, _Context, _csv_rows, _file_missing, _Item, _Parsed, _parse_time, _read_lines, _record,
    _resolve,
)


def _csv_header(ctx: _Context, rows: list[tuple[int, list[str]]]) -> list[str]:
    if not rows:
        raise ManifestError(f"{ctx.path}: the manifest is empty; expected a header line id,path,label[,split,start,end] and rows")
    number, header = rows[0]
    names = [h.lower() for h in header]
    missing = [c for c in ("id", "path", "label") if c not in names]
    if missing:
        raise ManifestError(
            f"{ctx.path}:{number}: missing column(s) {', '.join(missing)} in header {header}; the first line "
            "must name the columns, with at least id,path,label (optional split,start,end)"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(f"{ctx.path}:{number}: column(s) {', '.join(dupes)} appear twice in the header; rename one")
    return names


@READERS.register("csv")
def read_generic_csv(ctx: _Context, classes: Sequence[str] | None = None, delimiter: str = ",") -> _Parsed:
    """Generic CSV with header ``id,path,label[,split,start,end]`` (extra columns ignored)."""
    rows = list(_csv_rows(_read_lines(ctx.path, ctx.problems), delimiter))
    names = _csv_header(ctx, rows)
    root = ctx.root or ctx.path.parent
    items: list[_Item] = []
    for number, row in rows[1:]:
        where = f"{ctx.path}:{number}"
        if len(row) != len(names):
            ctx.problems.bad(where, f"expected {len(names)} fields ({','.join(names)}) but found {len(row)}",
                             "quote fields that contain the delimiter and fill every column")
            continue
        cells = dict(zip(names, row))
        try:
            start = _parse_time(cells.get("start", ""), "start")
            end = _parse_time(cells.get("end", ""), "end")
        except ValueError as exc:
            ctx.problems.bad(where, str(exc), "write seconds as a number, or leave the field empty")
            continue
        path = _resolve(root, cells["path"]) if cells["path"] else ""
        rec = _record(ctx, where, id=cells["id"], path=path, label=cells["label"],
                      split=cells.get("split") or "train", start=start, end=end)
        if rec is not None and not _file_missing(ctx, where, rec.path):
            items.append((where, rec))
    return _check_labels(items, classes, ctx.problems), classes
