"""HDF5 backend: the store is one file ``*.h5`` (or ``*.hdf5``) with the same tree as Zarr.

Reading it without ccl-cache (plain h5py)::

    import json, h5py
    with h5py.File("cache.h5", "r") as f:
        f.attrs["manifest_sha256"]
        ids = f["clips/id"].asstr()[:]              # text: variable-length UTF-8 → str objects
        emb = f["teachers/audio/small_audio/embedding"][:1024]
        fp = json.loads(f["teachers/audio/small_audio"].attrs["fingerprint"])

Attributes holding dicts, lists or None are stored as JSON text (HDF5 attributes cannot nest);
their names are listed in the node's ``_json_attrs`` attribute so they decode back exactly.

Checksums: numeric datasets of stores created since checksums exist carry HDF5's ``fletcher32``
filter, which the library verifies on every chunk it reads. HDF5 cannot filter variable-length
text, so text columns have none; a damaged text chunk shows as an unreadable one or not at all.

One writer at a time (HDF5 files are not safe for concurrent writers; shards go to separate
files and ``merge_stores`` joins them). The file handle is opened lazily per process: a handle
inherited through ``fork`` (DataLoader workers) is never used, the child opens its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ccl_cache.errors import StoreError, StoreLockedError
from ccl_cache.store.backend import BACKENDS, Backend, Selection

_JSON_ATTRS = "_json_attrs"
_CHUNK_CACHE_BYTES = 32 * 1024 * 1024  # per dataset; random batches re-read the same chunks


def lock_hint(path: Path) -> str:
    return (
        f"{path}: the HDF5 file is locked by another process that has it open for writing; wait "
        "for it to finish (HDF5 allows one writer and no readers beside it). If no process uses "
        "it (e.g. a file system without lock support), set HDF5_USE_FILE_LOCKING=FALSE"
    )


@BACKENDS.register("hdf5")
class Hdf5Backend(Backend):
    """An HDF5 file opened through h5py."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5")
    io_library = "h5py"
    compressions = ("none", "lzf", "gzip")
    default_compression = "none"
    ledger_compression = "gzip"
    checksum_name = "fletcher32"

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        self._file: h5py.File | None = None
        self._pid = -1
        self._inherited: list[h5py.File] = []

    @classmethod
    def create(cls, path: Path) -> "Hdf5Backend":
        backend = cls(path, "r+")
        backend._file = backend._open_file("w-")
        backend._pid = os.getpid()
        return backend

    @classmethod
    def open(cls, path: Path, mode: str) -> "Hdf5Backend":
        backend = cls(path, mode)
        backend._file = backend._open_file(mode)  # open now so damage is reported at open time
        backend._pid = os.getpid()
        return backend

    def _open_file(self, mode: str) -> h5py.File:
        try:
            return h5py.File(self.path, mode, rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except FileExistsError:
            raise StoreError(f"{self.path}: already exists") from None
        except OSError as exc:
            if isinstance(exc, BlockingIOError) or "unable to lock" in str(exc).lower():
                raise StoreLockedError(lock_hint(self.path)) from exc
            raise StoreError(
                f"{self.path}: damaged or not an HDF5 store ({exc}); re-create it with "
                "`ccl-cache extract --overwrite` or restore it from a copy"
            ) from exc

    @property
    def f(self) -> h5py.File:
        """The file handle of this process (reopened after fork: HDF5 handles are not fork-safe)."""
        if self._file is None or self._pid != os.getpid():
            if self._file is not None:
                # Keep the inherited handle referenced: closing it in the child could flush the
                # parent's HDF5 state into the file.
                self._inherited.append(self._file)
            self._file = self._open_file(self.mode)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def flush(self) -> None:
        self.f.flush()

    def _get(self, path: str) -> Any:
        try:
            with self.reading(path):  # damaged metadata: e.g. RuntimeError "bad local heap signature"
                return self.f[path or "/"]
        except KeyError:
            raise StoreError(f"{self.path}: no group or array {path!r} in the store") from None

    def has(self, path: str) -> bool:
        with self.reading(path):
            return (path or "/") in self.f

    def is_array(self, path: str) -> bool:
        return self.has(path) and isinstance(self._get(path), h5py.Dataset)

    def children(self, path: str) -> list[str]:
        node = self._get(path)
        with self.reading(path):
            return sorted(node.keys()) if isinstance(node, h5py.Group) else []

    def require_group(self, path: str) -> None:
        self.f.require_group(path)

    def delete(self, path: str) -> None:
        # HDF5 does not reclaim the space of deleted datasets (h5repack does).
        del self.f[path]

    def move(self, source: str, target: str) -> None:
        self.f.move(source, target)

    # freed_by_delete: 0, the default - HDF5 keeps the space of deleted datasets until h5repack.

    def create_array(
        self, path: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
        fill_value: Any, compression: str,
    ) -> None:
        self.check_compression(compression)
        chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))  # h5py: chunk <= shape
        kwargs: dict[str, Any] = {"chunks": chunks}
        if compression != "none":
            kwargs["compression"] = compression
        if self.checksums and dtype != "str":  # HDF5 refuses filters on variable-length text
            kwargs["fletcher32"] = True
        if 0 in shape:
            kwargs = {}  # HDF5 cannot chunk an empty dataset (e.g. no class names)
        if dtype == "str":
            self.f.create_dataset(path, shape=shape, dtype=h5py.string_dtype("utf-8"), **kwargs)
        else:
            self.f.create_dataset(path, shape=shape, dtype=np.dtype(dtype), fillvalue=fill_value, **kwargs)

    def array_info(self, path: str) -> tuple[tuple[int, ...], str, tuple[int, ...]]:
        ds = self._get(path)
        if not isinstance(ds, h5py.Dataset):
            raise StoreError(f"{self.path}: {path!r} is a group, expected an array")
        kind = "str" if h5py.check_string_dtype(ds.dtype) is not None else str(ds.dtype)
        return tuple(ds.shape), kind, tuple(ds.chunks or ds.shape)

    def get_attrs(self, path: str) -> dict[str, Any]:
        attrs = self._get(path).attrs
        with self.reading(path):
            encoded = set(json.loads(attrs[_JSON_ATTRS])) if _JSON_ATTRS in attrs else set()
            out: dict[str, Any] = {}
            for name, value in attrs.items():
                if name == _JSON_ATTRS:
                    continue
                out[name] = json.loads(value) if name in encoded else _native(value)
        return out

    def update_attrs(self, path: str, values: dict[str, Any]) -> None:
        attrs = self._get(path).attrs
        encoded = set(json.loads(attrs[_JSON_ATTRS])) if _JSON_ATTRS in attrs else set()
        as_json = {name for name, value in values.items()
                   if value is None or isinstance(value, (dict, list, tuple))}
        # HDF5 sets attributes one at a time, so a writer killed part-way must never leave a value
        # that the list of JSON names misreads: a name changing encoding is removed first, then
        # the list is written, then the values (each absent or right until written).
        for name in values:
            if name in attrs and (name in as_json) != (name in encoded):
                del attrs[name]
        attrs[_JSON_ATTRS] = json.dumps(sorted((encoded - set(values)) | as_json))
        for name, value in values.items():
            attrs[name] = json.dumps(value) if name in as_json else value

    def _dataset(self, path: str) -> Any:
        ds = self._get(path)
        return ds.asstr() if h5py.check_string_dtype(ds.dtype) is not None else ds

    def read(self, path: str, selection: Selection) -> np.ndarray:
        with self.reading(path, selection):  # e.g. OSError "filter returned failure": fletcher32
            return np.asarray(self._dataset(path)[selection])

    def read_sorted_rows(self, path: str, rows: np.ndarray) -> np.ndarray:
        with self.reading(path, rows):
            return np.asarray(self._dataset(path)[rows])

    def write(self, path: str, selection: Selection, value: np.ndarray) -> None:
        self._get(path)[selection] = value

    # ----------------------------------------------------------------- chunks (checks)
    def _chunk_info(self, path: str, chunk: int) -> tuple[Any, Any]:
        """(dataset, HDF5 StoreInfo of the chunk or None for an unchunked dataset)."""
        ds = self._get(path)
        if not isinstance(ds, h5py.Dataset):
            raise StoreError(f"{self.path}: {path!r} is a group, expected an array")
        if ds.chunks is None:
            return ds, None
        with self.reading(path):
            return ds, ds.id.get_chunk_info_by_coord((chunk * ds.chunks[0],) + (0,) * (ds.ndim - 1))

    def chunk_exists(self, path: str, chunk: int) -> bool:
        info = self._chunk_info(path, chunk)[1]
        return info is None or info.byte_offset is not None

    def chunk_file(self, path: str, chunk: int) -> str:
        ds, info = self._chunk_info(path, chunk)
        where = f"{self.path} (dataset /{path}"
        if info is None:
            return where + ")"
        where += f", chunk at row {chunk * ds.chunks[0]}"
        if info.byte_offset is not None:
            where += f", bytes {info.byte_offset}..{info.byte_offset + info.size}"
        return where + ")"

    def checksummed(self, path: str) -> bool:
        return bool(self._get(path).fletcher32)

    def chunk_size_problem(self, path: str, chunk: int) -> str | None:
        return None  # the chunk index records each size; a truncated file does not open

    def decode(self, path: str, rows: slice) -> np.ndarray:
        return np.asarray(self._dataset(path)[rows])

    def reset_chunk(self, path: str, chunk: int) -> None:
        ds = self._get(path)
        per = ds.chunks[0] if ds.chunks else len(ds)
        rows = slice(chunk * per, min(len(ds), (chunk + 1) * per))
        if h5py.check_string_dtype(ds.dtype) is not None:  # text (no checksum): written over
            ds[rows] = np.array([""] * (rows.stop - rows.start), dtype=object)
            return
        if ds.chunks is None:
            ds[rows] = ds.fillvalue
            return
        # The chunk's raw bytes, stored with every filter marked as skipped: HDF5 would otherwise
        # read the damaged chunk before writing part of it (the last, partial chunk of a dataset).
        fill = np.full(ds.chunks, ds.fillvalue, dtype=ds.dtype)
        ds.id.write_direct_chunk((rows.start,) + (0,) * (ds.ndim - 1), fill.tobytes(), filter_mask=0xFFFFFFFF)

    def chunk_bytes(self, path: str, chunk: int) -> bytes:
        ds, info = self._chunk_info(path, chunk)
        if info is None or info.byte_offset is None:
            return b""
        with self.reading(path):
            return bytes(ds.id.read_direct_chunk(info.chunk_offset)[1])


def _native(value: Any) -> Any:
    """numpy scalars and bytes from h5py → plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
