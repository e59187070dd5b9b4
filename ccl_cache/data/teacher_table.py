"""Teacher embeddings aligned with a clip window (:class:`TeacherTable`, :func:`pick_slot`): in RAM
when they fit (:func:`available_memory`), else read lazily from the store; checked finite once
(:meth:`TeacherTable.check_finite`) before training reads them."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ccl_cache.errors import StoreError
from ccl_cache.resources import available_memory

log = logging.getLogger(__name__)

_RAM_SHARE = 0.5  # teacher arrays may take at most this share of the available memory
_UNTIMED, _ABSENT = 1e20, 1e30  # slot-centre sentinels of TeacherTable (far beyond any video time)
_CENTRE_HALF = np.array([[0.5, -0.5], [0.5, 0.5]])  # windows (B, 2) @ this = (centre, half width)
_CHECK_BLOCK_BYTES = 64 * 2**20  # the finiteness check reads a lazy table this much at a time
_SHOWN_ROWS = 5  # rows a refusal names


def pick_slot(
    times: np.ndarray, mask: np.ndarray, window: tuple[float, float], policy: str, rng: np.random.Generator | None
) -> int:
    """Index of the cached frame/segment for a clip window, or -1 when none is present.

    ``policy="overlap"`` (audio segments): the present segment overlapping the window most.
    ``policy="inside"`` (image frames): a present frame whose time lies inside the window —
    random among them with ``rng``, else the first — or the one nearest the window centre.
    """
    present = np.flatnonzero(mask)
    if present.size == 0:
        return -1
    t0, t1 = times[present, 0], times[present, 1]
    w0, w1 = window
    if policy == "overlap":
        overlap = np.minimum(t1, w1) - np.maximum(t0, w0)
        if np.isfinite(overlap).any() and np.nanmax(overlap) > 0:  # untimed rows: no overlap
            return int(present[np.nanargmax(overlap)])
    else:
        mid = (t0 + t1) / 2
        inside = present[(mid >= w0 - 1e-6) & (mid <= w1 + 1e-6)]
        if inside.size:
            return int(inside[rng.integers(inside.size)] if rng is not None else inside[0])
    distance = np.abs((t0 + t1) / 2 - (w0 + w1) / 2)
    return int(present[np.nanargmin(distance)]) if np.isfinite(distance).any() else int(present[0])


class TeacherTable:
    """One teacher's embeddings for window-aligned lookup: in RAM (float32 tensor) or read lazily.

    :meth:`lookup_batch` serves a whole DataLoader batch with a few vectorised numpy operations
    (slot choice + one gather), so a lookup costs about what a plain ``emb[rows]`` gather does;
    :meth:`lookup` is the same for one row.
    """

    def __init__(self, key: str, dim: int, frames: int | None, times: np.ndarray, mask: np.ndarray,
                 embedding: torch.Tensor | None) -> None:
        self.key = key
        self.modality = key.split("/", 1)[0]
        self.dim = dim
        self.frames = frames
        self.times = times  # (N, K, 2) float64: small, always in RAM
        self.mask = mask  # (N,) or (N, K) bool
        self.embedding = embedding  # None = lazy: read rows from the store
        # A numpy view of the same memory (numpy fancy indexing has less per-call overhead than
        # torch's), C-contiguous so that the (N * K, D) view of a frame table is free.
        self._array = np.ascontiguousarray(embedding.numpy()) if embedding is not None else None
        self._mid = self._any = self._upper = None  # clip-level tables need none of these
        self._all_present = True
        if frames is not None:
            # Slot centres for the "inside" policy, with sentinels instead of NaN so that one
            # argmin also does pick_slot's fallbacks: an untimed slot comes after every timed one,
            # an absent slot after those. Rows with no present slot are flagged apart.
            mid = times.mean(-1)
            self._mid = np.where(mask, np.where(np.isnan(mid), _UNTIMED, mid), _ABSENT)
            self._any = mask.any(1)
            self._all_present = bool(self._any.all())  # usual: failed rows are not trained on
            self._upper = np.triu(np.ones((frames, frames), np.float32))  # inside @ upper = cumsum
        self.policy = "overlap" if self.modality == "audio" else "inside"

    @classmethod
    def load(cls, store: Any, key: str, in_ram: bool | None = None) -> "TeacherTable":
        """Read ``key``'s times and mask, and its embeddings unless they do not fit in RAM."""
        arrays = store.teacher(key)
        need = 4 * int(np.prod(arrays.embedding.shape))
        budget = int(_RAM_SHARE * available_memory())
        if in_ram is None:
            in_ram = need <= budget
            if not in_ram:
                log.warning(
                    "%s: teacher %s needs %.2f GiB as float32 but only %.2f GiB (half the available "
                    "memory) is allowed; reading its rows lazily from the store (slower per item)",
                    store.path, key, need / 2**30, budget / 2**30)
        times, mask = np.asarray(arrays.times[:], np.float64), np.asarray(arrays.mask[:], bool)
        embedding = torch.from_numpy(store.load_teacher(key)[0]) if in_ram else None
        return cls(key, arrays.dim, arrays.frames, times, mask, embedding)

    def nonfinite_rows(self, rows: np.ndarray, store: Any = None) -> np.ndarray:
        """The sorted ``rows`` whose present embeddings (mask True) hold NaN or inf; ``store`` is
        read block by block when the table is lazy."""
        wanted = np.zeros(len(self.mask), dtype=bool)
        wanted[np.asarray(rows, dtype=np.int64)] = True
        wanted &= self.mask if self.mask.ndim == 1 else self.mask.any(axis=1)
        lazy = store.teacher(self.key).embedding if self._array is None else None
        row_bytes = 4 * self.dim * (self.frames or 1)
        step = max(1, _CHECK_BLOCK_BYTES // row_bytes)
        bad = []
        for start in range(0, len(wanted), step):
            stop = min(len(wanted), start + step)
            if not wanted[start:stop].any():
                continue
            block = self._array[start:stop] if lazy is None else np.asarray(lazy[start:stop], np.float32)
            broken = ~np.isfinite(block).all(axis=-1) & self.mask[start:stop]  # (r,) or (r, K)
            broken = broken if broken.ndim == 1 else broken.any(axis=1)
            bad.append(np.flatnonzero(broken & wanted[start:stop]) + start)
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)

    def check_finite(self, store: Any, rows: np.ndarray) -> None:
        """Refuse (StoreError) a table whose present embeddings of ``rows`` hold NaN or inf: they
        would turn the loss non-finite, and the message would blame the learning rate."""
        bad = self.nonfinite_rows(rows, store)
        if bad.size == 0:
            return
        shown = bad[:_SHOWN_ROWS]
        ids = ", ".join(str(store.clips.id[r]) for r in shown) + (", ..." if bad.size > shown.size else "")
        raise StoreError(
            f"{store.path}: teacher {self.key} holds NaN/inf in the stored embeddings of {bad.size} clip(s) this "
            f"run would train on (clip ids {ids}; rows {', '.join(map(str, shown.tolist()))}); they would make the "
            f"loss non-finite. Re-extract the teacher: `ccl-cache extract MANIFEST --store {store.path} --overwrite` "
            "with the options the store was made with (its .extract.yaml beside it); nothing else recomputes a row "
            "marked done (--retry-failed redoes only rows in the failure ledger)"
        )

    def lookup(self, row: int, window: tuple[float, float], rng: np.random.Generator | None,
               store: Any = None) -> tuple[torch.Tensor, bool]:
        """(embedding (D,) float32, present) of ``row`` for a window in file seconds.

        With ``rng`` a frame-level teacher draws one uniform number (the random pick among the
        frames inside the window); ``lookup_batch`` with that number gives the same answer.
        """
        if self.frames is None and self._array is not None:  # clip level in RAM: a plain row copy
            return torch.from_numpy(self._array[row].copy()), bool(self.mask[row])
        u = None if rng is None or self.frames is None else np.array([rng.random()])
        emb, present = self.lookup_batch(np.array([row]), np.array([window], np.float64), u, store)
        return emb[0], bool(present[0])

    def lookup_batch(self, rows: np.ndarray, windows: np.ndarray, u: np.ndarray | None = None,
                     store: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, D) float32, present (B,) bool) of ``rows`` for windows (B, 2) in seconds.

        ``u`` (B,) uniform [0, 1) numbers pick a random frame among those inside each window
        (training); None picks the first. Missing rows/frames give zeros and False.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.frames is None:
            emb = self._array[rows] if self._array is not None else self._read(rows, None, store)
            return torch.from_numpy(emb), torch.from_numpy(self.mask[rows])
        windows = np.asarray(windows, np.float64).reshape(-1, 2)
        if self.policy == "overlap":
            slots = self.pick_slots(rows, windows, u)
            ok = slots >= 0
            full = bool(ok.all())
        else:
            slots, ok, full = self._inside(rows, windows, u)
        take = slots if full else np.where(ok, slots, 0)
        if self._array is None:
            emb = self._read(rows, take, store)
        else:  # one flat gather: rows * K + slot indexes the (N * K, D) view
            emb = np.take(self._array.reshape(-1, self.dim), rows * self.frames + take, axis=0)
        if not full:
            emb[~ok] = 0.0
        return torch.from_numpy(emb), torch.from_numpy(ok)

    def pick_slots(self, rows: np.ndarray, windows: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """Vectorised :func:`pick_slot` over a batch: the slot of each row (-1: none present)."""
        if self.policy == "overlap":
            present = self.mask[rows]
            times = self.times[rows]
            overlap = np.minimum(times[..., 1], windows[:, 1:]) - np.maximum(times[..., 0], windows[:, :1])
            overlap[~present | np.isnan(overlap)] = -np.inf
            slots = overlap.argmax(1)
            hit = overlap[np.arange(len(rows)), slots] > 0
            if not hit.all():  # nearest present slot to the window centre (or the first present)
                slots = np.where(hit, slots, self._nearest(rows, windows, present))
            return slots
        slots, ok, full = self._inside(rows, windows, u)
        return slots if full else np.where(ok, slots, -1)

    def _inside(self, rows: np.ndarray, windows: np.ndarray, u: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Image policy: a frame inside the window (the ``u``-quantile among them, else the
        first), else the frame nearest the window centre. Returns (slots, rows with a present
        frame, whether all have one); a row without frames gets an arbitrary slot there.

        About fifteen numpy calls on (B, K) arrays whatever the batch holds: at training batch
        sizes their fixed cost, not the data, is what a lookup pays.
        """
        centre_half = windows @ _CENTRE_HALF  # (B, 2): centre, half width
        dist = self._mid[rows]  # a fresh array: the maths below runs in place
        np.abs(np.subtract(dist, centre_half[:, :1], out=dist), out=dist)
        inside = dist <= centre_half[:, 1:] + 1e-6
        seen = np.dot(inside, self._upper)  # running count of frames inside (faster than cumsum)
        count = seen[:, -1]
        rank = np.zeros(1, np.float32) if u is None else np.floor(u * count)
        slots = np.where(count > 0, (seen > rank[:, None]).argmax(1), dist.argmin(1))
        if self._all_present:
            return slots, np.ones(len(rows), bool), True
        present = self._any[rows]
        return slots, present, bool(present.all())

    def _nearest(self, rows: np.ndarray, windows: np.ndarray, present: np.ndarray) -> np.ndarray:
        dist = np.abs(self.times[rows].mean(-1) - windows.mean(1, keepdims=True))
        dist[~present | np.isnan(dist)] = np.inf
        near = dist.argmin(1)
        first = np.where(present.any(1), present.argmax(1), -1)
        return np.where(np.isfinite(dist[np.arange(len(rows)), near]), near, first)

    def _read(self, rows: np.ndarray, slots: np.ndarray | None, store: Any) -> np.ndarray:
        # The embedding array alone: times and masks are in RAM already, and skipping their
        # (compressed) reads makes a lazy batch ~10x cheaper (benchmarks/bench_distill_step.py).
        data = store.teacher(self.key).embedding.read_rows(rows)
        data = data if slots is None else data[np.arange(len(rows)), slots]
        return np.ascontiguousarray(data, dtype=np.float32)
