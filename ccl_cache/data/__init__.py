"""Training data: clip windows of a store's videos with the cached teacher embeddings aligned.

Chen et al., "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (CVPR
2021) train the video student on 16 consecutive frames at 112×112: a random temporal start,
RandomResizedCrop (scale 0.25–1, ratio 3/4–4/3) and a horizontal flip, applied identically to
every frame of the clip, and Kinetics mean/std normalisation. Validation uses 3 evenly spaced
centre-cropped clips per video (clip top-1); the test protocol averages the softmax over
non-overlapping windows covering the whole video (video top-1). See docs/method.md#training-clips and #recognition.

One interface, two frame sources: the original media files (decoded with ``media.read_clip`` in
DataLoader workers) or a training frame cache in the store (:mod:`ccl_cache.extract.frame_cache` decodes each
video once into ``/frames``; ``ccl-cache cache-clips``). Frames from either are uint8 at the
"base size" — ``(round(8/7·S), round(171/112·S))``, i.e. 128×171 for S = 112, as torchvision's
video reference resizes Kinetics — and crops are taken from there.

Teacher embeddings are loaded into RAM once per dataset as float32 tensors (forked workers share
them copy-on-write), and the DataLoader's batches look them up with one vectorised gather per
teacher (``ClipDataset.__getitems__``: about the cost of a plain numpy ``emb[rows]``, see
benchmarks/bench_distill_step.py); when they would not fit they are read lazily from the store
instead (one log line says so, with sizes). The audio embedding is the clip's (or, with segments,
the segment overlapping the window most); the image embedding is a cached frame whose timestamp
lies inside the sampled window (a random one in training), else the frame nearest the window
centre. Masks say which rows/frames are present.

Modules, in the order the data flows through them:

- :mod:`~ccl_cache.data.transforms`: clip geometry (:class:`ClipSpec`) and augmentation;
- :mod:`~ccl_cache.data.splits`: train/val/test rows (:func:`make_splits`) and the one stratified
  hold-out rule (:func:`carve_val`, also used by ``ccl-cache teach``);
- :mod:`~ccl_cache.data.teacher_table`: teacher embeddings aligned with a window (:class:`TeacherTable`);
- :mod:`~ccl_cache.data.frames`: frame sources (:class:`FrameReader`, :func:`clip_infos`) and the
  frame cache's reading side (:class:`FrameCacheIndex`);
- :mod:`~ccl_cache.data.datasets`: :class:`ClipDataset` (windows of the frame cache decoded in the
  loader's workers, or on the training device after it: :data:`DECODES`, :meth:`ClipDataset.finish`),
  :class:`VideoWindows`, :func:`collate_clips`, :func:`collate_windows`;
- :mod:`~ccl_cache.data.loader`: :class:`EpochSampler`, :func:`make_loader`, :func:`default_workers`.
"""

from __future__ import annotations

from ccl_cache.data.datasets import (
    DECODES, ClipDataset, EncodedClips, VideoWindows, collate_clips, collate_windows, resolve_decode,
)
from ccl_cache.data.frames import ClipInfo, FrameCacheIndex, FrameReader, Window, clip_infos
from ccl_cache.data.loader import DEFAULT_WORKERS, EpochSampler, default_workers, make_loader
from ccl_cache.data.splits import MODALITIES, Splits, carve_val, make_splits, resolve_teachers
from ccl_cache.data.teacher_table import TeacherTable, available_memory, pick_slot
from ccl_cache.data.transforms import (
    KINETICS_MEAN, KINETICS_STD, ClipSpec, Crop, apply_crop, augment, center, crop_params, draw_crop, normalize,
)

__all__ = [
    # transforms
    "KINETICS_MEAN", "KINETICS_STD", "ClipSpec", "Crop", "crop_params", "draw_crop", "apply_crop", "normalize",
    "augment", "center",
    # splits
    "MODALITIES", "Splits", "resolve_teachers", "carve_val", "make_splits",
    # teacher_table
    "available_memory", "pick_slot", "TeacherTable",
    # frames
    "ClipInfo", "clip_infos", "Window", "FrameReader", "FrameCacheIndex",
    # datasets
    "DECODES", "resolve_decode", "ClipDataset", "EncodedClips", "collate_clips", "VideoWindows", "collate_windows",
    # loader
    "EpochSampler", "DEFAULT_WORKERS", "default_workers", "make_loader",
]
