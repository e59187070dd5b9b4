"""The run: set-up (checks, teachers, store, lease), then decode → inference → write overlapped
(decode workers, the calling thread, the writer thread), and the summary; ``merge_shards`` joins
HDF5 shard stores."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import yaml

from ccl_cache import faults, hardware
from ccl_cache.errors import ConfigError, StoreError, StoreMismatchError
from ccl_cache.extract.config import (
    EXIT_FAILED_CLIPS, EXIT_OK, FRAME_SAMPLING, ExtractConfig, inference_threads, resolve_shard, resolved_config,
    shard_label,
)
from ccl_cache.extract.budget import audio_segment_slots, extraction_plan, planned_audio_slots
from ccl_cache.extract.decode import DecodedClip, DecodePool, DecodeSpec
from ccl_cache.extract.infer import TeacherRunner, build_teachers, teacher_fingerprint
from ccl_cache.extract.output import (
    check_output_location, config_path_for, failure_log_path, open_or_create_store,
    store_path_for,
)
from ccl_cache.extract.plan import ChunkPlan, decode_tasks, decoded_chunks, plan_chunks
from ccl_cache.extract.writer import ChunkJob, ProgressEvent, RunCounters, StoreWriter, keep_graver, progress_event
from ccl_cache.fileio import atomic_write_text, save_config
from ccl_cache.store.failures import rows_stale_after_rerun
from ccl_cache.store.schema import AUDIO_COVERAGE_PATH, COVERAGE_PATH, DECODE_ERRORS_PATH
from ccl_cache.store.space import explain_write_error

if TYPE_CHECKING:
    from ccl_cache.manifest import Manifest
    from ccl_cache.store import Store
    from ccl_cache.teachers import Teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractSummary:
    """What a run did; ``exit_code`` is 0 when every clip of the shard has its embeddings."""

    store: str
    shard: str | None
    teachers: tuple[str, ...]
    rows: int  # rows this process is responsible for
    processed: int
    skipped: int
    failed: int  # failures recorded by this run
    failed_total: int  # rows of the shard in the failure ledger after the run
    missing_audio: int
    failures_by_reason: dict[str, int]
    seconds: float
    clips_per_s: float
    config_path: str
    failure_log: str

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED_CLIPS if self.failed_total else EXIT_OK


def run_extraction(
    config: ExtractConfig, progress: Callable[[ProgressEvent], None] | None = None
) -> ExtractSummary:
    """Run the teachers of ``config`` over its manifest into its store (see the ``ccl_cache.extract``
    package docstring).

    Raises a :class:`CclCacheError` for usage/config problems (before any model loads where it
    can); clips that fail are recorded, not raised.
    """
    from ccl_cache.manifest import load_manifest

    config.validate()
    shard = resolve_shard(config.shard)
    path = store_path_for(config.store, shard)
    if config.overwrite and shard is not None and path.suffix.lower() == ".zarr":
        raise ConfigError(
            "--overwrite with --shard on a shared Zarr store would let each shard wipe the others' "
            f"work; delete {path} first, then start the shards without --overwrite"
        )
    check_output_location(path)
    # Missing files are failures (data), not manifest errors: a large dataset always has a few.
    manifest = load_manifest(config.manifest, format=config.format, root=config.root, check_files=False)
    audio_slots, probed = planned_audio_slots(path, manifest, config)
    _check_space(path, manifest, config, shard, audio_slots)
    device = str(hardware.resolve_device(config.device))
    # A new store, or one --overwrite may replace: the teachers load first, so a bad teacher or
    # weights leave no empty store behind and no old store wiped. Resuming an existing store: its
    # lease first, so a refused second writer fails fast.
    teachers = build_teachers(config, device) if config.overwrite or not path.exists() else None
    with _full_disk_explained(path):
        store = open_or_create_store(path, manifest, config, shard is not None)
        if store.chunk_rows != config.batch_size:
            log.warning("%s keeps its chunk_rows=%d: batches follow the store's chunks, not batch_size=%d",
                        path, store.chunk_rows, config.batch_size)
        try:
            # Zarr shards share one store, each under its own lease; an HDF5 shard owns its file.
            lease_shard = shard_label(shard) if path.suffix.lower() == ".zarr" else None
            with store.acquire_lease(force=config.force, shard=lease_shard, command="ccl-cache extract"), \
                    _torch_threads(inference_threads(config, device)):
                try:
                    save_config(resolved_config(config, shard, device), config_path_for(path, shard))
                    teachers = build_teachers(config, device) if teachers is None else teachers
                    runners = _create_teachers(store, manifest, teachers, config, device, probed)
                    return _run(store, manifest, runners, config, shard, path, progress)
                finally:
                    store.close()  # its last flush and close happen while the lease keeps writers out
        finally:
            store.close()


@contextlib.contextmanager
def _full_disk_explained(path: Path) -> Iterator[None]:
    """A full disk met outside the writer thread (creating the store or a teacher's arrays, the
    config file beside it, the last flush) ends the run with the same StoreError as in it, naming
    the store (not the temporary file a new store is built in)."""
    try:
        yield
    except Exception as exc:
        cause = _full_disk(exc)
        if cause is None or (isinstance(exc, StoreError) and str(path) in str(exc)):
            raise  # not a full disk, or already said about this store (the writer's message)
        raise explain_write_error(path, cause, None) from exc


def _full_disk(exc: BaseException) -> BaseException | None:
    """The full-disk (or quota) error in ``exc``'s chain, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "no space left" in str(seen).lower():
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block and restore them after (a library call must
    not change its caller's setting)."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_space(path: Path, manifest: "Manifest", config: ExtractConfig, shard: tuple[int, int] | None,
                 audio_slots: int | None) -> None:
    # the plan `extract` prints (extract/budget.py), with every audio segment's slot counted
    extraction_plan(path, manifest, config, shard, audio_slots).check()


def _create_teachers(store: "Store", manifest: "Manifest", teachers: dict[str, "Teacher"],
                     config: ExtractConfig, device: str, probed: int | None = None) -> list[TeacherRunner]:
    """Create (or check) each teacher's arrays in the store and wrap the teacher in a runner;
    ``probed``: K_a already probed for the manifest (see :func:`planned_audio_slots`)."""
    runners = []
    for modality, teacher in teachers.items():
        key = f"{modality}/{teacher.name}"
        if modality == "image":
            slots: int | None = config.frames_per_clip
        elif config.audio_segment is None:
            slots = None
        else:
            slots = _segment_slots(store, key, manifest, config, probed)
        fingerprint = teacher_fingerprint(teacher, config, slots, device)
        try:
            store.create_teacher(key, teacher.dim, slots, dtype=config.dtype, fingerprint=fingerprint,
                                 overwrite=config.overwrite)  # fmt: skip
        except StoreMismatchError as exc:
            if "frame_sampling" not in str(exc):
                raise
            # The default is recorded as an absent field (see teacher_fingerprint): say so.
            raise StoreMismatchError(f"{exc}\n(frame_sampling <absent> means {FRAME_SAMPLING[0]!r}, the default; "
                                     "pass the store's --frame-sampling to resume it)") from exc
        runners.append(TeacherRunner(key, teacher, device, amp=config.amp, dtype=config.dtype,
                                     slots=slots, segment_seconds=config.audio_segment))  # fmt: skip
    if config.overwrite:  # the entries that described the replaced teachers, not those of teachers kept
        stale = rows_stale_after_rerun(store.failures(), set(store.teacher_keys()), {r.key for r in runners})
        if stale.size:
            store.clear_failures(stale)
    _ensure_coverage_array(store)
    return runners


def _ensure_coverage_array(store: "Store") -> None:
    """Create the per-clip coverage (NaN = not measured) and decoder-error (-1 = no frames read)
    columns unless a shard was first."""
    for path, dtype, fill in ((COVERAGE_PATH, "float32", math.nan), (AUDIO_COVERAGE_PATH, "float32", math.nan),
                              (DECODE_ERRORS_PATH, "int32", -1)):
        if store.has(path):
            continue
        try:
            store.create_array(path, (store.n,), dtype, chunk_rows=store.chunk_rows, fill_value=fill)
        except Exception:  # noqa: BLE001 - a concurrent shard created it between has() and here
            if not store.has(path):
                raise


def _segment_slots(store: "Store", key: str, manifest: "Manifest", config: ExtractConfig, probed: int | None) -> int:
    """K_a: the most audio segments any clip has (an existing teacher array keeps its own)."""
    if key in store.teacher_keys() and not config.overwrite:
        frames = store.teacher(key).frames
        if frames:
            return int(frames)
    return probed if probed is not None else audio_segment_slots(manifest, config)


def _decode_spec(runners: Sequence[TeacherRunner], config: ExtractConfig) -> DecodeSpec:
    audio = next((r for r in runners if r.modality == "audio"), None)
    image = next((r for r in runners if r.modality == "image"), None)
    return DecodeSpec(
        sample_rate=None if audio is None else int(audio.teacher.preprocess.sample_rate or 0),
        frames_per_clip=config.frames_per_clip,
        frame_sampling=config.frame_sampling,
        image_size=None if image is None else int(image.teacher.preprocess.image_size or config.image_size),
        min_coverage=config.min_coverage,
        strict=config.strict,
    )

def _infer_chunk(plan: ChunkPlan, clips: list[DecodedClip], runners: Sequence[TeacherRunner],
                 clear: bool = True) -> ChunkJob:
    """Run every teacher over a decoded chunk; ``clear``: retried rows that succeed leave the ledger."""
    by_row = {c.row: c for c in clips}
    outputs, failures = {}, {}
    for runner in runners:
        rows = plan.todo.get(runner.key)
        if rows is None:
            continue
        out = runner.run([by_row[int(r)] for r in rows])
        outputs[runner.key] = out
        for row, failure in out.failures.items():
            keep_graver(failures, row, failure)
    ran = {r.modality for r in runners if plan.todo.get(r.key) is not None}
    for clip in clips:  # what the clip's decode found for a modality without a teacher here (no video)
        for modality, failure in clip.failures.items():
            if modality not in ran:
                keep_graver(failures, clip.row, failure)
    cleared = [int(r) for r in plan.retry if int(r) not in failures] if clear else []
    return ChunkJob(plan.rows, outputs, failures, cleared, clips, frozenset(int(r) for r in plan.retry))


def _run(store: "Store", manifest: "Manifest", runners: list[TeacherRunner], config: ExtractConfig,
         shard: tuple[int, int] | None, path: Path, progress: Callable[[ProgressEvent], None] | None) -> ExtractSummary:
    from ccl_cache.store.schema import shard_slices

    chunks = shard_slices(store.n, store.chunk_rows, shard_label(shard))
    plans = plan_chunks(store, [r.key for r in runners], chunks, config.retry_failed)
    total = sum(c.stop - c.start for c in chunks)
    counters = RunCounters(total=total, skipped=total - sum(len(p.decode_rows) for p in plans))
    if progress is not None:
        progress(progress_event(counters))
    log_path = failure_log_path(path)
    if plans:
        spec = _decode_spec(runners, config)
        tasks = decode_tasks(plans, manifest, {r.key: r.modality for r in runners})
        with StoreWriter(store, manifest, log_path, counters, progress) as writer, \
                DecodePool(spec, config.workers, config.timeout_s, readahead=2 * store.chunk_rows) as pool:
            pool.start(tasks)
            # A ledger entry may concern a teacher this run does not compute: clear entries only
            # when every stored teacher was recomputed for the row.
            clear = set(store.teacher_keys()) <= {r.key for r in runners}
            for plan, clips in decoded_chunks(pool, plans):
                writer.put(_infer_chunk(plan, clips, runners, clear))
                faults.pause_point("extract.chunk", before=writer.wait_committed)
    failed = np.asarray(store.failure_rows(), dtype=np.int64)
    in_shard = sum(int(((failed >= c.start) & (failed < c.stop)).sum()) for c in chunks)
    seconds = time.monotonic() - counters.started
    return ExtractSummary(
        store=str(path), shard=shard_label(shard), teachers=tuple(r.key for r in runners), rows=total,
        processed=counters.processed, skipped=counters.skipped, failed=counters.failed,
        failed_total=in_shard, missing_audio=counters.missing_audio,
        failures_by_reason=dict(counters.by_reason), seconds=seconds,
        clips_per_s=counters.processed / seconds if seconds > 0 else 0.0,
        config_path=str(config_path_for(path, shard)), failure_log=str(log_path),
    )  # fmt: skip


def merge_shards(inputs: Sequence[str | Path], output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Join HDF5 (or Zarr) shard stores of one manifest into ``output``; returns the merge report.

    The shards' extraction config comes along as ``<output>.extract.yaml`` (store, shard and the
    shards merged rewritten), so what reads it beside a store (``retrieve`` finding the audio
    teacher's weights for sound queries) works on the merged store as on an unsharded one."""
    from ccl_cache.store import merge_stores

    if not inputs:
        raise ConfigError("merge needs at least one shard store to read")
    for item in inputs:
        if not Path(item).exists():
            raise ConfigError(f"shard store {item} does not exist; check the path (shards are named "
                              "<stem>.shard-I-of-N.h5)")  # fmt: skip
    report = merge_stores([Path(p) for p in inputs], Path(output), overwrite=overwrite)
    saved = _shard_config(inputs)
    if saved is not None:
        saved.update(store=os.path.abspath(output), shard=None, merged_from=[os.path.abspath(p) for p in inputs])
        atomic_write_text(config_path_for(Path(output), None), yaml.safe_dump(saved, sort_keys=False))
    return report


def _shard_config(inputs: Sequence[str | Path]) -> dict[str, Any] | None:
    """The first extraction config saved beside one of the shards (None when none was saved)."""
    for item in inputs:
        path = Path(item)
        for cfg in [config_path_for(path, None), *sorted(path.parent.glob(path.name + ".extract-shard-*.yaml"))]:
            if cfg.is_file():
                loaded = yaml.safe_load(cfg.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    return loaded
    return None
