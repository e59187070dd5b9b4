"""Join shard stores of one manifest into one store (HDF5 shards are separate files by design).

Every input must have been built from the same manifest (``manifest_sha256``) and every teacher
present in several inputs must have the same fingerprint and layout. Rows are copied where an
input marks them done; a row done in several inputs is taken from the first (and counted as a
conflict). Failures keep the latest record per row; student runs and generic arrays (frame
caches) are copied, generic per-clip rows from the input whose teachers processed the row.
The output is built under a temporary name and moved into place when complete.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccl_cache.errors import ConfigError, StoreError, StoreMismatchError
from ccl_cache.store.base import Store
from ccl_cache.store.views import ClipTable
from ccl_cache.store.open import build_store, open_store
from ccl_cache.store.schema import FAILURE_COLUMNS, diff_fingerprints, teacher_path

log = logging.getLogger(__name__)


def merge_stores(inputs: Sequence[str | Path], output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Merge ``inputs`` into a new store at ``output``; returns a report (JSON-friendly dict)."""
    paths = [Path(p) for p in inputs]
    out = Path(output)
    if not paths:
        raise ConfigError("merge_stores needs at least one input store")
    if any(out.resolve() == p.resolve() for p in paths):
        raise ConfigError(f"{out}: the merge output must not be one of its inputs; choose a new path")
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it, or another output")
    stores: list[Store] = []
    try:
        for p in paths:
            stores.append(open_store(p, "r"))
        _check_same_manifest(stores)
        layouts = _teacher_layouts(stores)
        report: dict[str, Any] = {"output": str(out), "inputs": [str(p) for p in paths], "rows": stores[0].n,
                                  "missing_shards": missing_shards(paths), "teachers": {}}
        if report["missing_shards"]:
            log.warning("shard(s) %s of this set were not given: their rows stay undone in %s; merge again with "
                        "every shard (--overwrite), or finish them first with `ccl-cache extract --shard`",
                        ", ".join(report["missing_shards"]), out)

        def fill(target: Store) -> None:
            for key, meta in layouts.items():
                target.create_teacher(key, meta["dim"], meta["frames"], meta["dtype"], meta["fingerprint"])
                report["teachers"][key] = _merge_teacher(target, stores, key)
            report["failures"] = _merge_failures(target, stores)
            report["students"] = _merge_students(target, stores)
            report["arrays"] = _merge_arrays(target, stores)

        first = stores[0]
        build_store(out, _merged_clips(stores), first.classes, first.attrs["manifest_sha256"], first.chunk_rows,
                    overwrite=overwrite, compression=first.compression, fill=fill).close()
    finally:
        for store in stores:
            store.close()
    return report


def missing_shards(paths: Sequence[Path]) -> list[str]:
    """``"I-of-N"`` of the shards a set named ``<name>.shard-I-of-N.<suffix>`` lacks (see
    ``extract.store_path_for``): merging only some of them leaves the others' rows undone."""
    given: dict[tuple[str, int], set[int]] = {}
    for p in paths:
        match = re.fullmatch(r"(.*)\.shard-(\d+)-of-(\d+)(\.[^.]+)", p.name)
        if match:
            given.setdefault((match[1] + match[4], int(match[3])), set()).add(int(match[2]))
    return [f"{i}-of-{n}" for (_, n), have in sorted(given.items()) for i in range(n) if i not in have]


def _check_same_manifest(stores: list[Store]) -> None:
    first = stores[0]
    for other in stores[1:]:
        if other.attrs["manifest_sha256"] != first.attrs["manifest_sha256"] or other.n != first.n:
            raise StoreMismatchError(
                f"{other.path} and {first.path} were built from different manifests "
                f"(sha256 {other.attrs['manifest_sha256'][:12]}… with {other.n} clips vs "
                f"{first.attrs['manifest_sha256'][:12]}… with {first.n} clips); merge only the shards of one run"
            )


def _teacher_layouts(stores: list[Store]) -> dict[str, dict[str, Any]]:
    layouts: dict[str, dict[str, Any]] = {}
    owner: dict[str, Path] = {}
    for store in stores:
        for key in store.teacher_keys():
            meta = store._teacher_meta(key)
            meta = {k: meta.get(k) for k in ("fingerprint", "dim", "frames", "dtype")}
            if key not in layouts:
                layouts[key], owner[key] = meta, store.path
                continue
            lines = [f"{k}: {layouts[key][k]!r} ({owner[key]}) vs {meta[k]!r} ({store.path})"
                     for k in ("dim", "frames", "dtype") if layouts[key][k] != meta[k]]
            lines += diff_fingerprints(layouts[key]["fingerprint"], meta["fingerprint"])
            if lines:
                raise StoreMismatchError(
                    f"teacher {key} differs between {owner[key]} and {store.path}:\n  " + "\n  ".join(lines)
                    + "\n('store' = the first, 'now' = the second); re-extract the odd shard with the same settings"
                )
    return layouts


def _merged_clips(stores: list[Store]) -> ClipTable:
    """The first input's table, with duration/has_audio from whichever input probed the clip."""
    base = stores[0].clips
    duration, has_audio = base.duration.copy(), base.has_audio.copy()
    for store in stores[1:]:
        take = np.isnan(duration) & np.isfinite(store.clips.duration)
        duration[take] = store.clips.duration[take]
        has_audio[take] = store.clips.has_audio[take]
    return ClipTable(id=base.id, path=base.path, label=base.label, split=base.split, start=base.start,
                     end=base.end, duration=duration, has_audio=has_audio)


def _merge_teacher(target: Store, stores: list[Store], key: str) -> dict[str, int]:
    group = teacher_path(key)
    t = target.teacher(key)
    row_bytes = int(np.prod(t.embedding.shape[1:])) * np.dtype(t.dtype).itemsize
    done_total = conflicts = 0
    sources = [s for s in stores if key in s.teacher_keys()]
    for start, stop in target._blocks(row_bytes):
        sel = slice(start, stop)
        done = np.zeros(stop - start, dtype=bool)
        parts = {name: target._b.read(f"{group}/{name}", sel) for name in ("embedding", "times", "mask")}
        for store in sources:
            theirs = store._b.read(f"{group}/done", sel)
            conflicts += int(np.count_nonzero(theirs & done))
            new = theirs & ~done
            if new.any():
                for name, block in parts.items():
                    block[new] = store._b.read(f"{group}/{name}", sel)[new]
                done |= new
        if done.any():
            for name, block in parts.items():
                target._b.write(f"{group}/{name}", sel, block)
            target._b.flush()
            target._b.write(f"{group}/done", sel, done)  # after its data, as in write_rows
            done_total += int(done.sum())
    target._b.flush()
    return {"done": done_total, "conflicts": conflicts}


def _merge_failures(target: Store, stores: list[Store]) -> int:
    best: dict[int, dict[str, Any]] = {}
    for store in stores:
        for record in store.failures():
            row = record["row"]
            if row not in best or record["time"] > best[row]["time"]:
                best[row] = record
    if not best:
        return 0
    rows = np.array(sorted(best), dtype=np.int64)
    columns = {}
    for name, dtype in FAILURE_COLUMNS.items():
        values = [best[int(r)][name] for r in rows]
        if name == "coverage":
            values = [np.nan if v is None else v for v in values]
        columns[name] = np.array(values, dtype=object if dtype == "str" else dtype)
    target._scatter("failures", rows, columns)
    return len(rows)


def _merge_students(target: Store, stores: list[Store]) -> list[str]:
    copied: list[str] = []
    for store in stores:
        for run in store.student_runs():
            if run not in copied:
                target.write_student(run, store.student(run), store.student_attrs(run))
                copied.append(run)
    return copied


def _row_owner(stores: list[Store]) -> np.ndarray:
    """Per clip row, the index of the first input whose teachers wrote it (-1: none)."""
    owner = np.full(stores[0].n, -1)
    for j, store in enumerate(stores):
        for key in store.teacher_keys():
            done = store.teacher(key).done[:]
            owner[(owner < 0) & done] = j
    return owner


def _merge_arrays(target: Store, stores: list[Store]) -> list[str]:
    holders: dict[str, list[int]] = {}
    for j, store in enumerate(stores):
        for path in store.generic_arrays():
            holders.setdefault(path, []).append(j)
    owner = _row_owner(stores) if holders else np.zeros(0)
    for path, where in holders.items():
        src = stores[where[0]]
        shape, kind, chunks = src._b.array_info(path)
        target.create_array(path, shape, kind, chunk_rows=chunks[0])
        per_clip = shape[0] == target.n and len(where) > 1
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * (8 if kind == "str" else np.dtype(kind).itemsize)
        step = max(chunks[0], (64 << 20) // max(1, row_bytes) // chunks[0] * chunks[0])
        for start in range(0, shape[0], step):
            sel = slice(start, min(shape[0], start + step))
            block = src._b.read(path, sel)
            for j in where[1:] if per_clip else []:
                take = owner[sel] == j
                if take.any():
                    block[take] = stores[j]._b.read(path, sel)[take]
            target._b.write(path, sel, block)
        target._b.update_attrs(path, src._b.get_attrs(path))
        parts = path.split("/")
        for depth in range(1, len(parts)):  # attrs of the enclosing groups (e.g. frames/)
            group = "/".join(parts[:depth])
            target._b.update_attrs(group, src._b.get_attrs(group))
    target._b.flush()
    return sorted(holders)
