"""Scale simulation: a VGGSound-sized store built without media, every stage measured per size.

For each N (default 25k, 50k, 100k, 200k rows) it builds, through the store API alone
(``create_store``, ``create_teacher``, ``record_clips``, ``record_failure``, ``write_rows``), the
store ``ccl-cache extract`` would write for VGGSound with the default teachers: an audio teacher
of one 512-d vector per clip and an image teacher of 8 frames × 512-d per clip, float16, chunks
of the extraction's default batch, 309 classes, a train/test split in VGGSound's proportions and
a small share of clips in the failure ledger (masked, as extraction leaves them). Embeddings are
random but class-structured (a Gaussian centre per class plus noise), so that an IVF index has
the structure real embeddings give it. Paths name files that need not exist. Then it measures:

- ``build``: store creation and writing every row (wall and CPU seconds), bytes on disk;
- ``info``: :func:`ccl_cache.store.summarize` (what ``ccl-cache info`` prints);
- ``splits``: ``usable_rows`` and ``make_splits`` as the trainer calls them;
- ``teachers``: :meth:`TeacherTable.load` of both teachers (time, peak RSS);
- ``dataset``: the trainer's ``ClipDataset`` (clip infos, both teacher tables), then one epoch of
  ``EpochSampler`` batches alone and with the teacher lookups ``ClipDataset.__getitems__`` makes
  (``lookup_batch`` per teacher on random windows: everything but decoding video);
- ``index_flat`` / ``index_ivf``: ``build_index`` over the audio teacher's train rows (flat, and
  IVF with its calibrated nprobe), queries/s and recall@10 against exact search for test-split
  queries;
- ``shards`` / ``merge``: the same rows written as HDF5 shards (``<stem>.shard-I-of-N.h5``, as
  ``extract --shard`` names them), joined by :func:`ccl_cache.store.merge_stores`;
- ``resume``: after a kill at 50 % (the done flags of the second half cleared), reopening the
  store as extraction does, ``Store.todo`` and ``extract.plan.plan_chunks``.

Each measurement runs in its own process, forked from the parent once the parent has imported
every module the stages use (so no stage pays torch's import, and none counts it as its memory);
the child resets its RSS peak (``/proc/self/clear_refs``) and reports ``VmHWM``, so the peak
belongs to that stage alone: ``rss_start_MB`` is its RSS at the fork, ``rss_growth_MB`` the peak
above it. Times are wall seconds and CPU seconds of the measuring process (all its threads),
also split into user and system CPU. The stores of every size are built first (``build`` and
``shards``, once each); then each other stage runs ``--repeats`` rounds, every round over all
sizes in turn, and the fastest round of each (stage, size) is kept: the load others put on a
shared machine drifts over minutes, and interleaving spreads it over the sizes. Growth per
doubling of N is computed on CPU seconds (see FIGURES) between successive sizes and over the
whole range (``overall_growth``); a cost whose overall growth exceeds ``--flag`` (2.3) per
doubling is listed under ``superlinear``.

    python benchmarks/bench_scale.py > scale.json
    python benchmarks/bench_scale.py --sizes 1000,2000 --queries 50 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

AUDIO, IMAGE = "audio/cnn14_emb512", "image/resnet34"  # the extraction's default teachers

# (figure, stage, field, unit, kind): "cost" figures are checked for superlinear growth. Times are
# CPU seconds (user + system, all threads). The system part of the large stages is listed too:
# most of it is page faults, and on a virtual machine the first touch of memory that the guest
# had handed back to the host costs a host fault per page, which depends on what ran before (the
# user/system split comes from tick sampling: meaningless for steps of a few milliseconds).
FIGURES: list[tuple[str, str, str, str, str]] = [
    ("store creation + all rows written", "build", "store_cpu_s", "s", "cost"),
    ("  store creation: system CPU", "build", "store_sys_s", "s", "info"),
    ("  store creation: wall time", "build", "store_s", "s", "info"),
    ("  of which Manifest.from_records", "build", "manifest_cpu_s", "s", "cost"),
    ("  of which create_store + create_teacher", "build", "create_cpu_s", "s", "cost"),
    ("  of which record_clips + write_rows", "build", "write_cpu_s", "s", "cost"),
    ("  of which record_failure", "build", "failures_cpu_s", "s", "cost"),
    ("store on disk", "build", "disk_MB", "MB", "cost"),
    ("store files", "build", "files", "", "cost"),
    ("ccl-cache info (summarize)", "info", "summarize_cpu_s", "s", "cost"),
    ("  summarize: peak RSS above start", "info", "rss_growth_MB", "MB", "cost"),
    ("usable_rows", "splits", "usable_rows_cpu_s", "s", "cost"),
    ("make_splits", "splits", "make_splits_cpu_s", "s", "cost"),
    ("TeacherTable.load, audio + image", "teachers", "load_cpu_s", "s", "cost"),
    ("  TeacherTable.load: user CPU", "teachers", "load_user_s", "s", "info"),
    ("  TeacherTable.load: system CPU", "teachers", "load_sys_s", "s", "info"),
    ("  TeacherTable.load: wall time", "teachers", "load_s", "s", "info"),
    ("  TeacherTable.load: peak RSS above start", "teachers", "rss_growth_MB", "MB", "cost"),
    ("ClipDataset (the trainer's), built", "dataset", "dataset_cpu_s", "s", "cost"),
    ("  ClipDataset: user CPU", "dataset", "dataset_user_s", "s", "info"),
    ("  ClipDataset: system CPU", "dataset", "dataset_sys_s", "s", "info"),
    ("  ClipDataset: peak RSS above start", "dataset", "rss_growth_MB", "MB", "cost"),
    ("epoch: EpochSampler batches alone", "dataset", "sampler_cpu_s", "s", "cost"),
    ("epoch: sampler + teacher lookups", "dataset", "epoch_cpu_s", "s", "cost"),
    ("  lookups per training batch", "dataset", "lookup_us_per_batch", "µs", "info"),
    ("index flat: vectors collected", "index_flat", "collect_cpu_s", "s", "cost"),
    ("index flat: built", "index_flat", "build_cpu_s", "s", "cost"),
    ("  index flat built: user CPU", "index_flat", "build_user_s", "s", "info"),
    ("  index flat built: system CPU", "index_flat", "build_sys_s", "s", "info"),
    ("index flat: peak RSS above start", "index_flat", "rss_growth_MB", "MB", "cost"),
    ("index flat: queries/s", "index_flat", "qps", "q/s", "info"),
    ("index flat: recall@10", "index_flat", "recall@10", "", "info"),
    ("index IVF: built (incl. calibration)", "index_ivf", "build_cpu_s", "s", "cost"),
    ("  index IVF built: system CPU", "index_ivf", "build_sys_s", "s", "info"),
    ("index IVF: peak RSS above start", "index_ivf", "rss_growth_MB", "MB", "cost"),
    ("index IVF: nlist", "index_ivf", "nlist", "", "info"),
    ("index IVF: calibrated nprobe", "index_ivf", "nprobe", "", "info"),
    ("index IVF: queries/s", "index_ivf", "qps", "q/s", "info"),
    ("index IVF: recall@10", "index_ivf", "recall@10", "", "info"),
    ("HDF5 shards written", "shards", "store_cpu_s", "s", "cost"),
    ("merge of the HDF5 shards", "merge", "merge_cpu_s", "s", "cost"),
    ("  merge: peak RSS above start", "merge", "rss_growth_MB", "MB", "cost"),
    ("merged HDF5 store on disk", "merge", "disk_MB", "MB", "cost"),
    ("resume: store reopened (create_store exist_ok)", "resume", "reopen_cpu_s", "s", "cost"),
    ("resume: Store.todo, both teachers", "resume", "todo_cpu_s", "s", "cost"),
    ("resume: plan_chunks", "resume", "plan_cpu_s", "s", "cost"),
]


# --------------------------------------------------------------------------------------------
# Measuring


def _status_mb(field: str) -> float:
    """A memory figure of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status: this benchmark needs Linux")


class Clock:
    """Named timings, collected into one dict: ``<name>_s`` wall, ``<name>_cpu_s`` CPU (user +
    system, all threads), and the two apart, ``<name>_user_s`` and ``<name>_sys_s``."""

    def __init__(self) -> None:
        self.out: dict[str, float] = {}

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        with self(name):
            return fn()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu, use = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        yield
        done = resource.getrusage(resource.RUSAGE_SELF)
        for suffix, spent in (("s", time.perf_counter() - wall), ("cpu_s", time.process_time() - cpu),
                              ("user_s", done.ru_utime - use.ru_utime), ("sys_s", done.ru_stime - use.ru_stime)):
            self.out[f"{name}_{suffix}"] = self.out.get(f"{name}_{suffix}", 0.0) + spent


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, files) of a file or a folder tree."""
    if path.is_file():
        return path.stat().st_blocks * 512, 1
    used = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            used += os.lstat(os.path.join(folder, name)).st_blocks * 512
            files += 1
    return used, files


# --------------------------------------------------------------------------------------------
# The simulated dataset (the same for every process: everything derives from the seed)


def clip_table(cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, is_test, failed) per row."""
    rng = np.random.default_rng([cfg["seed"], cfg["n"]])
    labels = rng.integers(0, cfg["classes"], cfg["n"])
    is_test = rng.random(cfg["n"]) < cfg["test_fraction"]
    failed = rng.random(cfg["n"]) < cfg["failure_rate"]
    return labels, is_test, failed


def manifest(cfg: dict[str, Any]) -> Any:
    from ccl_cache.manifest import ClipRecord, Manifest

    labels, is_test, _ = clip_table(cfg)
    names = [f"class {c:03d}" for c in range(cfg["classes"])]
    return Manifest.from_records(
        (ClipRecord(id=f"yt{i:09d}_{i % 300:06d}", path=f"/data/vggsound/video/yt{i:09d}_{i % 300:06d}.mp4",
                    label=names[labels[i]], split="test" if is_test[i] else "train") for i in range(cfg["n"])),
        classes=names)


@functools.lru_cache(maxsize=1)
def _centres(seed: int, classes: int, dim: int) -> np.ndarray:
    """One centre per class and teacher: (2, classes, dim)."""
    return np.random.default_rng(seed).standard_normal((2, classes, dim), dtype=np.float32)


def chunk_rows_data(cfg: dict[str, Any], rows: slice, labels: np.ndarray,
                    failed: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each teacher's (embedding, times, mask) of one chunk: class centre + noise, float16."""
    dim, k, count = cfg["dim"], cfg["frames"], rows.stop - rows.start
    centres = _centres(cfg["seed"], cfg["classes"], dim)
    rng = np.random.default_rng([cfg["seed"], rows.start])
    lab, bad = labels[rows], failed[rows]
    audio = centres[0][lab] + 0.75 * rng.standard_normal((count, dim), dtype=np.float32)
    image = centres[1][lab][:, None, :] + 0.75 * rng.standard_normal((count, k, dim), dtype=np.float32)
    audio[bad], image[bad] = 0.0, 0.0
    centre = (np.arange(k) + 0.5) * cfg["clip_seconds"] / k
    frame_times = np.repeat(np.stack([centre, centre], axis=1)[None], count, axis=0)
    audio_times = np.tile(np.array([[[0.0, cfg["clip_seconds"]]]]), (count, 1, 1))
    return {AUDIO: (audio.astype(np.float16), audio_times, ~bad),
            IMAGE: (image.astype(np.float16), frame_times, np.repeat(~bad[:, None], k, axis=1))}


def write_store(cfg: dict[str, Any], path: Path, clock: Clock, shard: str | None = None) -> None:
    """Create the store at ``path`` and write the rows of ``shard`` (all rows when None) as
    extraction does: failures first, clip info, then each teacher's rows (data, then done)."""
    from ccl_cache.store import create_store

    labels, _, failed = clip_table(cfg)
    with clock("manifest"):
        man = manifest(cfg)
    with clock("create"):
        store = create_store(path, man, chunk_rows=cfg["chunk_rows"])
        store.create_teacher(AUDIO, cfg["dim"], None, "float16", {"arch": "cnn14_emb512", "simulated": True})
        store.create_teacher(IMAGE, cfg["dim"], cfg["frames"], "float16", {"arch": "resnet34", "simulated": True})
    for rows in store.shard_slices(shard):
        with clock("generate"):  # the simulated teachers' work: left out of the store's figures
            data = chunk_rows_data(cfg, rows, labels, failed)
        with clock("failures"):
            for row in np.flatnonzero(failed[rows]) + rows.start:
                store.record_failure(int(row), "decode", "unreadable", "simulated failure")
        with clock("write"):
            count = rows.stop - rows.start
            store.record_clips(rows, duration=np.full(count, cfg["clip_seconds"]), has_audio=~failed[rows])
            for key, (emb, times, mask) in data.items():
                store.write_rows(key, rows, emb, times, mask)
    store.close()


# --------------------------------------------------------------------------------------------
# Stages (each runs in a process of its own, forked by the parent: see measure)


def _without_generation(clock: Clock, total: str) -> None:
    """``store_s`` / ``store_cpu_s``: the ``total`` step less the data generation inside it."""
    for suffix in ("_s", "_cpu_s", "_user_s", "_sys_s"):
        clock.out[f"store{suffix}"] = clock.out[f"{total}{suffix}"] - clock.out.get(f"generate{suffix}", 0.0)


def stage_build(cfg: dict[str, Any], clock: Clock) -> dict[str, Any]:
    path = Path(cfg["store"])
    with clock("total"):
        write_store(cfg, path, clock)
    _without_generation(clock, "total")
    used, files = disk_usage(path)
    return {"disk_MB": used / 1e6, "files": files}


def stage_info(cfg: dict[str, Any], clock: Clock) -> dict[str, Any]:
    from ccl_cache.store import open_store, summarize

    def info() -> dict[str, Any]:
        with open_store(cfg["store"]) as store:
            return summarize(store)

    summary = clock.timed("summarize", info)
    health = summary["teachers"][IMAGE]
    return {"done": health["done"], "failed": health["failed"], "duplicate_rows": health["duplicate_rows"]}


def stage_splits(cfg: dict[str, Any], clock: Clock) -> dict[str, Any]:
    from ccl_cache.data.splits import make_splits
    from ccl_cache.store import open_store
    from ccl_cache.store.failures import usable_rows

    teachers = {"audio": AUDIO, "image": IMAGE}
    with open_store(cfg["store"]) as store:
        ok, _ = clock.timed("usable_rows", lambda: usable_rows(store, teachers))
        splits = clock.timed("make_splits", lambda: make_splits(store, teachers))
    return {"usable": int(ok.sum()), "train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}


def stage_teachers(cfg: dict[str, Any], clock: Clock) -> dict[str, Any]:
    from ccl_cache.data.teacher_table import TeacherTable
    from ccl_cache.store import open_store

    with open_store(cfg["store"]) as store:
        tables = clock.timed("load", lambda: [TeacherTable.load(store, key) for key in (AUDIO, IMAGE)])
    return {"in_ram": [t.embedding is not None for t in tables]}


def stage_dataset(cfg: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """The trainer's dataset (train rows, both teachers), then one epoch of its teacher lookups."""
    import torch

    from ccl_cache.data import ClipDataset, EpochSampler
    from ccl_cache.data.splits import make_splits
    from ccl_cache.store import open_store

    teachers = {"audio": AUDIO, "image": IMAGE}
    with open_store(cfg["store"]) as store:
        rows = make_splits(store, teachers).train
    dataset = clock.timed("dataset", lambda: ClipDataset(cfg["store"], rows, teachers=teachers, source="file"))
    batches = torch.utils.data.BatchSampler(EpochSampler(len(dataset), seed=1), cfg["batch"], drop_last=True)
    count = clock.timed("sampler", lambda: sum(1 for _ in batches))
    rng = np.random.default_rng(cfg["seed"])
    span = cfg["window_seconds"]

    def epoch() -> None:  # what __getitems__ does after decoding: one lookup_batch per teacher
        for keys in batches:
            idx = np.fromiter((i for _, i in keys), np.int64, len(keys))
            start = rng.random(len(idx)) * (cfg["clip_seconds"] - span)
            windows = np.stack([start, start + span], axis=1)
            u = rng.random(len(idx))
            for table in dataset.tables.values():
                table.lookup_batch(dataset.rows[idx], windows, u if table.frames is not None else None, None)

    clock.timed("epoch", epoch)
    return {"batches": count, "lookup_us_per_batch": 1e6 * clock.out["epoch_cpu_s"] / max(1, count),
            "in_ram": [t.embedding is not None for t in dataset.tables.values()]}


def _index_stage(cfg: dict[str, Any], clock: Clock, index_type: str) -> dict[str, Any]:
    import faiss
    import torch

    from ccl_cache.search import IndexConfig, build_index, collect_vectors, l2_normalize
    from ccl_cache.store import open_store

    torch.set_num_threads(cfg["threads"])
    faiss.omp_set_num_threads(cfg["threads"])
    with open_store(cfg["store"]) as store:
        gallery = clock.timed("collect", lambda: collect_vectors(store, teacher=AUDIO, split="train"))
        queries = collect_vectors(store, teacher=AUDIO, split="test").vectors[:cfg["queries"]]
    config = IndexConfig(index_type=index_type, device="cpu")
    vindex = clock.timed("build", lambda: build_index(gallery.vectors, config, rows=gallery.rows))
    vindex.search(queries, cfg["k"])  # warm-up (the exact path's backend choice, the screen's buffer)
    wall = time.perf_counter()
    _, found = vindex.search(queries, cfg["k"])
    qps = len(queries) / (time.perf_counter() - wall)
    peak = _status_mb("VmHWM")
    _, exact = faiss.knn(l2_normalize(queries), l2_normalize(gallery.vectors), cfg["k"],
                         metric=faiss.METRIC_INNER_PRODUCT)
    exact_rows = gallery.rows[exact]
    recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / cfg["k"] for a, b in zip(found, exact_rows)]))
    out = {"gallery": len(gallery.rows), "queries": len(queries), "qps": qps, f"recall@{cfg['k']}": recall,
           "factory": vindex.meta.factory, "peak_rss_after_build_MB": peak}
    if vindex.meta.calibration is not None:
        out.update(nlist=int(vindex.meta.factory.split(",")[0][3:]), nprobe=vindex.meta.nprobe,
                   calibration_s=vindex.meta.calibration["seconds"])
    return out


def shard_paths(cfg: dict[str, Any]) -> list[Path]:
    from ccl_cache.extract.output import store_path_for

    base = Path(cfg["workdir"]) / "vggsound.h5"
    return [store_path_for(base, (i, cfg["shards"])) for i in range(cfg["shards"])]


def stage_shards(cfg: dict[str, Any], clock: Clock) -> dict[str, Any]:
    with clock("total"):
        for i, path in enumerate(shard_paths(cfg)):
            write_store(cfg, path, clock, shard=f"{i}/{cfg['shards']}")
    _without_generation(clock, "total")
    return {"disk_MB": sum(disk_usage(p)[0] for p in shard_paths(cfg)) / 1e6}


def stage_merge(cfg: dict[str, Any], clock: Clock) -> dict[str, Any]:
    from ccl_cache.store import merge_stores

    out = Path(cfg["workdir"]) / "vggsound.h5"
    out.unlink(missing_ok=True)  # an earlier round's
    with clock("merge"):
        report = merge_stores(shard_paths(cfg), out)
    disk = disk_usage(out)[0] / 1e6
    out.unlink()
    return {"disk_MB": disk, "teachers": report["teachers"], "failures": report["failures"]}


def stage_resume(cfg: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """A kill at 50 %: chunks are written in order, so the second half's done flags are unset."""
    from ccl_cache.extract.plan import plan_chunks
    from ccl_cache.store import create_store, shard_slices

    man = manifest(cfg)
    def reopen() -> Any:  # what extraction does on a resume (open_or_create_store)
        return create_store(cfg["store"], man, chunk_rows=cfg["chunk_rows"], exist_ok=True).close()

    clock.timed("reopen", reopen)
    store = create_store(cfg["store"], man, chunk_rows=cfg["chunk_rows"], exist_ok=True)
    chunks = shard_slices(store.n, store.chunk_rows, None)
    half = chunks[len(chunks) // 2].start
    for key in (AUDIO, IMAGE):
        store.teacher(key).done[half:] = np.zeros(store.n - half, dtype=bool)
    todo = clock.timed("todo", lambda: [store.todo(key) for key in (AUDIO, IMAGE)])
    plans = clock.timed("plan", lambda: plan_chunks(store, [AUDIO, IMAGE], chunks, False))
    store.close()
    return {"chunks": len(chunks), "todo_chunks": [len(t) for t in todo], "planned_chunks": len(plans),
            "planned_rows": int(sum(len(p.decode_rows) for p in plans))}


WRITE_STAGES = ("build", "shards")  # write the stores the others read: once per size, first
ONCE = ("index_ivf",)  # k-means: too long to repeat (one round)

STAGES: dict[str, Callable[[dict[str, Any], Clock], dict[str, Any]]] = {
    "build": stage_build, "info": stage_info, "splits": stage_splits, "teachers": stage_teachers,
    "dataset": stage_dataset, "index_flat": lambda c, k: _index_stage(c, k, "flat"),
    "index_ivf": lambda c, k: _index_stage(c, k, "ivf"), "resume": stage_resume, "shards": stage_shards,
    "merge": stage_merge,
}


def import_stage_modules() -> None:
    """Everything the stages import, loaded once in the parent before it forks them: each stage's
    RSS growth is then its data, not its code, and no stage pays the imports (torch: seconds)."""
    for module in ("torch", "faiss", "ccl_cache.store", "ccl_cache.data", "ccl_cache.data.splits",
                   "ccl_cache.search", "ccl_cache.extract.plan", "ccl_cache.extract.output"):
        importlib.import_module(module)


def run_child(stage: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One stage in a forked process: its RSS peak is reset first (``clear_refs`` 5), so the peak
    it reports is its own, not the parent's."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # resets VmHWM to the current RSS
    start_rss = _status_mb("VmRSS")
    clock = Clock()
    result = STAGES[stage](cfg, clock)
    peak = _status_mb("VmHWM")
    return {**result, **clock.out, "rss_start_MB": start_rss, "peak_rss_MB": peak,
            "rss_growth_MB": max(0.0, peak - start_rss)}


# --------------------------------------------------------------------------------------------
# The parent: one folder per size, the stages in order, growth per doubling


def measure(stage: str, cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``stage`` in a forked child (a process per measurement) and return its JSON."""
    out = Path(cfg["workdir"]) / f".{stage}.json"
    out.unlink(missing_ok=True)
    began = time.perf_counter()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        code = 1
        try:
            out.write_text(json.dumps(run_child(stage, cfg)), encoding="utf-8")
            code = 0
        except BaseException:  # noqa: B036  (reported by the parent, whatever it was)
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - began > timeout:
                raise RuntimeError(f"stage {stage} (n={cfg['n']}) ran past {timeout:.0f} s")
            time.sleep(0.05)
    except BaseException:  # a timeout, or the parent interrupted: the child goes with it
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not out.exists():
        raise RuntimeError(f"stage {stage} (n={cfg['n']}) failed (exit status {code}); its traceback is above")
    print(f"[scale] n={cfg['n']} {stage}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    return json.loads(out.read_text(encoding="utf-8"))


def fastest(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two rounds of one stage merged: the shorter time of each step, the higher rate and peak."""
    out = dict(a)
    for key, value in b.items():
        if key.endswith("_s") or key == "lookup_us_per_batch":
            out[key] = min(a[key], value)
        elif key in ("qps", "peak_rss_MB", "rss_growth_MB"):
            out[key] = max(a[key], value)
    return out


def growth_per_doubling(sizes: list[int], values: list[float | None]) -> list[float | None]:
    out: list[float | None] = []
    for (n0, v0), (n1, v1) in zip(zip(sizes, values), zip(sizes[1:], values[1:])):
        ok = v0 is not None and v1 is not None and v0 > 0 and v1 > 0 and n1 > n0
        out.append((v1 / v0) ** (1 / math.log2(n1 / n0)) if ok else None)
    return out


def figures(sizes: list[int], stages: dict[int, dict[str, dict[str, Any]]], flag: float) -> dict[str, Any]:
    assert len({f[0] for f in FIGURES}) == len(FIGURES), "figure names must be unique"
    out = {}
    for name, stage, field, unit, kind in FIGURES:
        values = [stages[n].get(stage, {}).get(field) for n in sizes]
        # Over the whole range (first to last N) too: one doubling's ratio is noisy on a shared
        # machine, a superlinear algorithm shows over three of them.
        (overall,) = growth_per_doubling([sizes[0], sizes[-1]], [values[0], values[-1]])
        out[name] = {"stage": stage, "field": field, "unit": unit, "kind": kind, "values": values,
                     "growth": growth_per_doubling(sizes, values), "overall_growth": overall,
                     "superlinear": kind == "cost" and overall is not None and overall > flag}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    base = {"dim": args.dim, "frames": args.frames, "classes": args.classes, "test_fraction": args.test_fraction,
            "failure_rate": args.failure_rate, "chunk_rows": args.chunk_rows, "clip_seconds": args.clip_seconds,
            "window_seconds": args.window_seconds, "batch": args.batch, "queries": args.queries, "k": args.k,
            "shards": args.shards, "threads": args.threads, "seed": args.seed}
    import_stage_modules()
    load_start, began = os.getloadavg(), time.perf_counter()
    cfgs = {n: {**base, "n": n, "workdir": str(root / f"n{n}"), "store": str(root / f"n{n}" / "vggsound.zarr")}
            for n in sizes}
    order = args.stages.split(",")
    stages: dict[int, dict[str, dict[str, Any]]] = {n: {} for n in sizes}
    try:
        for n in sizes:
            shutil.rmtree(cfgs[n]["workdir"], ignore_errors=True)
            Path(cfgs[n]["workdir"]).mkdir(parents=True)
            for stage in (s for s in order if s in WRITE_STAGES):
                stages[n][stage] = measure(stage, cfgs[n], args.timeout)
        for stage in (s for s in order if s not in WRITE_STAGES):
            for _ in range(1 if stage in ONCE else args.repeats):
                for n in sizes:
                    result = measure(stage, cfgs[n], args.timeout)
                    stages[n][stage] = fastest(stages[n][stage], result) if stage in stages[n] else result
    finally:
        for cfg in cfgs.values():
            if not args.keep:
                shutil.rmtree(cfg["workdir"], ignore_errors=True)
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "scale", "sizes": sizes, "config": base, "flag_growth": args.flag,
        "machine": {"cpu_count": os.cpu_count(), "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
                    "seconds": time.perf_counter() - began},
        "stages": {str(n): per for n, per in stages.items()},
        "figures": (figs := figures(sizes, stages, args.flag)),
        "superlinear": [name for name, f in figs.items() if f["superlinear"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="25000,50000,100000,200000", help="rows N, comma-separated")
    parser.add_argument("--dim", type=int, default=512, help="embedding size of both teachers")
    parser.add_argument("--frames", type=int, default=8, help="image teacher frames per clip")
    parser.add_argument("--classes", type=int, default=309, help="VGGSound has 309")
    parser.add_argument("--test-fraction", type=float, default=0.0776, help="VGGSound: ~15.4k test of ~199k")
    parser.add_argument("--failure-rate", type=float, default=0.005, help="share of clips in the failure ledger")
    parser.add_argument("--chunk-rows", type=int, default=64, help="the store's chunk (extract's --batch-size)")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--window-seconds", type=float, default=0.64, help="a training window (16 frames at 25 fps)")
    parser.add_argument("--batch", type=int, default=16, help="training batch (distill's default)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="FAISS and torch threads for the index stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each stage after the builds (fastest kept)")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to run (build and shards first, "
                        "then the others in this order; resume clears done flags, so it comes after the readers)")
    parser.add_argument("--flag", type=float, default=2.3, help="growth per doubling above which a cost is flagged")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per stage")
    parser.add_argument("--workdir", default=None, help="folder for the stores (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args(argv)
    json.dump(run(args), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
