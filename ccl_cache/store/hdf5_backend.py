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

A full disk (ENOSPC, EDQUOT) must not damage the file, and HDF5 is not journaled: a flush that
fails part-way leaves metadata pointing at blocks that were never written, and after any failed
write the library's state is undefined (a later flush or close may write it; a dataset whose
close failed stays registered and segfaults the interpreter at exit). So a writable file:

- keeps no chunk cache: data reaches the file inside the write call, whose error is raised there
  (h5py swallows errors raised when a cached dataset is closed, as "Exception ignored");
- reserves the disk blocks of each change before HDF5 writes (``posix_fallocate`` up to the
  file's end plus the change's bytes), so a full disk fails the reservation, before HDF5 has
  written anything, not HDF5's own writes;
- is flushed after each change, so the metadata on disk never refers to space this session freed
  and HDF5 reuses (a rewritten compressed chunk moves; its old place takes the next chunk);
- is abandoned at the first error (``_abandon``): its descriptor is pointed at an anonymous file
  before HDF5 closes it, so nothing after the error reaches the store, which stays as the last
  completed change left it; every later call raises the StoreError of that first error.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import h5py
import numpy as np

from ccl_cache.errors import CclCacheError, StoreError, StoreLockedError
from ccl_cache.store.backend import BACKENDS, Backend, Selection
from ccl_cache.store.space import explain_write_error

_JSON_ATTRS = "_json_attrs"
_CHUNK_CACHE_BYTES = 32 * 1024 * 1024  # per dataset, read-only files: random batches re-read the same chunks
# Reserved beyond a change's own bytes: what HDF5 may allocate besides (chunk-index nodes, a
# global heap collection for text, its metadata and small-data aggregator blocks; 8 KiB at most
# in the writes of an extraction).
_RESERVE_MARGIN = 32 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Handles that could be neither detached nor closed: kept referenced, never closed by h5py.
_ABANDONED: list[h5py.File] = []
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _change(payload: Callable[..., int] | None = None) -> Callable[[_Method], _Method]:
    """A backend method that changes the file runs inside ``Hdf5Backend._writing`` (see the module
    docstring); ``payload(*args)`` estimates the bytes it adds."""

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def changed(self: "Hdf5Backend", *args: Any, **kwargs: Any) -> Any:
            with self._writing(payload(*args, **kwargs) if payload is not None else 0):
                return method(self, *args, **kwargs)

        return changed  # type: ignore[return-value]

    return wrap


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
        self._failure: BaseException | None = None  # the first failed change: the file is abandoned
        self._reserved: tuple[int, int] | None = None  # (pid, bytes of the file known to be allocated)

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
            # Writable: no chunk cache, so a write fails in the call, not later (module docstring).
            return h5py.File(self.path, mode, rdcc_nbytes=_CHUNK_CACHE_BYTES if mode == "r" else 0)
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
        if self._failure is not None:
            raise explain_write_error(self.path, self._failure, None) from self._failure
        if self._file is None or self._pid != os.getpid():
            if self._file is not None:
                # Keep the inherited handle referenced: closing it in the child could flush the
                # parent's HDF5 state into the file.
                self._inherited.append(self._file)
            self._file = self._open_file(self.mode)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid() and self._failure is None:
            if self.mode != "r":
                self.flush()  # a full disk fails here, reserved, and abandons the file: not in HDF5's close
            with self._writing(flush=False) as file:
                self._release(file)
                file.close()
        self._file = None

    def flush(self) -> None:
        with self._writing():
            pass

    @contextlib.contextmanager
    def _writing(self, payload: int = 0, flush: bool = True) -> Iterator[h5py.File]:
        """Around one change: its disk space reserved first, the file flushed after; an HDF5 or
        disk error abandons the file and raises the StoreError that says what to do."""
        file = self.f
        try:
            if flush:
                self._reserve(file, payload + _RESERVE_MARGIN)
            yield file
            if flush:
                self._reserve(file, 0)  # the metadata cache is written below the file's end
                file.flush()
                self._flushed(file)
        except CclCacheError:
            raise  # our own refusals (a missing node): nothing was written
        except (OSError, RuntimeError) as exc:  # h5py's types for HDF5 errors; OSError for fallocate
            self._abandon(exc)
            raise explain_write_error(self.path, exc, None) from exc

    def _descriptor(self, file: h5py.File) -> int | None:
        """The file descriptor HDF5 writes through (the default sec2 driver), else None."""
        return int(file.id.get_vfd_handle()) if file.driver == "sec2" else None

    def _writable_descriptor(self, file: h5py.File) -> int | None:
        return None if self.mode == "r" else self._descriptor(file)

    def _reserve(self, file: h5py.File, extra: int) -> None:
        """Allocate the disk blocks from the file's allocated part to its end plus ``extra``, so
        that HDF5's writes there cannot meet a full disk (the reservation fails instead)."""
        fd = self._writable_descriptor(file)
        if fd is None:
            return
        pid = os.getpid()
        start = self._reserved[1] if self._reserved is not None and self._reserved[0] == pid else os.fstat(fd).st_size
        end = int(file.id.get_filesize()) + extra  # the larger of HDF5's end of file and of allocation
        if end <= start:
            return
        try:
            os.posix_fallocate(fd, start, end - start)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise
            return  # a file system without fallocate: HDF5's own writes meet a full disk instead
        self._reserved = (pid, end)

    def _flushed(self, file: h5py.File) -> None:
        """HDF5's flush may cut the file to its end of allocation, giving back reserved blocks."""
        fd = self._writable_descriptor(file)
        if fd is not None and self._reserved is not None:
            self._reserved = (self._reserved[0], min(self._reserved[1], os.fstat(fd).st_size))

    def _release(self, file: h5py.File) -> None:
        """Give back, before the close, what the reservation holds beyond HDF5's end of file (kept
        while writing: freeing and reserving blocks at every change costs more than the writes)."""
        fd = self._writable_descriptor(file)
        if fd is not None and os.fstat(fd).st_size > int(file.id.get_filesize()):
            os.ftruncate(fd, int(file.id.get_filesize()))
        self._reserved = None

    def _abandon(self, exc: BaseException) -> None:
        """Stop using the file after a failed change, leaving the store as the last flush left it.

        HDF5's close writes its caches, which after a failure hold a state it never completed
        (and a full disk would fail that close part-way). So the descriptor is first pointed at an
        anonymous in-memory file: HDF5 closes cleanly, into it, and the store gets nothing more.
        """
        self._failure = exc
        file, self._file = self._file, None
        if file is None or self._pid != os.getpid():
            return
        try:
            if _detach(self._descriptor(file)):
                file.close()
                return
        except Exception:  # noqa: BLE001 - the first error is the one to report; HDF5's state is broken
            pass
        _ABANDONED.append(file)  # never closed: a close would write the failed state into the store

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

    @_change()
    def require_group(self, path: str) -> None:
        self.f.require_group(path)

    @_change()
    def delete(self, path: str) -> None:
        # HDF5 does not reclaim the space of deleted datasets (h5repack does).
        del self.f[path]

    @_change()
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

    @_change(lambda path, values: len(json.dumps(values, default=str)))
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

    @_change(lambda path, selection, value: _payload_bytes(value))
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


def _payload_bytes(value: Any) -> int:
    """Bytes a write of ``value`` adds at most (text: its UTF-8 bytes and a heap entry each)."""
    arr = np.asarray(value)
    if arr.dtype == object:
        return sum(len(str(v).encode("utf-8")) + 16 for v in arr.flat)
    return int(arr.nbytes)


def _detach(fd: int | None) -> bool:
    """Point ``fd`` (HDF5's descriptor of a file) at an anonymous in-memory file; False where that
    cannot be done (another driver, no ``memfd_create``)."""
    if fd is None or not hasattr(os, "memfd_create"):
        return False
    try:
        spare = os.memfd_create("ccl-cache-abandoned-store")
    except OSError:
        return False
    try:
        os.dup2(spare, fd)  # closes the store's open file description (and with it HDF5's lock)
    finally:
        os.close(spare)
    return True


def _native(value: Any) -> Any:
    """numpy scalars and bytes from h5py → plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
