"""Clip records and the readers that turn dataset listings into them.

A :class:`Manifest` is the ordered list of clips a run works on (its order is the store's row
order) plus the sorted class names whose index is the label id. Readers, one per listing format,
are registered in :data:`READERS` (the CLI's ``--format`` choices come from it):

``csv``
    generic CSV with a header: required ``id,path,label``; optional ``split,start,end``; other
    columns are ignored. Relative paths are resolved against ``root`` (default: the CSV's folder).
``vggsound``
    the VGGSound listing without header: ``youtube_id,start_seconds,label,split``. Files are found
    with ``pattern`` (default ``"{youtube_id}_{start:06d}.mp4"``) in ``root``, ``root/<split>/`` or
    ``root/videos/``. VGGSound files are already the 10 s cuts, so records get ``start=end=None``
    (the whole file); ``clip_window=True`` sets ``start=start_seconds, end=start+window`` for
    files that are the uncut YouTube videos.
``ucf101``
    the official split lists (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``); options
    ``split_id`` (1-3) and ``classes`` (a subset to keep, e.g. the 51 classes with audio, "UCF51").
``activitynet``
    the official ``activity_net.v1-3`` JSON; one record per annotated segment, id ``f"{vid}_{k}"``;
    files ``v_<vid>`` with extension .mp4/.mkv/.webm; unlabelled testing videos are left out with a
    note in ``skipped``.
``folder``
    ``root/<class>/<file>`` or, when every top folder is a split name (train/val/test and their
    long forms), ``root/<split>/<class>/<file>``.
``webdataset``
    tar shards in the WebDataset layout (video2dataset's output): a ``.tar``, a brace pattern
    (``data/{00000..00009}.tar``), a folder of shards or a text file listing them; one record per
    sample (id: the sample key; path: ``<shard>.tar/<member>``, decoded in place by
    :mod:`ccl_cache.media`); label and split from each sample's json (``label_key``,
    ``split_key``, ``split``) or a side CSV (``labels_csv``, ``csv_key``).

Reader options are keyword arguments of :func:`load_manifest`, or follow the format name in
``format`` (what ``--format`` takes on the command line): ``"webdataset:label_key=caption,split=test"``.

Bad rows (duplicate ids, missing files, unknown labels, malformed fields, bytes that are not
UTF-8) raise :class:`~ccl_cache.errors.ManifestError` naming the file, the line and the fix; with
``skip_bad=True`` they are left out and listed in ``Manifest.skipped`` as ``(where, reason)``.
Paths are data: they are never handed to a shell.

Modules: ``records`` (ClipRecord, Manifest), ``splits`` (split names), ``parse`` (READERS and the
reader plumbing), ``formats/`` (one module per format; ``formats/braces`` expands shard patterns),
``load`` (detect_format, parse_format, load_manifest), ``write`` (write_csv).
"""

from ccl_cache.manifest.formats import (
    READERS, VIDEO_EXTENSIONS, read_activitynet, read_folder, read_generic_csv, read_ucf101, read_vggsound,
    read_webdataset,
)
from ccl_cache.manifest.formats.braces import expand_braces
from ccl_cache.manifest.load import detect_format, load_manifest, parse_format
from ccl_cache.manifest.records import ClipRecord, Manifest
from ccl_cache.manifest.splits import SPLIT_ALIASES, STUDENT_SPLITS, canonical_split, canonical_splits
from ccl_cache.manifest.write import CSV_COLUMNS, write_csv

__all__ = [
    "CSV_COLUMNS", "READERS", "SPLIT_ALIASES", "STUDENT_SPLITS", "VIDEO_EXTENSIONS",
    "ClipRecord", "Manifest",
    "canonical_split", "canonical_splits", "detect_format", "expand_braces", "load_manifest", "parse_format",
    "write_csv", "read_activitynet", "read_folder", "read_generic_csv", "read_ucf101", "read_vggsound",
    "read_webdataset",
]
