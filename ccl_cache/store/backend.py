"""The storage backend contract: groups, arrays, attributes and row selections, nothing more.

All store logic (schema, ledgers, validation, leases) lives in :class:`ccl_cache.store.base.Store`;
a backend only maps paths like ``"teachers/audio/x/embedding"`` onto its container. Backends are
registered in ``BACKENDS`` (a ``Registry``) and chosen from the path suffix.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from ccl_cache.errors import StoreError
from ccl_cache.registry import Registry
from ccl_cache.store.damage import FORMAT_ERRORS, unreadable_message

Selection = Any  # an int, a slice or a tuple of them (basic numpy indexing)


class Backend(ABC):
    """One open container (a Zarr v3 group directory or an HDF5 file).

    Dtype ``"str"`` means variable-length UTF-8 text; ``read`` returns it as an object array of
    ``str`` whatever the backend keeps on disk.

    Every array is chunked along its rows only. Arrays created while ``checksums`` is True carry
    the backend's checksum (``checksum_name``) in their codec pipeline and have every chunk
    written, fill values included, so that a missing chunk means a lost one; ``Store`` sets it
    from the root attribute ``checksums`` (absent in stores written before checksums existed).
    Format errors of the I/O library while reading become :class:`StoreError` naming the store,
    the array, the rows and what to do (see :mod:`ccl_cache.store.damage`).
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    io_library: ClassVar[str]
    compressions: ClassVar[tuple[str, ...]]  # accepted `compression` names, the first is "none"
    default_compression: ClassVar[str]  # for embeddings, students and generic arrays
    ledger_compression: ClassVar[str]  # for text, times, masks and ledgers
    checksum_name: ClassVar[str]  # the checksum new arrays carry: root attribute "checksums"

    def __init__(self, path: Path, mode: str) -> None:
        self.path = Path(path)
        self.mode = mode
        self.checksums = True

    @contextmanager
    def reading(self, array: str, rows: Any = None) -> Iterator[None]:
        """Turn the I/O library's format errors inside the block into a named StoreError."""
        try:
            yield
        except StoreError:
            raise
        except FORMAT_ERRORS as exc:
            raise StoreError(unreadable_message(self.path, array, rows, exc)) from exc

    @classmethod
    @abstractmethod
    def create(cls, path: Path) -> "Backend":
        """Create a new, empty container at ``path`` (which must not exist) open for writing."""

    @classmethod
    @abstractmethod
    def open(cls, path: Path, mode: str) -> "Backend":
        """Open an existing container (``"r"`` or ``"r+"``); StoreError when it is damaged."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def flush(self) -> None:
        """Push written data to the operating system (a no-op where writes are immediate)."""

    @abstractmethod
    def has(self, path: str) -> bool: ...

    @abstractmethod
    def is_array(self, path: str) -> bool: ...

    @abstractmethod
    def children(self, path: str) -> list[str]:
        """Names of the members of the group at ``path`` (``""`` = root), sorted."""

    @abstractmethod
    def require_group(self, path: str) -> None: ...

    @abstractmethod
    def delete(self, path: str) -> None: ...

    @abstractmethod
    def move(self, source: str, target: str) -> None:
        """Rename node ``source`` to ``target`` (absent; its parent exists) in one step."""

    def freed_by_delete(self, path: str) -> int:
        """Disk bytes that deleting node ``path`` gives back (0 unless the backend knows more)."""
        return 0

    @abstractmethod
    def create_array(
        self, path: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
        fill_value: Any, compression: str,
    ) -> None: ...

    @abstractmethod
    def array_info(self, path: str) -> tuple[tuple[int, ...], str, tuple[int, ...]]:
        """(shape, dtype name — ``"str"`` for text —, chunks) of the array at ``path``."""

    @abstractmethod
    def get_attrs(self, path: str) -> dict[str, Any]: ...

    @abstractmethod
    def update_attrs(self, path: str, values: dict[str, Any]) -> None:
        """Merge ``values`` (JSON-compatible) into the attributes of the node at ``path``."""

    @abstractmethod
    def read(self, path: str, selection: Selection) -> np.ndarray: ...

    @abstractmethod
    def read_sorted_rows(self, path: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (strictly increasing int64) of the array at ``path``, all columns."""

    @abstractmethod
    def write(self, path: str, selection: Selection, value: np.ndarray) -> None: ...

    # Chunk-level access for checks (``Store`` reads and ``ccl-cache verify``). Chunk ``c`` of an
    # array holds rows ``c * chunks[0]`` up to the next chunk.
    @abstractmethod
    def chunk_exists(self, path: str, chunk: int) -> bool:
        """Whether chunk ``chunk`` of array ``path`` was ever written (else it reads as fill)."""

    @abstractmethod
    def chunk_file(self, path: str, chunk: int) -> str:
        """Where chunk ``chunk`` of array ``path`` is (or would be) kept, for messages."""

    @abstractmethod
    def checksummed(self, path: str) -> bool:
        """Whether array ``path`` carries a checksum of each chunk."""

    @abstractmethod
    def chunk_size_problem(self, path: str, chunk: int) -> str | None:
        """What is wrong with the stored size of an existing chunk (truncated...), or None."""

    @abstractmethod
    def decode(self, path: str, rows: slice) -> np.ndarray:
        """Rows of ``path`` read through the I/O library's own decoding (checksums verified),
        with its errors as they are (``read`` converts them)."""

    @abstractmethod
    def chunk_bytes(self, path: str, chunk: int) -> bytes:
        """The stored (encoded) bytes of an existing chunk."""

    @abstractmethod
    def reset_chunk(self, path: str, chunk: int) -> None:
        """Make chunk ``chunk`` of ``path`` read as the fill value again, without reading what is
        there (a damaged chunk's bytes are dropped): ``ccl-cache verify --repair``."""

    def node_file(self, path: str) -> str:
        """The file holding the metadata of node ``path`` (``""`` = root), for messages."""
        return str(self.path)

    def size_bytes(self) -> int:
        """Bytes on disk of the whole container."""
        return self.path.stat().st_size if self.path.is_file() else folder_bytes(self.path)

    def check_compression(self, compression: str) -> str:
        if compression not in self.compressions:
            raise StoreError(
                f"{self.path}: compression {compression!r} is not available for the {self.name} "
                f"backend; choose one of: {', '.join(self.compressions)}"
            )
        return compression


BACKENDS: Registry[type[Backend]] = Registry("store backend")


def folder_bytes(folder: str | Path) -> int:
    """Bytes of every file under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def backend_for_path(path: str | Path) -> type[Backend]:
    """The backend class whose suffix ends ``path`` (``.zarr`` → zarr, ``.h5``/``.hdf5`` → hdf5)."""
    suffix = Path(path).suffix.lower()
    for name in BACKENDS.names():
        cls = BACKENDS.get(name)
        if suffix in cls.suffixes:
            return cls
    accepted = ", ".join(s for n in BACKENDS.names() for s in BACKENDS.get(n).suffixes)
    p = Path(path)
    if (p / "checkpoints").is_dir() or (p / "config.yaml").is_file():
        what = "a distill run directory, not a store; pass the store it trained on (its config.yaml says which)"
    elif suffix in (".csv", ".json", ".txt") or (p.is_dir() and (p / "manifest.csv").is_file()):
        what = "a manifest or dataset, not a store; pass the store built from it by `ccl-cache extract`"
    else:
        what = (f"unknown store suffix {suffix or '(none)'!r}; name the store with one of: "
                f"{accepted} (e.g. cache.zarr for Zarr, cache.h5 for HDF5)")
    raise StoreError(f"{path}: {what}")
