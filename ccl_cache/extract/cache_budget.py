"""The plan of ``ccl-cache cache-clips`` (:class:`ccl_cache.plan.Plan`): the frames the cache will
hold and their bytes on disk, from the store's clip windows and a short timed probe of the first
rows (their rate, and the decode + encode time per frame); checked against the free disk."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ccl_cache.extract.budget import ARRAY_OVERHEAD
from ccl_cache.extract.frame_cache import SEGMENT_CHUNK_BYTES, _SPACE_FIX, FrameCacheConfig, _check_existing
from ccl_cache.extract.frame_tasks import decode_piece, probe_row
from ccl_cache.plan import Clock, Plan, Probe, free_disk_at, with_probe
from ccl_cache.store.failures import usable_rows
from ccl_cache.store.schema import FRAMES_COUNT, FRAMES_GROUP, FRAMES_PLANNED

PROBE_ROWS = 3  # rows the plan decodes (their first piece) to time the run; 0: not timed (--no-probe)


def cache_bytes(config: FrameCacheConfig, planned: np.ndarray, suffix: str) -> int:
    """Disk bytes of a cache whose rows hold ``planned`` frames: each row's chunk-aligned region
    (raw pixels fill whole chunks), the timestamps and index, and each array's fixed cost."""
    codec = config.frame_codec()
    cf = config.chunk_frames
    capacity = int((-(-planned // cf) * cf).sum())
    frames = int(planned.sum())
    per_array = ARRAY_OVERHEAD.get(suffix.lower(), ARRAY_OVERHEAD[".h5"])
    # The per-frame columns (times, the index) are chunked by cf·256 frames; Zarr stores each
    # chunk it writes whole, so their last chunk counts in full there.
    columns = -(-capacity // (cf * 256)) * cf * 256 if suffix.lower() == ".zarr" else capacity
    if codec.layout == "pixels":
        body = capacity * codec.bytes_per_frame(config.size)
    else:
        # One segment sized for the codec's estimate takes disk up to the storage chunks written.
        estimate = frames * codec.bytes_per_frame(config.size)
        chunk = max(1, min(SEGMENT_CHUNK_BYTES, estimate))
        body = min(estimate, -(-estimate // chunk) * chunk) + columns * 24
    return body + columns * 8 + 4 * len(planned) * 8 + 7 * per_array


def plan_frame_cache(store_path: str | Path, config: FrameCacheConfig = FrameCacheConfig(),
                     probe_rows: int = PROBE_ROWS, clock: Clock = time.perf_counter) -> Plan:
    """The plan of ``build_frame_cache(store_path, config)``, writing nothing: frames per row from
    the clip windows at the rate of the first rows (their files probed), their bytes, and the time
    from decoding and encoding the first piece of ``probe_rows`` rows in this process (timed by
    ``clock``; ``probe_rows=0``: not timed)."""
    from ccl_cache.data import clip_infos
    from ccl_cache.store import open_store

    path = Path(store_path)
    notes: list[str] = []
    with open_store(path, "r") as store:
        resume = _check_existing(store, config)
        infos = clip_infos(store)
        ok, _ = usable_rows(store, {})
        rows = np.flatnonzero(ok)
        if resume:
            count, planned = store.array(FRAMES_COUNT)[:], np.asarray(store.array(FRAMES_PLANNED)[:], np.int64)
            rows = np.flatnonzero((count == 0) & (planned > 0))
            planned = planned[rows]
            freed = 0
            notes.append(f"resuming: {int((count > 0).sum())} clips are cached already")
        else:
            freed = store.freed_by_delete(FRAMES_GROUP)
    sample = [probe_row((int(r), infos[r].path, infos[r].start, infos[r].end)) for r in rows[:PROBE_ROWS]]
    rates = [min(fps, config.fps) if config.fps else fps for _, fps, _, error in sample if not error]
    rate = float(np.median(rates)) if rates else (config.fps or 25.0)
    if not resume:
        spans = np.array([infos[r].end - infos[r].start for r in rows], np.float64)
        known = spans[np.isfinite(spans)]
        if len(known) < len(spans):
            notes.append(f"{len(spans) - len(known)} clips without a known length: counted at the mean length")
        if not len(known):  # no lengths in the store (not extracted yet): the probed ones
            known = np.array([end - infos[row].start for row, _, end, error in sample if not error], np.float64)
        spans = np.where(np.isfinite(spans), spans, known.mean() if len(known) else 10.0)
        planned = np.maximum(1, np.floor(spans * rate + 1e-6)).astype(np.int64)
        planned = np.minimum(planned, config.max_frames or planned.max(initial=1))
        if config.fps is None:
            notes.append(f"frames counted at {rate:g} fps, the native rate of the first clips")
        if freed:
            notes.append(f"the old cache ({freed} bytes) is deleted first; its space counted as free")
    if not probe_rows:
        notes.append("time: not probed (--no-probe)")
    if not resume:  # the build's per-row columns span every row of the store, unusable ones included
        planned = np.bincount(rows, weights=planned, minlength=len(infos)).astype(np.int64)
    disk = cache_bytes(config, planned, path.suffix)
    plan = Plan("cache-clips", str(path), len(rows), disk={"cache": disk}, free_disk=free_disk_at(path) + freed,
                notes=tuple(notes), disk_fix=_SPACE_FIX)
    if not probe_rows:
        return plan
    return with_probe(plan, lambda: _timed_probe(infos, rows[:probe_rows], rate, config, int(planned.sum()), clock),
                      "time: the first clips did not decode; not estimated")


def _timed_probe(infos: list, rows: np.ndarray, rate: float, config: FrameCacheConfig, frames: int,
                 clock: Clock) -> Probe | None:
    """The time of ``frames`` frames at the speed of decoding + encoding the first piece of
    ``rows`` in this process, shared by the workers (None when none of them decodes)."""
    from ccl_cache.extract.decode import centre_times

    took, done = 0.0, 0
    for row in rows:
        span = infos[row].end - infos[row].start
        n = min(config.piece_frames, max(1, int(math.floor(span * rate))) if math.isfinite(span) else 16)
        times = centre_times(infos[row].start, 1.0 / rate, np.arange(n))
        began = clock()
        *_, error = decode_piece((int(row), 0, infos[row].path, times, tuple(config.size), config.codec, config.quality))
        if not error:
            took += clock() - began
            done += n
    if not done:
        return None
    return Probe("frame", done, {"decode + encode": took / done}, ("decode + encode",), config.workers, frames,
                 leaves_out="writing to the store")
