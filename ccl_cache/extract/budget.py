"""The plan of ``ccl-cache extract`` (:class:`ccl_cache.plan.Plan`): the store's bytes on disk for
the run's rows, checked against the free disk before any model loads, and the time from a short
timed probe (:func:`probe_extraction`: the first clips decoded and run through the teachers, with
random weights, in this process); ``--dry-run`` stops there. Under ``--audio-segment`` every
segment of a clip is a slot on disk: the clips the manifest gives no window are probed for their
number (decode workers; nothing is written)."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ccl_cache.errors import CclCacheError
from ccl_cache.extract.config import ExtractConfig, resolve_shard
from ccl_cache.extract.decode import ClipTask, DecodePool, DecodeSpec
from ccl_cache.extract.infer import teacher_dim_hint
from ccl_cache.extract.output import estimate_store_bytes, store_path_for
from ccl_cache.plan import Clock, Plan, Probe, free_disk_at, with_probe
from ccl_cache.store.schema import CLIP_COLUMNS, TEACHER_DATA

if TYPE_CHECKING:
    from ccl_cache.manifest import Manifest

# Bytes a store spends per array on its own (Zarr: the zarr.json and chunk headers; HDF5: the
# object header and chunk index), measured on small stores of both backends.
ARRAY_OVERHEAD = {".zarr": 800, ".h5": 3000}
# The arrays every extraction store holds besides its teachers': the clip table, the class list,
# the failure ledger (stage, reason, message, time, coverage) and the three extraction columns.
_BASE_ARRAYS = len(CLIP_COLUMNS) + 1 + 5 + 3
PROBE_CLIPS = 3  # clips the plan decodes and runs through the teachers to time the run; 0: not timed


def store_bytes(path: Path, rows: int, layouts: list[tuple[int, int]], dtype: str) -> int:
    """Disk bytes of an extraction store of ``rows`` rows: the per-row upper bound of
    :func:`estimate_store_bytes` plus each array's fixed cost for the backend of ``path``."""
    arrays = _BASE_ARRAYS + len(layouts) * (len(TEACHER_DATA) + 1)
    overhead = ARRAY_OVERHEAD.get(path.suffix.lower(), ARRAY_OVERHEAD[".h5"]) * arrays
    return estimate_store_bytes(rows, layouts, dtype) + overhead


def audio_segment_slots(manifest: "Manifest", config: ExtractConfig, probe: bool = True) -> int:
    """K_a, the slots of an audio teacher under ``--audio-segment``: the most segments of
    ``config.audio_segment`` seconds any clip has, from its manifest window; a clip without one is
    probed (decode workers, ``probe``) or, without ``probe``, left out."""
    seg = float(config.audio_segment or 1.0)
    lengths = [r.end - r.start if r.start is not None and r.end is not None else None for r in manifest.records]
    known = [n for n in lengths if n is not None]
    unknown = [ClipTask(i, r.path, r.start, r.end, kind="probe") for i, (r, n) in
               enumerate(zip(manifest.records, lengths)) if n is None]  # fmt: skip
    if unknown and probe:
        with DecodePool(DecodeSpec(), config.workers, config.timeout_s, readahead=1024) as pool:
            pool.start(unknown)
            for _ in unknown:
                clip = pool.get()
                if not clip.failures:
                    known.append(clip.window[1] - clip.window[0])
    return max([1] + [int(math.floor(n / seg + 1e-9)) for n in known])


def planned_audio_slots(path: Path, manifest: "Manifest", config: ExtractConfig) -> tuple[int | None, int | None]:
    """K_a under ``--audio-segment`` for the plan's disk estimate, and the same number when it was
    probed here (a new audio teacher then takes it without probing again); (None, None) without
    segments. A store being resumed keeps its audio teacher's own K_a: no clip is probed then."""
    if config.audio_segment is None or config.audio_teacher is None:
        return None, None
    if path.exists() and not config.overwrite:
        from ccl_cache.store import open_store

        try:
            with open_store(path) as s:
                stored = [int(s.teacher(k).frames or 0) for k in s.teacher_keys() if k.split("/")[0] == "audio"]
        except CclCacheError:  # a damaged store: opening it for the run says so (and what to do)
            stored = []
        if stored and max(stored) > 0:
            return max(stored), None
    slots = audio_segment_slots(manifest, config)
    return slots, slots


def extraction_plan(path: Path, manifest: "Manifest", config: ExtractConfig, shard: tuple[int, int] | None,
                    audio_slots: int | None = None) -> Plan:
    """The plan of extracting ``manifest`` (or its ``shard``) into the store at ``path``.

    ``audio_slots``: the audio teacher's K_a under ``--audio-segment`` (the run probes the clips
    for it); without it, K_a from the clip windows the manifest gives."""
    layouts, notes = [], []
    if config.audio_segment is not None and config.audio_teacher is not None and audio_slots is None:
        audio_slots = audio_segment_slots(manifest, config, probe=False)
        if any(r.start is None or r.end is None for r in manifest.records):
            notes.append(f"audio segments: {audio_slots} per clip counted from the manifest's clip windows; "
                         "clips without one are probed when the run starts (the run checks again)")
    for modality, name in (("audio", config.audio_teacher), ("image", config.image_teacher)):
        if name is None:
            continue
        dim = teacher_dim_hint(name, modality, config)
        if dim is None:
            notes.append(f"{modality} teacher {name}: dimension unknown before it loads, 2048 assumed")
        slots = config.frames_per_clip if modality == "image" else (audio_slots or 1)
        layouts.append((slots, dim or 2048))  # unknown user teacher: assume a large embedding
    rows = len(manifest) if shard is None else -(-len(manifest) // shard[1])
    if path.exists():
        notes.append("the store exists: a resumed run writes only the rows not done yet (less than shown)")
    smaller = "fewer --frames-per-clip" if config.dtype == "float16" else "--dtype float16 or fewer --frames-per-clip"
    fix = f"use {smaller}" + (" or fewer clips (--shard I/N over several disks)" if shard is None else "")
    return Plan("extract", str(path), rows, disk={"store": store_bytes(path, rows, layouts, config.dtype)},
                free_disk=free_disk_at(path), notes=tuple(notes), disk_fix=fix)


def plan_extraction(config: ExtractConfig, probe_clips: int = PROBE_CLIPS, clock: Clock = time.perf_counter) -> Plan:
    """The plan of ``run_extraction(config)``, writing nothing (``ccl-cache extract --dry-run``):
    the disk without loading a model, then (when it fits, and ``probe_clips`` > 0) the time from
    :func:`probe_extraction` of the first ``probe_clips`` clips, timed by ``clock``."""
    from ccl_cache.manifest import load_manifest

    config.validate()
    shard = resolve_shard(config.shard)
    path = store_path_for(config.store, shard)
    manifest = load_manifest(config.manifest, format=config.format, root=config.root, check_files=False)
    plan = extraction_plan(path, manifest, config, shard, planned_audio_slots(path, manifest, config)[0])
    if not probe_clips:
        return dataclasses.replace(plan, notes=(*plan.notes, "time: not probed (--no-probe); the progress line "
                                                "shows the rate and time left from the first chunk on"))
    return with_probe(plan, lambda: probe_extraction(manifest, config, plan.clips, probe_clips, clock),
                      "time: the first clips did not decode; not estimated")


def probe_extraction(manifest: "Manifest", config: ExtractConfig, clips: int, probe_clips: int = PROBE_CLIPS,
                     clock: Clock = time.perf_counter) -> Probe | None:
    """The time of extracting ``clips`` clips, from the first ``probe_clips`` of ``manifest``:
    decoded in this process as a decode worker does (``decode`` per clip: the workers' share),
    then run through the teachers on the run's device and threads (``teachers`` per clip: the
    main process's), once to warm up and once timed. The teachers get random weights: the time is
    the same, and nothing is downloaded or read. Nothing is written. None when no clip decodes."""
    from ccl_cache import hardware
    from ccl_cache.extract.config import inference_threads
    from ccl_cache.extract.decode import decode_clip
    from ccl_cache.extract.infer import TeacherRunner, build_teachers
    from ccl_cache.extract.run import _decode_spec, _torch_threads

    device = str(hardware.resolve_device(config.device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": on purpose here
        teachers = build_teachers(dataclasses.replace(config, audio_weights=None, image_weights=None), device)
    runners = [TeacherRunner(f"{m}/{t.name}", t, device, amp=config.amp, dtype=config.dtype,
                             slots=config.frames_per_clip if m == "image" else None) for m, t in teachers.items()]
    spec = _decode_spec(runners, config)
    wants = {r.modality for r in runners}
    decode_s, decoded, tried = 0.0, [], manifest.records[:probe_clips]
    with _torch_threads(inference_threads(config, device)):
        for row, rec in enumerate(tried):
            task = ClipTask(row, rec.path, rec.start, rec.end, audio="audio" in wants, image="image" in wants)
            began = clock()
            clip = decode_clip(task, spec)
            decode_s += clock() - began
            if not clip.failures:
                decoded.append(clip)
        if not decoded:
            return None
        for runner in runners:  # warm-up: the first forward pays for allocations and kernel selection
            runner.run(decoded)
        began = clock()
        for runner in runners:
            runner.run(decoded)
        infer_s = clock() - began
    n = len(decoded)
    return Probe("clip", n, {"decode": decode_s / len(tried), "teachers": infer_s / n}, ("decode",), config.workers,
                 clips, leaves_out="writing the store (a thread beside the teachers)")
