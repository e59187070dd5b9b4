"""The extraction pipeline: decode → teachers → store, resumable, sharded, failures as data.

Chen et al. ("Distilling Audio-Visual Knowledge by Compositional Contrastive Learning",
CVPR 2021) distil a video student from an audio teacher (PANNs CNN14) and an image teacher
(ImageNet ResNet-34). The teachers are frozen, so ccl-cache runs them once per clip and caches
what they say in a store (``ccl_cache.store``); training then reads the cache.

Three stages overlap:

1. **decode** in worker processes (``forkserver``: fresh processes, never forked from the one
   running CUDA and threads): each clip is probed, its decodable span and its audio's span
   measured (``media.scan_packets``), its audio read at the audio teacher's sample rate and its
   frames read at the image teacher's size. A clip that overruns ``timeout_s`` has its worker
   killed and replaced; the clip is recorded as a ``"timeout"`` failure.
2. **inference** in the calling thread: batched, ``torch.inference_mode``; on CPU the teachers
   run in ``channels_last`` (same values, faster with oneDNN; docs/performance.md). With ``amp``: autocast to bfloat16 on CUDA (float16 on GPUs
   without bfloat16, image teachers only: log-mel powers overflow float16) and on CPUs with
   bfloat16 units (AMX / AVX512-BF16: a further 1.7-2.8x for the small teachers, 2.8x for
   ResNet-18; embeddings within cosine 0.99999 of float32); other CPUs stay in float32.
3. **write** in a background thread: whole store chunks are committed in the order *failures,
   data, done ledger* (``Store.write_rows`` writes the data before the done flags), so a kill at
   any moment loses at most the chunks in flight and never leaves a row marked done that is not.

Policies (the frame and audio policies and the dtype are part of each teacher's fingerprint in
the store, so a resume with other settings is refused rather than mixed in):

* **Clip window**: the manifest's ``[start, end)`` or the whole file; times are seconds relative
  to the file's start (``ccl_cache.media``). Partially decodable files (``coverage`` = fraction of
  the window that decodes) are cut to their decodable span; below ``min_coverage`` the clip is a
  ``"partial"`` failure.
* **Frames** (image teachers): ``frames_per_clip`` K frames at the centres of K equal parts of
  the window, ``t_k = s + (k + 1/2)(e - s)/K``; decoded with the shorter side at
  ``image_size`` (aspect kept), centre-cropped by the teacher. Stored: embedding (N, K, D);
  ``times[n, k] = (pts, pts)`` — the presentation time of the decoded frame, an instant.
  ``frame_sampling`` says which frame stands for ``t_k``: ``"spread"`` (default) the frame
  displayed at ``t_k`` (``media.read_frames``: decodes from the keyframe before each ``t_k``);
  ``"keyframes"`` a keyframe near ``t_k``, distinct ones while the clip has enough
  (``media.read_keyframes``: decodes keyframes only, ~10x fewer frames on long GOPs; with few
  keyframes several of the K frames are the same picture, and a keyframe may lie just outside the
  window). ``times`` holds the pts actually decoded either way, so training still picks a frame
  by its true time.
* **Audio** (audio teachers): clip level by default — one embedding of the whole window,
  (N, D), ``times[n, 0] = (s, e)``. With ``audio_segment`` L seconds: consecutive L-second
  segments from the window start, (N, K_a, D) with K_a the most segments any clip has; a tail
  shorter than L is dropped unless the clip is shorter than one segment (then it is one short
  segment). Unused segment slots have mask False. Audio is never zero-padded to a batch:
  padding changes a pooled embedding, so clips (segments) of equal length are batched together
  and others run in their own batches (the 10 s clips of VGGSound form one batch).
* **Missing audio** (no audio stream) is not a failure: mask False, zero embedding.
* **Partial audio**: where the audio stream does not reach the window (audio shorter than the
  video, or starting late) ``media.read_audio`` pads it with zeros. The fraction of the window its
  packets cover goes to ``extraction/audio_coverage`` (float32, NaN = not measured or no audio
  stream); below ``min_coverage`` the clip's audio is an ``"audio"``-stage ``"partial-audio"``
  failure (mask False, the image embedding kept). The rule is recorded as ``audio_padding`` in the
  audio teacher's fingerprint, so a store made before it (zero-padded clips stored as present)
  is refused on resume rather than mixed with it: re-extract it with ``overwrite``.
* **Coverage** of every decoded clip goes to the per-clip array ``extraction/coverage`` (float32,
  NaN = not measured), failed or not. The packets the video decoder rejected while reading a
  clip's frames (``Frames.decode_errors``) go to ``extraction/decode_errors`` (int32, -1 = no
  frames read). ``strict`` makes a clip with decoder errors a ``"decode"`` failure; by default
  such damage is tolerated (and counted) when frames come out.
* **Audio track**: the first audio stream in file order (``media.read_audio(stream=0)``),
  recorded as ``audio_stream: 0`` in the audio teacher's fingerprint.
* **Failures** (decode errors, timeouts, crashed workers, ``"partial"``, ``"partial-audio"``, ``"teacher-nonfinite"``
  outputs, ``"teacher-error"``) are data: the failed modality's row gets mask False and a zero
  embedding (a file that does not decode fails every modality; an audio-only problem leaves the
  image embedding valid), is marked done (a plain rerun skips it; ``retry_failed`` redoes failed
  and unfinished rows, and clears a row's ledger entry when it succeeds for every teacher stored)
  and is recorded in the store's failure ledger and in ``<store>.failures.jsonl``.

Files written beside the store: ``<store>.extract.yaml`` (the resolved config: absolute paths,
the shard and device used; Zarr shards: ``<store>.extract-shard-I-of-N.yaml``) and
``<store>.failures.jsonl`` (one JSON line per failure: time, row, id, path, stage, reason,
message, coverage). Manifests are read with ``check_files=False``: a missing file is a
``"not-found"`` failure of its row, not an error that stops the run.

Scale-out: ``shard="I/N"`` (or ``RANK``/``WORLD_SIZE`` from torchrun) processes a contiguous,
chunk-aligned block of rows (``store.schema.shard_slices``). Zarr shards write into one store
concurrently, each under its own lease; HDF5 shards write ``<stem>.shard-I-of-N.h5`` files that
``merge_shards`` joins.

Modules: ``config`` (:class:`ExtractConfig`, the shard, torch threads), ``output`` (the paths
beside the store, write and free-space checks, the store opened or created), ``decode`` (one clip
in a worker; :class:`DecodePool`), ``infer`` (the teachers built, fingerprinted and run), ``plan``
(the rows left to do, their decode tasks, decoded clips regrouped into chunks), ``writer`` (the
writer thread), ``run`` (:func:`run_extraction`, :func:`merge_shards`), ``frame_cache``
(``ccl-cache cache-clips``: each video of a store decoded once into its ``/frames`` for training),
and the plans the commands print: ``budget`` (extract's disk, and its timed probe of the first
clips, :func:`probe_extraction`) and ``cache_budget`` (the frame cache's bytes, :func:`cache_bytes`,
which ``build_frame_cache`` checks the disk with too, and its timed probe).
Worker processes come from :mod:`ccl_cache.workers`.

The names below load their module on first use, and torch is imported only inside the functions
that need it: decode workers import ``ccl_cache.extract.decode`` (``forkserver``) and need only
PyAV and numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

# name → submodule, loaded on first access (see the module docstring: workers must stay light).
_EXPORTS = {
    **dict.fromkeys((
        "AUDIO_PADDING", "EXIT_FAILED_CLIPS", "EXIT_OK", "FRAME_DECODE", "MAX_IMAGE_SIZE", "FRAME_SAMPLING",
        "FRAME_TIMES", "ExtractConfig",
        "inference_threads", "resolve_shard", "resolved_config", "shard_label",
    ), "config"),
    **dict.fromkeys((
        "FAILURE_LOG_SUFFIX", "check_output_location", "config_path_for", "estimate_store_bytes",
        "failure_log_path", "open_or_create_store", "store_path_for",
    ), "output"),
    **dict.fromkeys((
        "AUDIO_STREAM", "ClipTask", "DecodeFn", "DecodePool", "DecodeSpec", "DecodedClip", "Failure", "decode_clip",
        "frame_size", "frame_times",
    ), "decode"),
    **dict.fromkeys((
        "FLOAT16_MAX", "TeacherRows", "TeacherRunner", "autocast_dtype", "build_teachers", "teacher_dim_hint",
        "teacher_fingerprint",
    ), "infer"),
    **dict.fromkeys(("ChunkPlan", "plan_chunks"), "plan"),
    **dict.fromkeys(("ChunkJob", "ProgressEvent", "RunCounters", "StoreWriter", "progress_event", "write_error"),
                    "writer"),
    **dict.fromkeys(("ExtractSummary", "merge_shards", "run_extraction"), "run"),
    **dict.fromkeys(("FrameCacheConfig", "FrameCacheSummary", "build_frame_cache"), "frame_cache"),
    **dict.fromkeys(("PROBE_CLIPS", "extraction_plan", "plan_extraction", "probe_extraction"), "budget"),
    **dict.fromkeys(("PROBE_ROWS", "cache_bytes", "plan_frame_cache"), "cache_budget"),
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ccl_cache.extract' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
