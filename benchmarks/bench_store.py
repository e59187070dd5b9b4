"""Store throughput: Zarr (several codecs / chunk sizes) vs HDF5 vs a numpy memmap, same data.

For N rows of D=512 float16 embeddings, with K=1 (clip-level, (N, D)) and K=8 frames
((N, 8, D)), each layout is written through the Store API (``write_rows`` per chunk, done
ledger included) and read back three ways: random batches of 256 rows in random order
(``read_rows``, as a shuffling DataLoader asks), the same batches sorted, and a full scan
(``load_teacher``). Every read returns float32, as the trainer gets it. The baseline is a
numpy memmap of the same float16 array read the same way, measured in the same run; the
JSON on stdout gives each number and its ratio to the memmap.

The data imitate post-ReLU CNN features (about half zeros), which is what makes compression
worth measuring. All reads hit a warm page cache (the data were just written), the same for
every layout; cold-disk numbers depend on the machine and are not measured here.

    python benchmarks/bench_store.py --rows 20000 > store.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store

# (name, file suffix, compression, chunk_rows)
LAYOUTS: list[tuple[str, str, str, int]] = [
    ("zarr-none-256", ".zarr", "none", 256),
    ("zarr-lz4-256", ".zarr", "lz4", 256),
    ("zarr-zstd-256", ".zarr", "zstd", 256),
    ("zarr-none-1024", ".zarr", "none", 1024),
    ("hdf5-none-256", ".h5", "none", 256),
    ("hdf5-lzf-256", ".h5", "lzf", 256),
]


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _data(rows: int, frames: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (rows, dim) if frames == 1 else (rows, frames, dim)
    return np.maximum(rng.standard_normal(shape, dtype=np.float32), 0).astype(np.float16)


def _batches(rows: int, count: int, size: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(rows, size=size, replace=False) for _ in range(count)]


def _manifest(rows: int) -> Manifest:
    return Manifest.from_records(ClipRecord(id=f"c{i}", path=f"/v/{i}.mp4", label="a") for i in range(rows))


def bench_memmap(tmp: Path, data: np.ndarray, batches: list[np.ndarray]) -> dict[str, float]:
    path = tmp / "baseline.npy"

    def write() -> None:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=data.dtype, shape=data.shape)
        for start in range(0, len(data), 256):
            mm[start:start + 256] = data[start:start + 256]
        mm.flush()
        del mm

    write_s = _timed(write)
    mm = np.load(path, mmap_mode="r")
    unsorted_s = _timed(lambda: [mm[b].astype(np.float32) for b in batches])
    sorted_s = _timed(lambda: [mm[np.sort(b)].astype(np.float32) for b in batches])
    scan_s = _timed(lambda: [mm[s:s + 8192].astype(np.float32) for s in range(0, len(mm), 8192)])
    return _rates(data, batches, write_s, unsorted_s, sorted_s, scan_s, path.stat().st_size)


def bench_store(tmp: Path, layout: tuple[str, str, str, int], data: np.ndarray, frames: int,
                batches: list[np.ndarray]) -> dict[str, float]:
    name, suffix, compression, chunk_rows = layout
    path = tmp / f"{name}{suffix}"
    n, dim = len(data), data.shape[-1]
    store = create_store(path, _manifest(n), chunk_rows=chunk_rows, compression=compression)
    key = "image/bench"
    store.create_teacher(key, dim, None if frames == 1 else frames, "float16", {"arch": "bench"})
    mask = np.ones((chunk_rows,) if frames == 1 else (chunk_rows, frames), dtype=bool)
    times = np.zeros((chunk_rows, frames, 2))

    def write() -> None:
        for rows in store.shard_slices():
            count = rows.stop - rows.start
            store.write_rows(key, rows, data[rows], times[:count], mask[:count])

    write_s = _timed(write)
    store.close()
    from ccl_cache.store import open_store

    store = open_store(path)
    unsorted_s = _timed(lambda: [store.read_rows(key, b) for b in batches])
    sorted_s = _timed(lambda: [store.read_rows(key, np.sort(b)) for b in batches])
    scan_s = _timed(lambda: store.load_teacher(key))
    check = store.read_rows(key, batches[0])[0]
    assert np.array_equal(check, data[batches[0]].astype(np.float32)), f"{name}: read back differs"
    size = store.size_bytes()
    store.close()
    return _rates(data, batches, write_s, unsorted_s, sorted_s, scan_s, size)


def _rates(data: np.ndarray, batches: list[np.ndarray], write_s: float, unsorted_s: float, sorted_s: float,
           scan_s: float, size: int) -> dict[str, float]:
    rows_read = sum(len(b) for b in batches)
    mb = data.nbytes / 1e6
    return {
        "write_MBps": mb / write_s,
        "random_unsorted_rows_per_s": rows_read / unsorted_s,
        "random_sorted_rows_per_s": rows_read / sorted_s,
        "scan_MBps": mb / scan_s,
        "size_MB": size / 1e6,
    }


def run(rows: int, dim: int, frames_list: list[int], batch: int, n_batches: int,
        tmp_root: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": rows, "dim": dim, "batch": batch, "batches": n_batches, "layouts": {}}
    for frames in frames_list:
        data = _data(rows, frames, dim)
        batches = _batches(rows, n_batches, batch)
        tmp = Path(tempfile.mkdtemp(prefix="bench_store_", dir=tmp_root))
        try:
            base = bench_memmap(tmp, data, batches)
            per = {"memmap": base}
            for layout in LAYOUTS:
                per[layout[0]] = bench_store(tmp, layout, data, frames, batches)
                print(f"K={frames} {layout[0]}: done", file=sys.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for name, numbers in per.items():
            numbers.update({f"{k}_vs_memmap": round(v / base[k], 3) for k, v in list(numbers.items())
                            if k != "size_MB"})
            per[name] = {k: round(v, 2) if not k.endswith("_vs_memmap") else v for k, v in numbers.items()}
        result["layouts"][f"K={frames}"] = per
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--frames", default="1,8", help="comma-separated K values")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--tmp", default=None, help="directory for the temporary stores")
    args = parser.parse_args()
    frames = [int(k) for k in args.frames.split(",")]
    print(json.dumps(run(args.rows, args.dim, frames, args.batch, args.batches, args.tmp), indent=2))


if __name__ == "__main__":
    main()
