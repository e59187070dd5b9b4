"""Zarr v3 backend: the store is a directory ``*.zarr`` holding one Zarr group.

Reading it without ccl-cache (plain zarr-python >= 3)::

    g = zarr.open_group("cache.zarr", mode="r")
    g.attrs["manifest_sha256"]                     # root provenance
    ids = g["clips/id"][:]                         # text: numpy StringDType (vlen-utf8 codec)
    emb = g["teachers/audio/small_audio/embedding"][:1024]
    done = g["teachers/audio/small_audio/done"][:]  # only rows with done=True hold data
    g["teachers/audio/small_audio"].attrs["fingerprint"]   # a JSON object

Text columns use the Zarr v3 ``string`` data type (variable-length UTF-8), the one text type
with a stable v3 specification; fixed-width bytes would trigger zarr's "unstable specification"
warning. Every chunk write goes through zarr's LocalStore, which writes a temporary file and
renames it into place, so a killed writer never leaves a half-written chunk behind.

Checksums: arrays of stores created since checksums exist end their codec pipeline with Zarr's
``crc32c`` codec (after compression), which zarr-python 3 verifies on every chunk it decodes, and
write every chunk, fill values included (``write_empty_chunks``), so a missing chunk file is a lost
one. Older stores keep their arrays as they are and are read as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from ccl_cache.errors import StoreError
from ccl_cache.store.backend import BACKENDS, Backend, Selection, folder_bytes
from ccl_cache.store.damage import FORMAT_ERRORS, unreadable_message
from ccl_cache.store.lease import lease_dir


def _compressors(compression: str, itemsize: int, checksum: bool) -> list[Any]:
    """The bytes-to-bytes codecs of an array: its compressor, then the checksum of what is stored."""
    # benchmarks/bench_store.py (20k x 512 float16, post-ReLU-like data): "none" writes and reads
    # fastest; lz4 saves ~7 % of the bytes and zstd ~40 % but both slow random batches 2-4x.
    crc = [Crc32cCodec()] if checksum else []
    if compression == "none":
        return crc
    if compression == "lz4":
        return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", typesize=max(1, itemsize)), *crc]
    if compression == "zstd":
        return [ZstdCodec(level=1), *crc]
    raise ValueError(compression)  # unreachable: Backend.check_compression ran first


log = logging.getLogger(__name__)
_TRASH = "deleted-"  # prefix of a deleted node's folder in the lease folder, until removed
# Chunks up to this size are checked (CRC-32C) the first time a process reads part of them:
# teacher chunks (256 rows x 512 float16 = 256 KiB; frame teachers a few MiB), not frame caches.
_CHECK_ONCE_BYTES = 8 * 1024 * 1024


def _trash_dir(path: Path) -> Path:
    """Where deleted nodes go: the lease folder beside the store's real folder (a symlinked
    store's too), so that moving a node there is a rename on one file system."""
    return lease_dir(Path(path).resolve())


@BACKENDS.register("zarr")
class ZarrBackend(Backend):
    """A Zarr v3 group on the local file system."""

    name = "zarr"
    suffixes = (".zarr",)
    io_library = "zarr"
    compressions = ("none", "lz4", "zstd")
    default_compression = "none"  # embeddings: float16 barely compresses, speed wins (see above)
    ledger_compression = "zstd"  # text and ledgers: small, very compressible
    checksum_name = "crc32c"

    def __init__(self, path: Path, mode: str, root: zarr.Group) -> None:
        super().__init__(path, mode)
        self._root = root
        self._nodes: dict[str, Any] = {}
        self._raw: dict[str, _RawLayout | None] = {}

    @classmethod
    def create(cls, path: Path) -> "ZarrBackend":
        try:
            root = zarr.open_group(str(path), mode="w-", zarr_format=3)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: cannot create a Zarr store here: {exc}") from exc
        return cls(path, "r+", root)

    @classmethod
    def open(cls, path: Path, mode: str) -> "ZarrBackend":
        if not (Path(path) / "zarr.json").is_file():
            raise StoreError(
                f"{path}: damaged or not a Zarr v3 store (no zarr.json at its top); "
                "re-create it with `ccl-cache extract --overwrite` or restore it from a copy"
            )
        try:
            root = zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception as exc:  # zarr raises many kinds for bad metadata; all mean "damaged"
            raise StoreError(f"{path}: damaged Zarr store ({type(exc).__name__}: {exc})") from exc
        if mode != "r":
            for trash in _trash_dir(path).glob(f"{_TRASH}*"):  # left by a writer killed mid-delete
                shutil.rmtree(trash, ignore_errors=True)
        return cls(path, mode, root)

    def close(self) -> None:
        self._nodes.clear()
        self._raw.clear()

    def flush(self) -> None:
        """Zarr's LocalStore writes each chunk and metadata file before returning."""

    def _node(self, path: str) -> Any:
        node = self._nodes.get(path)
        if node is None:
            try:
                node = self._root[path] if path else self._root
            except KeyError:
                raise StoreError(f"{self.path}: no group or array {path!r} in the store") from None
            except Exception as exc:  # zarr raises many kinds for bad metadata; all mean "damaged"
                raise StoreError(unreadable_message(self.path, path, None, exc)) from exc
            if isinstance(node, zarr.Array):
                # Arrays only: a group's attrs may be written later by another process (a shard
                # finishing create_teacher), so groups are looked up afresh each time.
                self._nodes[path] = node
        return node

    def has(self, path: str) -> bool:
        try:
            self._node(path)
        except StoreError:
            return False
        return True

    def is_array(self, path: str) -> bool:
        return self.has(path) and isinstance(self._node(path), zarr.Array)

    def children(self, path: str) -> list[str]:
        node = self._node(path)
        if not isinstance(node, zarr.Group):
            return []
        try:
            return sorted(node.keys())
        except FORMAT_ERRORS:  # zarr reads every member's metadata: a damaged one fails the listing
            return sorted(p.name for p in (Path(self.path) / path).iterdir() if (p / "zarr.json").is_file())

    def require_group(self, path: str) -> None:
        group = self._root
        for part in path.split("/"):
            try:
                group = group.require_group(part)
            except zarr.errors.ContainsGroupError:
                # zarr checks, then creates: another process (a concurrent shard writer) created
                # the group in between. It exists now, which is all this asks for.
                group = group[part]

    def delete(self, path: str) -> None:
        """Remove a node in one step: its folder is renamed out of the store, then removed.

        zarr deletes a node file by file (``shutil.rmtree``), so a writer killed part-way left
        some of its arrays' metadata or chunks behind; the next creation at that path then failed
        on the leftover arrays, or silently took over old chunks (a done ledger of old rows).
        """
        self._node(path)  # a clear error for a missing node
        trash = _trash_dir(self.path) / f"{_TRASH}{uuid.uuid4().hex}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(Path(self.path) / path, trash)
        except OSError as exc:  # e.g. the store folder is a mount point: zarr's own delete
            log.warning("%s: %s cannot be moved aside (%s); it is deleted file by file", self.path, path, exc)
            parent, _, name = path.rpartition("/")
            del self._node(parent)[name]
        else:
            shutil.rmtree(trash, ignore_errors=True)  # what a kill leaves here, open() sweeps
        self._forget(path)

    def move(self, source: str, target: str) -> None:
        self._node(source)  # a clear error for a missing node
        os.rename(Path(self.path) / source, Path(self.path) / target)  # a folder: one step
        self._forget(source)

    def freed_by_delete(self, path: str) -> int:
        return folder_bytes(Path(self.path) / path)  # a node is a folder of files

    def _forget(self, path: str) -> None:
        """Drop the cached handles of ``path`` and of everything under it."""
        self._nodes = {k: v for k, v in self._nodes.items() if k != path and not k.startswith(path + "/")}
        self._raw = {k: v for k, v in self._raw.items() if k != path and not k.startswith(path + "/")}

    def create_array(
        self, path: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
        fill_value: Any, compression: str,
    ) -> None:
        self.check_compression(compression)
        parent, _, name = path.rpartition("/")
        if parent:
            self.require_group(parent)
        group = self._node(parent) if parent else self._root
        np_dtype: Any = str if dtype == "str" else np.dtype(dtype)
        itemsize = 1 if dtype == "str" else np.dtype(dtype).itemsize
        if dtype == "str":  # zarr's "auto" for text (zstd level 0), plus the checksum
            compressors: Any = [ZstdCodec(level=0), Crc32cCodec()] if self.checksums else "auto"
        else:
            compressors = _compressors(compression, itemsize, self.checksums)
        group.create_array(
            name, shape=shape, chunks=chunks, dtype=np_dtype, fill_value=fill_value,
            compressors=compressors, overwrite=False,
        )

    def array_info(self, path: str) -> tuple[tuple[int, ...], str, tuple[int, ...]]:
        arr = self._node(path)
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.path}: {path!r} is a group, expected an array")
        kind = "str" if arr.dtype.kind in ("T", "U", "O") else str(arr.dtype)
        return tuple(arr.shape), kind, tuple(arr.chunks)

    def get_attrs(self, path: str) -> dict[str, Any]:
        return dict(self._node(path).attrs)

    def update_attrs(self, path: str, values: dict[str, Any]) -> None:
        # One metadata write for all keys: zarr's ``attrs.update`` rewrites zarr.json once per
        # key, so a writer killed between two of them left a node with only some of its keys.
        node = self._node(path).update_attributes(values)
        if path in self._nodes:
            self._nodes[path] = node  # an array's update returns a new object

    def read(self, path: str, selection: Selection) -> np.ndarray:
        with self.reading(path, selection):
            if isinstance(selection, slice):
                rows = self._read_raw_rows(path, selection)
                if rows is not None:
                    return rows
            return _text_to_object(np.asarray(self._node(path)[selection]))

    def _layout(self, path: str) -> "_RawLayout | None":
        if path not in self._raw:
            self._raw[path] = _RawLayout.of(self._node(path))
        return self._raw[path]

    def _read_raw_rows(self, path: str, selection: slice) -> np.ndarray | None:
        """Rows of an uncompressed array read straight from its chunk files, or None.

        zarr-python 3 sends every read through its asyncio event loop thread: about 1 ms of
        hand-offs per call whatever its size, which dominated training reads of the frame cache
        (one 16-frame window per call; benchmarks/bench_decode.py). Uncompressed chunks are the
        array's bytes in C order, so a row range is one ``readinto`` per chunk it touches.
        """
        layout = self._layout(path)
        if layout is None:
            return None
        start, stop, step = selection.indices(layout.rows)
        if step != 1:
            return None
        out = np.empty((max(0, stop - start),) + layout.row_shape, layout.dtype)
        chunk = layout.chunk_rows
        for c in range(start // chunk, -(-stop // chunk) if stop > start else 0):
            lo, hi = max(start, c * chunk), min(stop, (c + 1) * chunk)
            if not layout.read_into(c, lo - c * chunk, out[lo - start: hi - start]):
                return None  # an unexpected chunk file (e.g. being replaced): let zarr read it
        return out

    def read_sorted_rows(self, path: str, rows: np.ndarray) -> np.ndarray:
        with self.reading(path, rows):
            layout = self._layout(path)
            if layout is not None:
                out = np.empty((len(rows),) + layout.row_shape, layout.dtype)
                chunks = rows // layout.chunk_rows
                cuts = [0, *(np.flatnonzero(np.diff(chunks)) + 1).tolist(), len(rows)]
                if all(layout.read_rows_into(int(chunks[a]), rows[a:b] - chunks[a] * layout.chunk_rows, out[a:b])
                       for a, b in zip(cuts[:-1], cuts[1:]) if b > a):
                    return out
            arr = self._node(path)
            return _text_to_object(np.asarray(arr.get_orthogonal_selection((rows,))))

    def write(self, path: str, selection: Selection, value: np.ndarray) -> None:
        arr = self._node(path)
        if arr.config.write_empty_chunks != self.checksums:
            # Stores with checksums write every chunk, so a missing chunk file means a lost one;
            # older stores keep zarr's default (chunks equal to the fill value are not stored).
            arr = self._nodes[path] = arr.with_config({"write_empty_chunks": self.checksums})
        arr[selection] = value

    # ----------------------------------------------------------------- chunks (checks)
    def _array(self, path: str) -> Any:
        arr = self._node(path)
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.path}: {path!r} is a group, expected an array")
        return arr

    def _chunk_path(self, path: str, chunk: int) -> Path:
        arr = self._array(path)
        key = arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))
        return Path(arr.store_path.store.root) / arr.store_path.path / key

    def chunk_exists(self, path: str, chunk: int) -> bool:
        return self._chunk_path(path, chunk).is_file()

    def chunk_file(self, path: str, chunk: int) -> str:
        return str(self._chunk_path(path, chunk))

    def checksummed(self, path: str) -> bool:
        return any(isinstance(c, Crc32cCodec) for c in self._array(path).metadata.codecs)

    def chunk_size_problem(self, path: str, chunk: int) -> str | None:
        arr = self._array(path)
        codecs = arr.metadata.codecs
        if arr.dtype.kind not in "biuf" or not all(isinstance(c, (BytesCodec, Crc32cCodec)) for c in codecs):
            return None  # compressed or text: the size varies, decoding tells
        expected = int(np.prod(arr.chunks)) * arr.dtype.itemsize + 4 * self.checksummed(path)
        size = self._chunk_path(path, chunk).stat().st_size
        if size == expected:
            return None
        return f"{'truncated' if size < expected else 'too long'}: {size} bytes, an uncompressed chunk has {expected}"

    def decode(self, path: str, rows: slice) -> np.ndarray:
        return _text_to_object(np.asarray(self._array(path)[rows]))

    def chunk_bytes(self, path: str, chunk: int) -> bytes:
        return self._chunk_path(path, chunk).read_bytes()

    def reset_chunk(self, path: str, chunk: int) -> None:
        self._chunk_path(path, chunk).unlink(missing_ok=True)  # a missing chunk reads as fill

    def node_file(self, path: str) -> str:
        return str(Path(self.path) / path / "zarr.json")


@dataclass(frozen=True)
class _RawLayout:
    """Where an uncompressed, row-chunked Zarr v3 array keeps its bytes on the local disk.

    A chunk file is the chunk's bytes in C order, followed by their CRC-32C (4 bytes, little
    endian) when the array has the ``crc32c`` codec. A read of a whole chunk checks it. A read of
    part of a chunk checks the chunk the first time this process touches it (reading it whole
    once), if it is at most _CHECK_ONCE_BYTES: teacher chunks are, so lazily read teachers are
    checked too; frame-cache chunks are larger and a training window, a small part of one, is
    read without the check (it would read several times the window): ``ccl-cache verify`` reads
    them whole.
    """

    folder: Path
    rows: int
    row_shape: tuple[int, ...]
    chunk_rows: int
    dtype: np.dtype
    fill: Any
    keys: Any  # the array metadata's encode_chunk_key
    crc: bool
    checked: set[int] = field(default_factory=set, compare=False)  # chunks whose CRC matched

    @classmethod
    def of(cls, arr: Any) -> "_RawLayout | None":
        """The layout when the fast path applies: local files, bytes codec only (native byte
        order; a crc32c after it is allowed), numeric dtype, chunks spanning whole rows; None
        otherwise."""
        meta = getattr(arr, "metadata", None)
        store = arr.store_path.store
        codecs = tuple(getattr(meta, "codecs", ()))
        crc = len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec)
        if (getattr(meta, "zarr_format", None) != 3 or not isinstance(store, LocalStore)
                or len(codecs) != 1 + crc or not isinstance(codecs[0], BytesCodec) or arr.ndim < 1):
            return None
        dtype = np.dtype(arr.dtype) if not isinstance(arr.dtype, str) else None
        endian = getattr(codecs[0].endian, "value", None)
        if (dtype is None or dtype.kind not in "biuf" or tuple(arr.chunks[1:]) != tuple(arr.shape[1:])
                or (endian is not None and endian != sys.byteorder)):
            return None
        return cls(Path(store.root) / arr.store_path.path, int(arr.shape[0]), tuple(arr.shape[1:]),
                   int(arr.chunks[0]), dtype, meta.fill_value, meta.encode_chunk_key, crc)

    def read_into(self, chunk: int, first: int, out: np.ndarray) -> bool:
        """Fill ``out`` with rows ``first...`` of chunk ``chunk`` (fill value when never written).
        False when the file is not as expected (too short, wrong checksum): zarr reads it then,
        and names the damage."""
        if out.size == 0:
            return True
        name = self.folder / self.keys((chunk,) + (0,) * len(self.row_shape))
        valid = min(self.chunk_rows, self.rows - chunk * self.chunk_rows)  # rows of this chunk
        whole = first == 0 and len(out) == valid
        check = self.crc and (whole or (chunk not in self.checked and self._small()))
        try:
            with open(name, "rb", buffering=0) as fh:
                if check:
                    full = out if whole else np.empty((valid,) + self.row_shape, self.dtype)
                    if not self._read_checked(fh, full):
                        return False
                    self.checked.add(chunk)
                    if not whole:
                        out[...] = full[first: first + len(out)]
                    return True
                fh.seek(first * out[:1].nbytes)
                return fh.readinto(memoryview(out).cast("B")) == out.nbytes
        except FileNotFoundError:
            out[...] = self.fill
            return True

    def _small(self) -> bool:
        return self.chunk_rows * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize <= _CHECK_ONCE_BYTES

    def _read_checked(self, fh: Any, out: np.ndarray) -> bool:
        """The whole chunk file into ``out`` (its valid rows) if its size and CRC-32C are right."""
        size = self.chunk_rows * out[:1].nbytes + 4
        buf = bytearray(size + 1)  # one byte more: a longer file is found too
        if fh.readinto(buf) != size:
            return False
        data = np.frombuffer(buf, np.uint8, count=size - 4)  # google_crc32c takes arrays, not memoryviews
        if google_crc32c.value(data) != int.from_bytes(buf[size - 4: size], "little"):
            return False
        memoryview(out).cast("B")[:] = memoryview(buf)[: out.nbytes]
        return True

    def read_rows_into(self, chunk: int, local: np.ndarray, out: np.ndarray) -> bool:
        """Scattered rows ``local`` (sorted, within chunk ``chunk``) into ``out``: one positioned
        read per row (random training batches), or one read of the span when they are dense."""
        if len(local) and (local[-1] - local[0] + 1 <= 2 * len(local)
                           or (self.crc and chunk not in self.checked and self._small())):
            span = np.empty((int(local[-1] - local[0]) + 1,) + self.row_shape, self.dtype)
            if not self.read_into(chunk, int(local[0]), span):
                return False
            out[...] = span[local - local[0]]
            return True
        name = self.folder / self.keys((chunk,) + (0,) * len(self.row_shape))
        try:
            fd = os.open(name, os.O_RDONLY)
        except FileNotFoundError:
            out[...] = self.fill
            return True
        try:
            size = out[:1].nbytes
            return all(os.preadv(fd, [memoryview(out[j: j + 1]).cast("B")], int(r) * size) == size
                       for j, r in enumerate(local))
        finally:
            os.close(fd)


def _text_to_object(values: np.ndarray) -> np.ndarray:
    """zarr returns numpy StringDType for text; the store hands out object arrays of str."""
    return values.astype(object) if values.dtype.kind == "T" else values
