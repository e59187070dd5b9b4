"""What the store's checksums cost: one teacher array written and read with and without them.

For each backend (Zarr with ``crc32c``, HDF5 with ``fletcher32``), a store with checksums (as
``create_store`` makes them) and one without (``checksums=False``, as stores were written before)
get the same N x 512 float16 teacher through ``write_rows`` (embedding, times, mask, done); then
its embedding array is read whole (every chunk checked) and in random 256-row batches (as a
lazily read teacher is: each chunk is checked the first time it is touched), the teacher is read
by ``load_teacher`` (embedding, times and mask) and the store by ``verify_store``. Each figure is the best of ``--repeat`` rounds,
the two variants alternating in every round, so that both see the same machine load; ``*_cpu_s``
is the process's CPU time (all threads), steadier than wall time on a loaded machine. Reads hit
a warm page cache (the data were just written).

    python benchmarks/bench_checksums.py --rows 10000 > checksums.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.store import create_store, open_store, verify_store

KEY = "image/bench"


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all its threads, zarr's I/O thread included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def one_round(tmp: Path, suffix: str, checksums: bool, data: np.ndarray, batches: list[np.ndarray]) -> dict[str, float]:
    path = tmp / f"{'crc' if checksums else 'plain'}{suffix}"
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    manifest = Manifest.from_records(ClipRecord(id=f"c{i}", path=f"/v/{i}.mp4", label="a") for i in range(len(data)))
    store = create_store(path, manifest, chunk_rows=256, checksums=checksums)
    store.create_teacher(KEY, data.shape[1], None, "float16", {"arch": "bench"})
    mask, times = np.ones(256, dtype=bool), np.zeros((256, 2))

    def write() -> None:
        for rows in store.shard_slices():
            count = rows.stop - rows.start
            store.write_rows(KEY, rows, data[rows], times[:count], mask[:count])

    out = dict(zip(("write_rows_s", "write_rows_cpu_s"), _timed(write)))
    store.close()
    # Each read on a freshly opened store: no chunk checked yet, as in a new process.
    for name, read in (("embedding_read", lambda s: s.teacher(KEY).embedding[:]),
                       ("embedding_random_batches", lambda s: [s.teacher(KEY).embedding.read_rows(b) for b in batches]),
                       ("load_teacher", lambda s: s.load_teacher(KEY))):
        with open_store(path) as opened:
            out.update(zip((f"{name}_s", f"{name}_cpu_s"), _timed(lambda: read(opened))))
    out.update(zip(("verify_s", "verify_cpu_s"), _timed(lambda: verify_store(path))))
    return out


def run(rows: int, dim: int, repeat: int, n_batches: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    data = np.maximum(rng.standard_normal((rows, dim), dtype=np.float32), 0).astype(np.float16)
    batches = [rng.choice(rows, size=256, replace=False) for _ in range(n_batches)]
    result: dict[str, Any] = {"rows": rows, "dim": dim, "dtype": "float16", "MB": round(data.nbytes / 1e6, 2),
                              "repeat": repeat, "random_batches": n_batches, "backends": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_checksums_"))
    try:
        for backend, suffix in (("zarr", ".zarr"), ("hdf5", ".h5")):
            best: dict[bool, dict[str, float]] = {}
            for _ in range(repeat):
                for checksums in (False, True):
                    got = one_round(tmp, suffix, checksums, data, batches)
                    best[checksums] = {k: min(v, best.get(checksums, {}).get(k, v)) for k, v in got.items()}
            result["backends"][backend] = {
                "without": {k: round(v, 4) for k, v in best[False].items()},
                "with": {k: round(v, 4) for k, v in best[True].items()},
                "ratio": {k: round(best[True][k] / best[False][k], 3) for k in best[True]},
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(run(args.rows, args.dim, args.repeat, args.batches), indent=2))


if __name__ == "__main__":
    main()
