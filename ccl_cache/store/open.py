"""Creating and opening stores.

A new store is built under a temporary name beside its final path and moved into place in one
rename, so a crash never leaves a half-created store and two shard processes racing to create
the same Zarr store agree on one (the loser opens the winner's store with ``exist_ok=True``).
Temporary names carry their creator (``.<stem>.<host>-<pid>-<random>.tmp<suffix>``): a creator
killed mid-build leaves one behind, and the next creation of the same store removes it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ccl_cache.errors import ConfigError, StoreError, StoreLockedError, StoreMismatchError
from ccl_cache.fileio import owner_is_dead, owner_tag
from ccl_cache.store import lease as lease_mod
from ccl_cache.store.backend import Backend, backend_for_path
from ccl_cache.store.base import Store
from ccl_cache.store.views import ClipTable
from ccl_cache.store.schema import (
    CHECKSUMS_ATTR, CLIP_COLUMNS, FAILURE_COLUMNS, FILL, FORMAT, SCHEMA_VERSION, check_root_attrs, library_versions, new_generation,
    utc_now,
)

if TYPE_CHECKING:
    from ccl_cache.manifest import Manifest


def open_store(path: str | Path, mode: str = "r") -> Store:
    """Open an existing store read-only (``"r"``) or for writing (``"r+"``)."""
    if mode not in ("r", "r+"):
        raise ConfigError(f"store mode {mode!r} is not 'r' (read) or 'r+' (read and write)")
    path = Path(path)
    cls = backend_for_path(path)
    if not path.exists():
        raise StoreError(f"{path}: no store here; create one with `ccl-cache extract` (or create_store)")
    try:
        backend = cls.open(path, mode)
    except StoreLockedError as exc:
        live = lease_mod.live_leases(path)
        if live:
            raise StoreLockedError(f"{path}: in use by a writer: {live[0].describe()}; wait for it to finish") from exc
        raise
    try:
        attrs = backend.get_attrs("")
        check_root_attrs(str(path), attrs)
        _check_tree(backend)
    except Exception:
        backend.close()
        raise
    return Store(backend, attrs)


def _check_tree(backend: Backend) -> None:
    required = [f"clips/{c}" for c in CLIP_COLUMNS] + [f"failures/{c}" for c in FAILURE_COLUMNS] + ["classes"]
    for name in required:
        if not backend.is_array(name):
            raise StoreError(
                f"{backend.path}: damaged store: array {name!r} is missing; re-create it with "
                "`ccl-cache extract --overwrite` or restore it from a copy"
            )


def create_store(path: str | Path, manifest: "Manifest", chunk_rows: int = 256, overwrite: bool = False,
                 exist_ok: bool = False, compression: str | None = None, checksums: bool = True) -> Store:
    """Create a store for ``manifest`` (its clips table and classes) and open it ``"r+"``.

    An existing path is an error unless ``overwrite`` (replace it) or ``exist_ok`` (open it when
    it was built from the same manifest — resume — else StoreMismatchError). ``checksums=False``
    writes a store as ccl-cache did before checksums existed (for tests of old stores).
    """
    records = list(manifest.records)
    if not records:
        raise ConfigError(f"{path}: the manifest has no clips; nothing to store")
    labels = np.asarray(manifest.labels(), dtype=np.int64)
    table = ClipTable(
        id=np.array([r.id for r in records], dtype=object),
        path=np.array([str(r.path) for r in records], dtype=object),
        label=labels,
        split=np.array([r.split for r in records], dtype=object),
        start=np.array([np.nan if r.start is None else r.start for r in records], dtype=np.float64),
        end=np.array([np.nan if r.end is None else r.end for r in records], dtype=np.float64),
        duration=np.full(len(records), np.nan),
        has_audio=np.zeros(len(records), dtype=bool),
    )
    return build_store(path, table, list(manifest.classes), manifest.sha256(), chunk_rows,
                       overwrite=overwrite, exist_ok=exist_ok, compression=compression, checksums=checksums)


def build_store(path: str | Path, table: ClipTable, classes: list[str], manifest_sha256: str, chunk_rows: int,
                overwrite: bool = False, exist_ok: bool = False, compression: str | None = None,
                fill: Callable[[Store], None] | None = None, checksums: bool = True) -> Store:
    """Create a store from a clips table (used by create_store and merge_stores).

    ``fill(store)``, when given, writes more content into the temporary store before it is
    moved into place (merge_stores copies teachers this way, so the output appears complete).
    """
    path = Path(path)
    cls = backend_for_path(path)
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows!r} must be a positive integer (e.g. 256, the extraction batch)")
    if path.exists() and not overwrite:
        if exist_ok:
            return _open_same(path, manifest_sha256, len(table))
        raise StoreError(
            f"{path}: already exists; pass --overwrite (overwrite=True) to replace it, or open it to resume"
        )
    if path.exists() and overwrite:
        live = lease_mod.live_leases(path)
        if live:
            raise StoreLockedError(f"{path}: cannot overwrite: a writer holds it: {live[0].describe()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_builds(path)
    tmp = path.parent / f".{path.stem}.{owner_tag()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}"
    backend = cls.create(tmp)
    backend.checksums = checksums
    try:
        comp = backend.check_compression(compression or cls.default_compression)
        _write_schema(backend, table, classes, manifest_sha256, chunk_rows, comp)
        if fill is not None:
            fill(Store(backend, backend.get_attrs("")))
        backend.close()
        _remove(lease_mod.lease_dir(tmp))  # the creation lock of `fill`, if it took one
        _install(tmp, path, overwrite)
    except FileExistsError:
        _remove(tmp)
        if exist_ok:
            return _open_same(path, manifest_sha256, len(table))
        raise StoreError(f"{path}: another process created it first; open it instead") from None
    except BaseException:
        backend.close()
        _remove(tmp)
        raise
    return open_store(path, "r+")


def _open_same(path: Path, manifest_sha256: str, n: int) -> Store:
    store = open_store(path, "r+")
    if store.attrs["manifest_sha256"] != manifest_sha256:
        stored_sha, stored_n = store.attrs["manifest_sha256"], store.n
        store.close()
        raise StoreMismatchError(
            f"{path}: built from another manifest (sha256 {stored_sha[:12]}…, {stored_n} clips) than "
            f"this one (sha256 {manifest_sha256[:12]}…, {n} clips); pass --overwrite to rebuild "
            "it, or use another store path"
        )
    return store


def _write_schema(backend: Backend, table: ClipTable, classes: list[str], manifest_sha256: str,
                  chunk_rows: int, compression: str) -> None:
    n, ledger = len(table), backend.ledger_compression
    for column, dtype in CLIP_COLUMNS.items():
        backend.create_array(f"clips/{column}", (n,), dtype, (chunk_rows,), FILL[dtype], ledger)
        backend.write(f"clips/{column}", slice(0, n), np.asarray(getattr(table, column)))
    backend.create_array("classes", (len(classes),), "str", (max(1, len(classes)),), "", ledger)
    if classes:
        backend.write("classes", slice(0, len(classes)), np.array(classes, dtype=object))
    for column, dtype in FAILURE_COLUMNS.items():
        backend.create_array(f"failures/{column}", (n,), dtype, (chunk_rows,), FILL[dtype], ledger)
    backend.require_group("teachers")
    backend.require_group("students")
    backend.update_attrs("", {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "created": utc_now(), "generation": new_generation(),
        "versions": library_versions(backend.io_library), "manifest_sha256": manifest_sha256,
        "chunk_rows": chunk_rows, "n": n, "compression": compression,
        **({CHECKSUMS_ATTR: backend.checksum_name} if backend.checksums else {}),
    })
    backend.flush()


def _install(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished temporary store into place (FileExistsError when someone was first)."""
    if overwrite and path.exists():
        trash = path.parent / f".{path.stem}.{owner_tag()}-{uuid.uuid4().hex[:8]}.old{path.suffix}"
        os.replace(path, trash)
        os.replace(tmp, path)
        _remove(trash)
        return
    if tmp.is_dir():
        try:
            os.rename(tmp, path)  # fails when path is a non-empty directory
        except OSError as exc:
            if path.exists():
                raise FileExistsError(str(path)) from exc
            raise
    else:
        try:
            os.link(tmp, path)  # fails when path exists (os.rename would replace it silently)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: check, then rename
            if path.exists():
                raise FileExistsError(str(path)) from None
            os.rename(tmp, path)
            return
        os.unlink(tmp)


def sweep_stale_builds(path: str | Path) -> list[Path]:
    """Remove the temporary stores (``.tmp``, and ``.old`` of an overwrite) that creators of
    ``path`` killed on this host left beside it, with their lock folders; return what was removed.

    Temporaries of live creators (racing shard processes) and of other hosts are kept.
    """
    path = Path(path)
    prefix, removed = f".{path.stem}.", []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        name = candidate.name
        kind = next((k for k in (".tmp", ".old") if name.endswith(f"{k}{path.suffix}")), None)
        if kind is None or not name.startswith(prefix):
            continue
        owner = name[len(prefix):-len(kind + path.suffix)].rpartition("-")[0]  # drop the random part
        if owner and owner_is_dead(owner):
            _remove(candidate)
            _remove(lease_mod.lease_dir(candidate))
            removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
