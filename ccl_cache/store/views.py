"""Read views of a store: the clips table as numpy columns, a teacher's arrays and their
metadata, and :class:`LazyArray`, a numpy-like view of one stored array that reads nothing
until it is indexed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ccl_cache.store.base import Store


@dataclass(frozen=True)
class ClipTable:
    """The clips table as numpy columns (text columns are object arrays of ``str``)."""

    id: np.ndarray
    path: np.ndarray
    label: np.ndarray  # int64 class id (index into Store.classes)
    split: np.ndarray
    start: np.ndarray  # float64 seconds, NaN = from the file start
    end: np.ndarray  # float64 seconds, NaN = to the file end
    duration: np.ndarray  # float64 media duration, NaN = not probed yet
    has_audio: np.ndarray  # bool, found by extraction

    def __len__(self) -> int:
        return len(self.id)

    def row_of(self) -> dict[str, int]:
        """clip id → row."""
        return {str(cid): i for i, cid in enumerate(self.id)}


@dataclass(frozen=True)
class TeacherArrays:
    """Lazy views of one teacher's arrays plus its metadata."""

    key: str
    embedding: "LazyArray"  # (N, D) or (N, K, D)
    times: "LazyArray"  # (N, K, 2) seconds; K = 1 for clip-level teachers
    mask: "LazyArray"  # (N,) or (N, K) bool: False = missing (e.g. no audio)
    done: "LazyArray"  # (N,) bool: rows written
    fingerprint: dict[str, Any]
    dim: int
    frames: int | None
    dtype: str


class LazyArray:
    """A numpy-like view of one stored array; nothing is read until it is indexed.

    Basic indexing (ints, slices) reads only the chunks it touches; an integer array or list
    selects rows in the requested order, duplicates allowed (``read_rows`` semantics). Reads of
    damaged chunks raise StoreError (see :mod:`ccl_cache.store.damage`).
    """

    def __init__(self, store: "Store", path: str) -> None:
        self._store = store
        self.path = path

    @property
    def _info(self) -> tuple[tuple[int, ...], str, tuple[int, ...]]:
        return self._store._b.array_info(self.path)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._info[0]

    @property
    def dtype(self) -> np.dtype:
        kind = self._info[1]
        return np.dtype(object) if kind == "str" else np.dtype(kind)

    @property
    def chunks(self) -> tuple[int, ...]:
        return self._info[2]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple) and key and _is_row_index(key[0]):
            return self.read_rows(key[0])[(slice(None),) + key[1:]]
        if _is_row_index(key):
            return self.read_rows(key)
        return self._store._read(self.path, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._store._check_writable()
        self._store._b.write(self.path, key, np.asarray(value))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self._store._read(self.path, slice(None))
        return data if dtype is None else data.astype(dtype)

    def read_rows(self, index: Any) -> np.ndarray:
        return self._store.read_array_rows(self.path, index)

    def __repr__(self) -> str:
        return f"LazyArray({self.path!r}, shape={self.shape}, dtype={self.dtype})"


def _is_row_index(key: Any) -> bool:
    return isinstance(key, (list, np.ndarray))
