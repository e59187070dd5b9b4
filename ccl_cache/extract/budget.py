"""The plan of ``ccl-cache extract`` (:class:`ccl_cache.plan.Plan`): the store's bytes on disk for
the run's rows, checked against the free disk before any model loads; ``--dry-run`` stops there."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ccl_cache.extract.config import ExtractConfig, resolve_shard
from ccl_cache.extract.infer import teacher_dim_hint
from ccl_cache.extract.output import estimate_store_bytes, store_path_for
from ccl_cache.plan import Plan, free_disk_at
from ccl_cache.store.schema import CLIP_COLUMNS, TEACHER_DATA

if TYPE_CHECKING:
    from ccl_cache.manifest import Manifest

# Bytes a store spends per array on its own (Zarr: the zarr.json and chunk headers; HDF5: the
# object header and chunk index), measured on small stores of both backends.
ARRAY_OVERHEAD = {".zarr": 800, ".h5": 3000}
# The arrays every extraction store holds besides its teachers': the clip table, the class list,
# the failure ledger (stage, reason, message, time, coverage) and the three extraction columns.
_BASE_ARRAYS = len(CLIP_COLUMNS) + 1 + 5 + 3


def store_bytes(path: Path, rows: int, layouts: list[tuple[int, int]], dtype: str) -> int:
    """Disk bytes of an extraction store of ``rows`` rows: the per-row upper bound of
    :func:`estimate_store_bytes` plus each array's fixed cost for the backend of ``path``."""
    arrays = _BASE_ARRAYS + len(layouts) * (len(TEACHER_DATA) + 1)
    overhead = ARRAY_OVERHEAD.get(path.suffix.lower(), ARRAY_OVERHEAD[".h5"]) * arrays
    return estimate_store_bytes(rows, layouts, dtype) + overhead


def extraction_plan(path: Path, manifest: "Manifest", config: ExtractConfig, shard: tuple[int, int] | None) -> Plan:
    """The plan of extracting ``manifest`` (or its ``shard``) into the store at ``path``."""
    layouts, notes = [], []
    for modality, name in (("audio", config.audio_teacher), ("image", config.image_teacher)):
        if name is None:
            continue
        dim = teacher_dim_hint(name, modality, config)
        if dim is None:
            notes.append(f"{modality} teacher {name}: dimension unknown before it loads, 2048 assumed")
        slots = config.frames_per_clip if modality == "image" else 1
        layouts.append((slots, dim or 2048))  # unknown user teacher: assume a large embedding
    if config.audio_segment is not None:
        notes.append("audio segments: one per clip counted (their number is known after probing the clips)")
    rows = len(manifest) if shard is None else -(-len(manifest) // shard[1])
    if path.exists():
        notes.append("the store exists: a resumed run writes only the rows not done yet (less than shown)")
    smaller = "fewer --frames-per-clip" if config.dtype == "float16" else "--dtype float16 or fewer --frames-per-clip"
    fix = f"use {smaller}" + (" or fewer clips (--shard I/N over several disks)" if shard is None else "")
    notes.append("time: not probed; the progress line shows the rate and time left from the first chunk on")
    return Plan("extract", str(path), rows, disk={"store": store_bytes(path, rows, layouts, config.dtype)},
                free_disk=free_disk_at(path), notes=tuple(notes), disk_fix=fix)


def plan_extraction(config: ExtractConfig) -> Plan:
    """The plan of ``run_extraction(config)``, computed without loading a model or writing anything
    (``ccl-cache extract --dry-run``)."""
    from ccl_cache.manifest import load_manifest

    config.validate()
    shard = resolve_shard(config.shard)
    path = store_path_for(config.store, shard)
    manifest = load_manifest(config.manifest, format=config.format, root=config.root, check_files=False)
    return extraction_plan(path, manifest, config, shard)
