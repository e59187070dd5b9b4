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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from ccl_cache.errors import StoreError
from ccl_cache.store.backend import BACKENDS, Backend, Selection


def _compressors(compression: str, itemsize: int) -> Any:
    # benchmarks/bench_store.py (20k x 512 float16, post-ReLU-like data): "none" writes and reads
    # fastest; lz4 saves ~7 % of the bytes and zstd ~40 % but both slow random batches 2-4x.
    if compression == "none":
        return None
    if compression == "lz4":
        return BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", typesize=max(1, itemsize))
    if compression == "zstd":
        return ZstdCodec(level=1)
    raise ValueError(compression)  # unreachable: Backend.check_compression ran first


@BACKENDS.register("zarr")
class ZarrBackend(Backend):
    """A Zarr v3 group on the local file system."""

    name = "zarr"
    suffixes = (".zarr",)
    io_library = "zarr"
    compressions = ("none", "lz4", "zstd")
    default_compression = "none"  # embeddings: float16 barely compresses, speed wins (see above)
    ledger_compression = "zstd"  # text and ledgers: small, very compressible

    def __init__(self, path: Path, mode: str, root: zarr.Group) -> None:
        super().__init__(path, mode)
        self._root = root
        self._nodes: dict[str, Any] = {}

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
        return cls(path, mode, root)

    def close(self) -> None:
        self._nodes.clear()

    def flush(self) -> None:
        """Zarr's LocalStore writes each chunk and metadata file before returning."""

    def _node(self, path: str) -> Any:
        node = self._nodes.get(path)
        if node is None:
            try:
                node = self._root[path] if path else self._root
            except KeyError:
                raise StoreError(f"{self.path}: no group or array {path!r} in the store") from None
            except Exception as exc:
                raise StoreError(f"{self.path}: damaged node {path!r} ({type(exc).__name__}: {exc})") from exc
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
        return sorted(node.keys()) if isinstance(node, zarr.Group) else []

    def require_group(self, path: str) -> None:
        group = self._root
        for part in path.split("/"):
            group = group.require_group(part)

    def delete(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        del self._node(parent)[name]
        self._nodes = {k: v for k, v in self._nodes.items() if k != path and not k.startswith(path + "/")}

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
        compressors = "auto" if dtype == "str" else _compressors(compression, itemsize)
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
        self._node(path).attrs.update(values)

    def read(self, path: str, selection: Selection) -> np.ndarray:
        return _text_to_object(np.asarray(self._node(path)[selection]))

    def read_sorted_rows(self, path: str, rows: np.ndarray) -> np.ndarray:
        arr = self._node(path)
        return _text_to_object(np.asarray(arr.get_orthogonal_selection((rows,))))

    def write(self, path: str, selection: Selection, value: np.ndarray) -> None:
        self._node(path)[selection] = value


def _text_to_object(values: np.ndarray) -> np.ndarray:
    """zarr returns numpy StringDType for text; the store hands out object arrays of str."""
    return values.astype(object) if values.dtype.kind == "T" else values
