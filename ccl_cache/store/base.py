"""The backend-neutral store: clips table, teacher embeddings, done ledger, failures, students.

One class, :class:`Store`, holds every rule of schema v1 (README.md, "The store"); the backends
(`zarr_backend`, `hdf5_backend`) only read and write arrays. Rows are clips in manifest order.

Concurrency rule: every per-row array is chunked by ``chunk_rows`` rows and writes must cover
whole chunks (or end at the last row), so writers that own disjoint chunk ranges (shards, see
``shard_slices``) never write the same chunk of any array — data, done ledger, clip info or
failure ledger.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ccl_cache.errors import ConfigError, StoreError, StoreLockedError, StoreMismatchError
from ccl_cache.store import lease as lease_mod
from ccl_cache.store.backend import Backend
from ccl_cache.store.damage import WrittenChunks
from ccl_cache.store.views import ClipTable, LazyArray, TeacherArrays
from ccl_cache.store.schema import (
    CHECKSUMS_ATTR, CLIP_COLUMNS, EMBEDDING_DTYPES, FAILURE_COLUMNS, FILL, RESERVED_ROOTS, diff_fingerprints,
    new_generation, normalize_path, plain_json, shard_slices, teacher_path, utc_now, validate_run,
)

_BLOCK_BYTES = 64 * 1024 * 1024  # scans read about this much per step: bounded memory on 200k rows
_MAX_CHUNK_BYTES = 16 * 1024 * 1024  # generic arrays (frame caches) keep chunks below this
_WRITING = ".writing-"  # a student run is written under this prefix, then renamed into place
_ROOT_KEYS = frozenset({"format", "schema_version", "n", "chunk_rows", "manifest_sha256", "created", "generation",
                        CHECKSUMS_ATTR})

class Store:
    """An open ccl-cache store (use :func:`open_store` / :func:`create_store`, not this class)."""

    def __init__(self, backend: Backend, attrs: dict[str, Any]) -> None:
        self._b = backend
        self.path = backend.path
        self.mode = backend.mode
        self.backend = backend.name
        self.attrs = attrs
        self.n = int(attrs["n"])
        self.chunk_rows = int(attrs["chunk_rows"])
        self.compression = str(attrs.get("compression", backend.default_compression))
        # None: written before checksums existed; new arrays then stay without, like the others.
        self.checksums: str | None = attrs.get(CHECKSUMS_ATTR)
        backend.checksums = self.checksums is not None
        self._written = WrittenChunks(backend, strict=backend.checksums or backend.name == "hdf5")
        self._clips: ClipTable | None = None
        self._leases: list[lease_mod.Lease] = []

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        try:
            self._b.close()  # flushed and closed before the lease lets another writer in
        finally:
            for held in self._leases:
                held.release()
            self._leases.clear()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, backend={self.backend}, n={self.n}, mode={self.mode})"

    def flush(self) -> None:
        self._b.flush()

    def size_bytes(self) -> int:
        return self._b.size_bytes()

    def acquire_lease(self, force: bool = False, shard: str | None = None,
                      command: str | None = None) -> lease_mod.Lease:
        """Writer lease for the whole store or one shard ("I/N"); released by close()."""
        self._check_writable()
        held = lease_mod.acquire_lease(self.path, shard=shard, force=force, command=command)
        self._leases.append(held)
        return held

    def release_lease(self) -> None:
        for held in self._leases:
            held.release()
        self._leases.clear()

    def leases(self) -> list[lease_mod.LeaseInfo]:
        return lease_mod.read_leases(self.path)

    def check_no_writer(self, reader: str) -> None:
        """StoreLockedError when a live process holds a writer lease: ``reader`` (a command) would
        read arrays that are being written or replaced (``extract --overwrite``)."""
        live = [lease for lease in self.leases() if lease_mod.is_alive(lease)]
        if live:
            raise StoreLockedError(
                f"{self.path}: {live[0].describe()} is writing this store; {reader} would read arrays that "
                "are being written or replaced. Wait for it to finish (or stop it), then run again"
            )

    def _check_writable(self) -> None:
        if self.mode != "r+":
            raise StoreError(f"{self.path}: opened read-only; open it with open_store(path, mode='r+') to write")

    # ----------------------------------------------------------------- rows and chunks
    def _check_rows(self, rows: slice, what: str) -> tuple[int, int]:
        """Validate a write slice: chunk-aligned start, and end at a chunk boundary or at n."""
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise StoreError(f"{self.path}: {what}: rows must be a contiguous slice like slice(0, 256), got {rows!r}")
        start = 0 if rows.start is None else int(rows.start)
        stop = self.n if rows.stop is None else int(rows.stop)
        if not 0 <= start < stop <= self.n:
            raise StoreError(f"{self.path}: {what}: rows {start}:{stop} are outside the store's 0:{self.n}")
        cr = self.chunk_rows
        if start % cr or (stop % cr and stop != self.n):
            raise StoreError(
                f"{self.path}: {what}: rows {start}:{stop} are not chunk-aligned: a write must start "
                f"at a multiple of chunk_rows={cr} and end at a multiple of it or at n={self.n}, so "
                f"that each writer owns whole chunks; write in batches of store.chunk_rows rows"
            )
        return start, stop

    def shard_slices(self, shard: str | None = None) -> list[slice]:
        """One slice per chunk owned by ``shard`` ("I/N", 0-based) — all chunks when None."""
        return shard_slices(self.n, self.chunk_rows, shard)

    def _blocks(self, row_bytes: int) -> Iterator[tuple[int, int]]:
        """Chunk-aligned (start, stop) blocks of about _BLOCK_BYTES for scans."""
        step = max(1, _BLOCK_BYTES // max(1, row_bytes * self.chunk_rows)) * self.chunk_rows
        for start in range(0, self.n, step):
            yield start, min(self.n, start + step)

    # ----------------------------------------------------------------- clips
    @property
    def clips(self) -> ClipTable:
        if self._clips is None:
            self._clips = ClipTable(**{c: self._b.read(f"clips/{c}", slice(None)) for c in CLIP_COLUMNS})
        return self._clips

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self._b.read("classes", slice(None))]

    def record_clips(self, rows: Any, duration: np.ndarray | None = None,
                     has_audio: np.ndarray | None = None) -> None:
        """Record what extraction learnt about the media of ``rows`` (slice or ints).

        Each touched chunk of the clip columns is rewritten whole: concurrent shard writers must
        only pass rows of chunks they own (as for every write).
        """
        self._check_writable()
        sel = np.arange(*rows.indices(self.n)) if isinstance(rows, slice) else rows
        idx = _row_indices(self.path, "clips", sel, self.n)
        order = np.argsort(idx, kind="stable")
        columns: dict[str, np.ndarray] = {}
        for name, values, dtype in (("duration", duration, np.float64), ("has_audio", has_audio, np.bool_)):
            if values is not None:
                arr = np.asarray(values, dtype=dtype).reshape(-1)
                if len(arr) != len(idx):
                    raise StoreError(f"{self.path}: record_clips {name}: {len(arr)} values for {len(idx)} rows")
                columns[name] = arr[order]
        if len(np.unique(idx)) != len(idx):
            raise StoreError(f"{self.path}: record_clips: rows repeat; give each row once")
        if columns:
            self._scatter("clips", idx[order], columns)
        self._clips = None

    # ----------------------------------------------------------------- teachers
    def teacher_keys(self) -> list[str]:
        keys = []
        for modality in self._b.children("teachers"):
            for name in self._b.children(f"teachers/{modality}"):
                if "fingerprint" in self._b.get_attrs(f"teachers/{modality}/{name}"):
                    keys.append(f"{modality}/{name}")  # groups without it are unfinished creations
        return keys

    def create_teacher(self, key: str, dim: int, frames: int | None, dtype: str = "float16",
                       fingerprint: dict[str, Any] | None = None, overwrite: bool = False) -> None:
        """Create a teacher's arrays; the same fingerprint again is a no-op (resume).

        A different fingerprint (or dim/frames/dtype) raises StoreMismatchError naming each
        differing field, unless ``overwrite`` replaces the stored teacher.
        """
        self._check_writable()
        group = teacher_path(key)
        if int(dim) < 1 or (frames is not None and int(frames) < 1):
            raise ConfigError(f"teacher {key}: dim={dim} and frames={frames} must be >= 1 (frames may be None)")
        if dtype not in EMBEDDING_DTYPES:
            raise ConfigError(f"teacher {key}: dtype {dtype!r} is not one of {', '.join(EMBEDDING_DTYPES)}")
        wanted = {"fingerprint": plain_json(fingerprint or {}), "dim": int(dim),
                  "frames": None if frames is None else int(frames), "dtype": dtype}
        # The lock makes concurrent shard writers agree on one creation (and on resumes).
        with lease_mod._locked(lease_mod.lease_dir(self.path)):
            if self._b.has(group):
                stored = self._b.get_attrs(group)
                if "fingerprint" in stored and not overwrite:
                    self._refuse_mismatch(key, stored, wanted)
                    return
                self._b.delete(group)  # overwrite, or an unfinished creation (crash mid-way)
            self._create_teacher_arrays(group, wanted)
            layout = {k: v for k, v in wanted.items() if k != "fingerprint"}
            self._b.update_attrs(group, {**layout, "created": utc_now(), "generation": new_generation()})
            self._b.flush()
            # The fingerprint marks the creation complete, so it is written alone and last: a
            # writer killed before it leaves an unfinished group, which the next run recreates.
            self._b.update_attrs(group, {"fingerprint": wanted["fingerprint"]})
            self._b.flush()

    def _refuse_mismatch(self, key: str, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
        lines = [f"{n}: {stored.get(n)!r} (store) vs {wanted[n]!r} (now)"
                 for n in ("dim", "frames", "dtype") if stored.get(n) != wanted[n]]
        lines += diff_fingerprints(stored.get("fingerprint", {}), wanted["fingerprint"])
        if lines:
            raise StoreMismatchError(
                f"{self.path}: teacher {key} is stored with another configuration:\n  "
                + "\n  ".join(lines)
                + "\nMixing them would corrupt the cache; pass --overwrite (overwrite=True) to "
                "replace the stored teacher, or write to another store"
            )

    def _create_teacher_arrays(self, group: str, meta: dict[str, Any]) -> None:
        n, cr, dim, frames = self.n, self.chunk_rows, meta["dim"], meta["frames"]
        k = frames or 1
        emb_shape = (n, dim) if frames is None else (n, frames, dim)
        mask_shape = (n,) if frames is None else (n, frames)
        ledger = self._b.ledger_compression
        self._b.create_array(f"{group}/embedding", emb_shape, meta["dtype"], (cr,) + emb_shape[1:], 0.0,
                             self.compression)
        self._b.create_array(f"{group}/times", (n, k, 2), "float64", (cr, k, 2), math.nan, ledger)
        self._b.create_array(f"{group}/mask", mask_shape, "bool", (cr,) + mask_shape[1:], False, ledger)
        self._b.create_array(f"{group}/done", (n,), "bool", (cr,), False, ledger)

    def _teacher_meta(self, key: str) -> dict[str, Any]:
        group = teacher_path(key)
        attrs = self._b.get_attrs(group) if self._b.has(group) else {}
        if "fingerprint" not in attrs:
            known = ", ".join(self.teacher_keys()) or "(none)"
            raise StoreError(
                f"{self.path}: no teacher {key!r} in the store (teachers: {known}); run `ccl-cache extract` for it"
            )
        return attrs

    def generation(self, keys: Sequence[str] = ()) -> dict[str, Any]:
        """What identifies this store's contents and teachers ``keys`` now: their generation ids
        (their creation times in stores written before generations existed). A reader records it
        when it loads and compares before it writes back: a difference means the arrays it read
        were replaced under it (``extract --overwrite``)."""
        root = self._b.get_attrs("")
        out: dict[str, Any] = {"store": root.get("generation", root.get("created"))}
        for key in keys:
            attrs = self._b.get_attrs(teacher_path(key)) if self._b.has(teacher_path(key)) else {}
            out[key] = attrs.get("generation", attrs.get("created"))
        return out

    def teacher(self, key: str) -> TeacherArrays:
        meta, group = self._teacher_meta(key), teacher_path(key)
        return TeacherArrays(
            key=key, embedding=LazyArray(self, f"{group}/embedding"), times=LazyArray(self, f"{group}/times"),
            mask=LazyArray(self, f"{group}/mask"), done=LazyArray(self, f"{group}/done"),
            fingerprint=meta["fingerprint"], dim=int(meta["dim"]),
            frames=None if meta.get("frames") is None else int(meta["frames"]), dtype=str(meta["dtype"]),
        )

    def write_rows(self, key: str, rows: slice, embedding: np.ndarray, times: np.ndarray | None,
                   mask: np.ndarray) -> None:
        """Write a chunk-aligned batch of rows, then mark them done.

        The done ledger is written (and, for HDF5, flushed) only after the data it covers, so a
        writer killed at any moment never leaves a row marked done without its data.
        """
        self._check_writable()
        meta, group = self._teacher_meta(key), teacher_path(key)
        start, stop = self._check_rows(rows, f"write_rows({key})")
        emb, tms, msk = _check_batch(key, meta, stop - start, embedding, times, mask)
        sel = slice(start, stop)
        self._b.write(f"{group}/embedding", sel, emb)
        self._b.write(f"{group}/times", sel, tms)
        self._b.write(f"{group}/mask", sel, msk)
        self._b.flush()
        self._b.write(f"{group}/done", sel, np.ones(stop - start, dtype=bool))
        self._b.flush()

    def read_rows(self, key: str, index: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embedding float32, times, mask) of rows ``index`` in the requested order."""
        self._teacher_meta(key)  # clear error for an unknown key
        group = teacher_path(key)
        emb = self.read_array_rows(f"{group}/embedding", index).astype(np.float32, copy=False)
        return emb, self.read_array_rows(f"{group}/times", index), self.read_array_rows(f"{group}/mask", index)

    def load_teacher(self, key: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All rows in RAM: (embedding, times, mask), read block by block.

        Random batches from RAM are 10-100x faster than from chunked storage (see
        benchmarks/bench_store.py); ``dtype="float16"`` halves the memory of large frame teachers.
        """
        t = self.teacher(key)
        emb = np.empty(t.embedding.shape, dtype=np.dtype(dtype))
        row_bytes = int(np.prod(t.embedding.shape[1:])) * emb.itemsize
        for start, stop in self._blocks(row_bytes):
            emb[start:stop] = t.embedding[start:stop]
        return emb, t.times[:], t.mask[:]

    def todo(self, key: str, shard: str | None = None) -> list[slice]:
        """Chunk slices of ``shard`` with any row not done yet (every chunk if the teacher is new)."""
        slices = self.shard_slices(shard)
        if key not in self.teacher_keys():
            return slices
        done = np.asarray(self.teacher(key).done[:], dtype=bool)  # one read, not one per chunk
        return [s for s in slices if not done[s].all()]

    # ----------------------------------------------------------------- generic row reads
    def _read(self, path: str, selection: Any) -> np.ndarray:
        """A backend read, refused where a teacher's done rows lost their chunk."""
        self._written.check_rows(path, selection)
        return self._b.read(path, selection)

    def read_array_rows(self, path: str, index: Any) -> np.ndarray:
        """Rows ``index`` (slice, int, bool mask or int array; order kept, duplicates allowed)."""
        path = normalize_path(path)
        n = self._b.array_info(path)[0][0]
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return self._read(path, slice(start, stop))
            index = np.arange(start, stop, step)
        idx = _row_indices(self.path, path, index, n)
        if idx.size == 0:
            return self._b.read(path, slice(0, 0))
        uniq, inverse = np.unique(idx, return_inverse=True)
        self._written.check_rows(path, uniq)
        span = int(uniq[-1] - uniq[0]) + 1
        if span <= 2 * len(uniq):  # dense: one contiguous read beats a scattered selection
            data = self._b.read(path, slice(int(uniq[0]), int(uniq[-1]) + 1))[uniq - uniq[0]]
        else:
            data = self._b.read_sorted_rows(path, uniq)
        if len(uniq) == len(idx) and np.array_equal(uniq, idx):
            return data
        return data[inverse.reshape(-1)]

    # ----------------------------------------------------------------- failures
    def update_rows(self, path: str, chunk: slice, rows: Any, values: Any) -> None:
        """Set ``values`` at the absolute ``rows`` of generic array ``path``, all inside ``chunk``
        (rows a writer owns whole): the chunk is read, changed and written back in one write, so
        concurrent writers of other chunks are never touched."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        if rows.min() < chunk.start or rows.max() >= chunk.stop:
            raise StoreError(f"{self.path}: rows {rows.min()}..{rows.max()} are not inside {chunk.start}:{chunk.stop} "
                             f"of {path!r}; this is a bug in the writer, please report it")
        column = self.array(path)
        block = np.array(column[chunk])
        block[rows - chunk.start] = values
        column[chunk] = block

    def record_failure(self, row: int, stage: str, reason: str, message: str,
                       coverage: float | None = None) -> None:
        """Note why clip ``row`` failed (or is partial: ``coverage`` < 1) in the failure ledger."""
        self._check_writable()
        if not 0 <= int(row) < self.n:
            raise StoreError(f"{self.path}: record_failure: row {row} is outside 0:{self.n}")
        values = {"stage": str(stage), "reason": str(reason), "message": str(message)[:4000],
                  "time": time.time(), "coverage": math.nan if coverage is None else float(coverage)}
        self._scatter("failures", np.array([int(row)]), {k: np.array([v]) for k, v in values.items()})

    def clear_failures(self, rows: Any) -> None:
        """Forget the failures of ``rows`` (slice, bool mask or ints), e.g. after a retry succeeded."""
        self._check_writable()
        idx = np.unique(_row_indices(self.path, "failures", rows if not isinstance(rows, slice)
                                     else np.arange(*rows.indices(self.n)), self.n))
        fills = {c: np.full(len(idx), FILL[t], dtype=object if t == "str" else t) for c, t in FAILURE_COLUMNS.items()}
        self._scatter("failures", idx, fills)

    def failure_stages(self, rows: Any) -> np.ndarray:
        """The ledger's stage of each of ``rows`` ("" = no failure recorded)."""
        return self.read_array_rows("failures/stage", rows)

    def failures(self) -> list[dict[str, Any]]:
        """Every failure record: row, id, stage, reason, message, time (unix s), coverage (or None)."""
        rows = self.failure_rows()
        if rows.size == 0:
            return []
        cols = {c: self.read_array_rows(f"failures/{c}", rows) for c in FAILURE_COLUMNS}
        ids = self.clips.id
        out = []
        for j, row in enumerate(rows):
            cov = float(cols["coverage"][j])
            out.append({"row": int(row), "id": str(ids[row]), "stage": str(cols["stage"][j]),
                        "reason": str(cols["reason"][j]), "message": str(cols["message"][j]),
                        "time": float(cols["time"][j]), "coverage": None if math.isnan(cov) else cov})
        return out

    def failure_rows(self) -> np.ndarray:
        found = [np.flatnonzero(np.isfinite(self._b.read("failures/time", slice(a, b)))) + a
                 for a, b in self._blocks(8)]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _scatter(self, group: str, idx: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Write per-row values at sorted unique ``idx`` by rewriting each touched chunk whole."""
        chunk_ids = idx // self.chunk_rows
        for c in np.unique(chunk_ids):
            start, stop = int(c) * self.chunk_rows, min(self.n, (int(c) + 1) * self.chunk_rows)
            take = chunk_ids == c
            local = idx[take] - start
            for name, values in columns.items():
                block = self._b.read(f"{group}/{name}", slice(start, stop))
                block[local] = values[take]
                self._b.write(f"{group}/{name}", slice(start, stop), block)
        self._b.flush()

    # ----------------------------------------------------------------- students
    def student_runs(self) -> list[str]:
        # "created" is written after the embeddings: a group without it is an unfinished write
        # (from before writes went to a temporary name, _WRITING, which run names cannot start with).
        return [r for r in self._b.children("students") if not r.startswith(_WRITING)
                and self._b.has(f"students/{r}/embedding") and "created" in self._b.get_attrs(f"students/{r}")]

    def write_student(self, run: str, embedding: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Store a trained student's (N, D) embeddings of every clip (replaces an earlier run)."""
        self._check_writable()
        validate_run(run)
        emb = np.asarray(embedding, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != self.n:
            raise StoreError(f"{self.path}: student {run}: embedding shape {emb.shape}, expected ({self.n}, D)")
        group, tmp = f"students/{run}", f"students/{_WRITING}{run}"
        if self._b.has(tmp):
            self._b.delete(tmp)  # left by a killed write
        self._b.create_array(f"{tmp}/embedding", emb.shape, "float32", (self.chunk_rows, emb.shape[1]), 0.0,
                             self.compression)
        for start, stop in self._blocks(emb.shape[1] * 4):
            self._b.write(f"{tmp}/embedding", slice(start, stop), emb[start:stop])
        self._b.update_attrs(tmp, {**plain_json(attrs or {}), "dim": int(emb.shape[1]), "created": utc_now()})
        self._b.flush()
        # Swapped in only now: an earlier run stays whole while the new one is written.
        if self._b.has(group):
            self._b.delete(group)
        self._b.move(tmp, group)
        self._b.flush()

    def student(self, run: str) -> np.ndarray:
        if run not in self.student_runs():
            known = ", ".join(self.student_runs()) or "(none)"
            raise StoreError(f"{self.path}: no student run {run!r} (runs: {known}); run `ccl-cache embed` first")
        return self._b.read(f"students/{run}/embedding", slice(None)).astype(np.float32, copy=False)

    def student_attrs(self, run: str) -> dict[str, Any]:
        return self._b.get_attrs(f"students/{run}")

    # ----------------------------------------------------------------- generic arrays
    def create_array(self, path: str, shape: tuple[int, ...], dtype: Any, chunk_rows: int | None = None,
                     overwrite: bool = False, compression: str | None = None, fill_value: Any = None) -> LazyArray:
        """A new array outside the schema's groups (e.g. a frame cache under ``frames/``).

        Chunks hold ``chunk_rows`` rows (default: the store's, divided down to keep chunks under
        16 MiB while still dividing it, so shard writers keep owning whole chunks).
        """
        self._check_writable()
        path = normalize_path(path)
        if path.split("/")[0] in RESERVED_ROOTS:
            raise ConfigError(f"{path!r} is inside a schema group ({', '.join(sorted(RESERVED_ROOTS))}); "
                              "use another top-level name such as 'frames/...'")
        shape = tuple(int(s) for s in shape)
        kind = "str" if dtype in (str, "str") else np.dtype(dtype).name
        if self._b.has(path):
            if not overwrite:
                raise StoreError(f"{self.path}: {path!r} already exists; pass overwrite=True to replace it")
            self._b.delete(path)
        rows = chunk_rows or self._default_chunk_rows(shape, kind)
        fill = FILL.get(kind, 0) if fill_value is None else fill_value
        self._b.create_array(path, shape, kind, (max(1, rows),) + shape[1:], fill,
                             compression or (self._b.ledger_compression if kind == "str" else self.compression))
        return LazyArray(self, path)

    def freed_by_delete(self, path: str) -> int:
        """Disk bytes that :meth:`delete` of ``path`` would give back (0 for a missing node;
        HDF5 keeps the space of deleted datasets until h5repack)."""
        path = normalize_path(path)
        return self._b.freed_by_delete(path) if self._b.has(path) else 0

    def delete(self, path: str) -> None:
        """Remove a node outside the schema's groups (an array or a group and all it holds)."""
        self._check_writable()
        path = normalize_path(path)
        if path.split("/")[0] in RESERVED_ROOTS:
            raise ConfigError(f"{path!r} is inside a schema group ({', '.join(sorted(RESERVED_ROOTS))}); "
                              "only nodes such as 'frames/...' can be deleted")
        if not self._b.has(path):
            raise StoreError(f"{self.path}: no group or array {path!r} to delete")
        self._b.delete(path)
        self._b.flush()

    def _default_chunk_rows(self, shape: tuple[int, ...], kind: str) -> int:
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * (8 if kind == "str" else np.dtype(kind).itemsize)
        fits = [d for d in range(1, self.chunk_rows + 1)
                if self.chunk_rows % d == 0 and d * row_bytes <= _MAX_CHUNK_BYTES]
        return max(fits) if fits else 1

    def generic_arrays(self, prefix: str = "") -> list[str]:
        """Paths of the arrays outside the schema's groups (e.g. ``frames/rgb``)."""
        found: list[str] = []
        for name in self._b.children(prefix):
            path = f"{prefix}/{name}" if prefix else name
            if not prefix and name in RESERVED_ROOTS:
                continue
            found.extend([path] if self._b.is_array(path) else self.generic_arrays(path))
        return found

    def array(self, path: str) -> LazyArray:
        path = normalize_path(path)
        if not self._b.is_array(path):
            raise StoreError(f"{self.path}: no array {path!r} in the store")
        return LazyArray(self, path)

    def has(self, path: str) -> bool:
        return self._b.has(normalize_path(path))

    def get_attrs(self, path: str) -> dict[str, Any]:
        p = str(path).strip("/")
        return self._b.get_attrs(normalize_path(p) if p else "")

    def set_attrs(self, path: str, values: dict[str, Any]) -> None:
        """Merge JSON-compatible ``values`` into a node's attributes (root schema keys excepted)."""
        self._check_writable()
        p = str(path).strip("/")
        if not p and _ROOT_KEYS & set(values):
            raise StoreError(f"{self.path}: root attributes {sorted(_ROOT_KEYS & set(values))} belong to the schema")
        target = normalize_path(p) if p else ""
        self._b.update_attrs(target, plain_json(values))
        self._b.flush()
        if not target:
            self.attrs = self._b.get_attrs("")


def _row_indices(store_path: Path, path: str, index: Any, n: int) -> np.ndarray:
    """Any row selection → int64 indices in [0, n) (negative ints count from the end)."""
    idx = np.asarray(index)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise StoreError(f"{store_path}: {path}: a boolean row mask needs shape ({n},), got {idx.shape}")
        return np.flatnonzero(idx)
    if idx.dtype.kind not in "iu":
        raise StoreError(f"{store_path}: {path}: rows must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise StoreError(f"{store_path}: {path}: row index out of range 0:{n} (min {idx.min()}, max {idx.max()})")
    return np.where(idx < 0, idx + n, idx)


def _check_batch(key: str, meta: dict[str, Any], count: int, embedding: Any, times: Any,
                 mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape-check one write_rows batch and convert it to the stored dtypes."""
    dim, frames = int(meta["dim"]), meta.get("frames")
    k = frames or 1
    emb = np.asarray(embedding)
    emb_shape = (count, dim) if frames is None else (count, frames, dim)
    if emb.shape != emb_shape:
        layout = "rows, frames, dim" if frames else "rows, dim"
        raise StoreError(f"write_rows({key}): embedding shape {emb.shape}, expected {emb_shape} ({layout})")
    tms = np.full((count, k, 2), np.nan) if times is None else np.asarray(times, dtype=np.float64)
    if tms.shape == (count, 2) and k == 1:
        tms = tms[:, None, :]
    if tms.shape != (count, k, 2):
        raise StoreError(f"write_rows({key}): times shape {tms.shape}, expected {(count, k, 2)} (start, end seconds)")
    msk = np.asarray(mask, dtype=bool)
    mask_shape = (count,) if frames is None else (count, frames)
    if frames is not None and msk.shape == (count,):
        msk = np.repeat(msk[:, None], frames, axis=1)  # one flag for the whole clip
    if msk.shape != mask_shape:
        raise StoreError(f"write_rows({key}): mask shape {msk.shape}, expected {mask_shape}")
    return emb.astype(meta["dtype"], copy=False), tms, msk
