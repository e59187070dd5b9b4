"""The run's output: where it goes (the store, or an HDF5 shard's own file; the config and failure
log beside it), whether it can be written and how large it gets, checked before any model loads;
and the store opened for a resume or created."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ccl_cache.errors import ConfigError, StoreError, StoreLockedError
from ccl_cache.extract.config import ExtractConfig

if TYPE_CHECKING:
    from ccl_cache.manifest import Manifest
    from ccl_cache.store import Store

FAILURE_LOG_SUFFIX = ".failures.jsonl"


def store_path_for(store: str | Path, shard: tuple[int, int] | None) -> Path:
    """Where this process writes: the store itself, or ``<stem>.shard-I-of-N.h5`` for HDF5 shards."""
    path = Path(store)
    if shard is None or path.suffix.lower() == ".zarr":
        return path
    return path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}{path.suffix}")


def config_path_for(store_path: Path, shard: tuple[int, int] | None) -> Path:
    """``<store>.extract.yaml``, or ``<store>.extract-shard-I-of-N.yaml`` for Zarr shards."""
    if shard is not None and store_path.suffix.lower() == ".zarr":
        return store_path.with_name(f"{store_path.name}.extract-shard-{shard[0]}-of-{shard[1]}.yaml")
    return store_path.with_name(f"{store_path.name}.extract.yaml")


def failure_log_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + FAILURE_LOG_SUFFIX)


def check_output_location(store_path: Path) -> None:
    """Fail before any model loads when the store's folder (or the existing store) is not writable."""
    parent = store_path.resolve().parent
    if not parent.is_dir():
        raise ConfigError(
            f"output folder {parent} does not exist; create it (mkdir -p {parent}) or choose "
            "another --store location"
        )
    try:
        _probe_write(parent)
    except OSError as exc:
        raise StoreError(
            f"cannot write in {parent} ({exc.strerror}); choose a writable --store location"
        ) from None
    if store_path.exists():  # resuming: the store itself must take writes (read-only mount, chmod)
        try:
            if store_path.is_dir():
                _probe_write(store_path)
            else:
                os.close(os.open(store_path, os.O_WRONLY))
        except OSError as exc:
            raise StoreError(
                f"cannot write into the existing store {store_path} ({exc.strerror}); make it writable, or "
                "copy it to a writable place and pass that --store"
            ) from None


def _probe_write(folder: Path) -> None:
    fd, probe = tempfile.mkstemp(prefix=".ccl-write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def estimate_store_bytes(rows: int, layouts: Sequence[tuple[int, int]], dtype: str) -> int:
    """Upper bound of the bytes one run writes: ``layouts`` = (slots K, dim D) per teacher.

    Per row and teacher: K·D embedding values, K·2 float64 times, K mask bytes, a done byte;
    plus ~512 bytes of clip table and failure ledger per row. Compression only makes it smaller.
    """
    itemsize = np.dtype(dtype).itemsize
    per_row = 512 + sum(k * d * itemsize + k * 16 + k + 1 for k, d in layouts)
    return rows * per_row


def open_or_create_store(path: Path, manifest: "Manifest", config: ExtractConfig, sharded: bool) -> "Store":
    """Open the store for writing (resume), creating it when absent.

    ``create_store(exist_ok=True)`` lets shard processes that start together agree on one store.
    A store of another manifest, or a damaged one, is refused unless ``overwrite`` (not for
    shards: each would wipe the others' work).
    """
    from ccl_cache.store import create_store

    try:
        return create_store(path, manifest, chunk_rows=config.batch_size, exist_ok=True)
    except StoreLockedError:
        raise
    except StoreError:  # another manifest's store, or a damaged one (its message advises --overwrite)
        if not config.overwrite or sharded:
            raise
    return create_store(path, manifest, chunk_rows=config.batch_size, overwrite=True)
