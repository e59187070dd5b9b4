"""Store schema v1: names, column types, teacher keys, shards and fingerprint comparison.

Everything that both backends and every store function must agree on lives here, so the layout
described in README.md ("The store") is written down once in code.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Mapping

from ccl_cache.errors import ConfigError, StoreError
from ccl_cache.fileio import to_plain

FORMAT = "ccl-cache"
SCHEMA_VERSION = 1

# Root groups owned by the schema; generic arrays (create_array) must live elsewhere.
RESERVED_ROOTS = frozenset({"clips", "classes", "teachers", "failures", "students"})

# /clips/<column>: one row per manifest record.  "str" = variable-length UTF-8 in both backends.
CLIP_COLUMNS: dict[str, str] = {
    "id": "str",
    "path": "str",
    "label": "int64",
    "split": "str",
    "start": "float64",  # clip window from the manifest (NaN = file start)
    "end": "float64",  # NaN = file end
    "duration": "float64",  # media duration found by extraction (NaN = not probed yet)
    "has_audio": "bool",  # found by extraction (False until probed)
}

# /teachers/<modality>/<name>/<array>: the data arrays of a teacher, and its done ledger (written
# after the data of the same rows).
TEACHER_DATA = ("embedding", "times", "mask")
TEACHER_DONE = "done"

# Root attribute naming the checksum every array carries ("crc32c" Zarr, "fletcher32" HDF5);
# absent in stores written before checksums existed (schema v1 either way).
CHECKSUMS_ATTR = "checksums"

# /failures/<column>: one row per clip; a row holds a failure when `time` is finite.
FAILURE_COLUMNS: dict[str, str] = {
    "stage": "str",
    "reason": "str",
    "message": "str",
    "time": "float64",  # unix seconds of the record (NaN = no failure)
    "coverage": "float32",  # fraction of the clip that decoded (NaN = not given)
}

# Per-clip arrays written by extraction beside the teachers (generic arrays, one row per clip).
# (N,) float32: fraction of the clip's window that decodes, from the video stream's packets (the audio's
# for audio-only files): a short audio track lowers AUDIO_COVERAGE_PATH only.
COVERAGE_PATH = "extraction/coverage"
# (N,) float32: fraction of the clip's window that the embedded audio stream's packets cover (the rest
# is zero-padded); NaN = not measured or no audio stream.
AUDIO_COVERAGE_PATH = "extraction/audio_coverage"
DECODE_ERRORS_PATH = "extraction/decode_errors"  # (N,) int32: packets rejected (-1 = no frames read)
# Per-clip curation scores (``ccl-cache gaps``): how much a clip's sound disagrees with its picture
# (and label); higher = more of a gap. (N,) float32, NaN = not scored. Its attributes record the
# method, its config and the teacher keys; "created" is written last (absent = an unfinished write).
GAP_SCORE_PATH = "curation/gap_score"

# The frame cache (``ccl-cache cache-clips``): decoded video frames for training.
FRAMES_GROUP = "frames"
FRAMES_COUNT = f"{FRAMES_GROUP}/count"  # (N,) int64 frames cached per row (<= 0: not cached)
FRAMES_OFFSET = f"{FRAMES_GROUP}/offset"  # (N,) int64 first frame of each row in FRAMES_DATA
FRAMES_DATA = f"{FRAMES_GROUP}/data"  # (F, H, W, 3) uint8, rows concatenated
FRAMES_TIMES = f"{FRAMES_GROUP}/times"  # (F,) float64 presentation time of each cached frame
FRAMES_PLANNED = f"{FRAMES_GROUP}/planned"  # (N,) int64 frames the plan reserves per row
FRAMES_RATE = f"{FRAMES_GROUP}/rate"  # (N,) float64 cache rate per row (frames/s)
# Codecs of the "bytes" layout (ccl_cache.codecs, e.g. jpeg) keep each frame as variable-length bytes
# instead of FRAMES_DATA: appended to byte segments (1-D uint8, written once, in order; a resumed
# build opens a new one) and located per frame by FRAMES_ENCODED_INDEX.
FRAMES_ENCODED = f"{FRAMES_GROUP}/encoded"  # group of the byte segments
FRAMES_ENCODED_SEGMENT = FRAMES_ENCODED + "/{segment}"  # (B_k,) uint8: segment k (0, 1, ...)
FRAMES_ENCODED_INDEX = f"{FRAMES_GROUP}/encoded_index"  # (F, 3) int64 (segment, start byte, length) per frame


FILL: dict[str, Any] = {"str": "", "int64": -1, "float64": math.nan, "float32": math.nan, "bool": False}

EMBEDDING_DTYPES = ("float16", "float32")
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def teacher_path(key: str) -> str:
    """Group path of a teacher key ``"<modality>/<name>"``."""
    validate_key(key)
    return f"teachers/{key}"


def teacher_array(path: str) -> tuple[str, str] | None:
    """``"teachers/audio/x/embedding"`` → ``("audio/x", "embedding")``; None for other paths."""
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "teachers" and parts[3] in (*TEACHER_DATA, TEACHER_DONE):
        return f"{parts[1]}/{parts[2]}", parts[3]
    return None


def validate_key(key: str) -> None:
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 2 or not all(_KEY_PART.match(p) for p in parts):
        raise ConfigError(
            f"teacher key {key!r} is not '<modality>/<name>' (letters, digits, '_', '.', '-'); "
            "use e.g. 'audio/small_audio' or 'image/resnet34'"
        )


def validate_run(run: str) -> None:
    if not isinstance(run, str) or not _KEY_PART.match(run):
        raise ConfigError(
            f"student run name {run!r} must be letters, digits, '_', '.', '-' (no '/'); "
            "name the run after its output directory, e.g. 'ccl_audio'"
        )


def normalize_path(path: str) -> str:
    """``"/frames/rgb/"`` → ``"frames/rgb"``; refuses empty or parent components."""
    parts = [p for p in str(path).strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ConfigError(f"store path {path!r} is not a group/array path like 'frames/rgb'")
    return "/".join(parts)


def plain_json(value: Any) -> Any:
    """Round-trip through JSON so tuples/lists and numpy scalars compare equal after storage."""
    return json.loads(json.dumps(to_plain(value), default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, prefix=f"{name}."))
        else:
            out[name] = v
    return out


def diff_fingerprints(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Lines ``"preprocess.sample_rate: 32000 (store) vs 16000 (now)"`` for each differing field."""
    a, b = flatten(plain_json(stored)), flatten(plain_json(now))
    lines = []
    for name in sorted(set(a) | set(b)):
        if a.get(name, _ABSENT) != b.get(name, _ABSENT):
            lines.append(f"{name}: {_show(a.get(name, _ABSENT))} (store) vs {_show(b.get(name, _ABSENT))} (now)")
    return lines


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else json.dumps(value)


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """``"3/8"`` → ``(3, 8)``: shard index I (0-based, 0 ≤ I < N) of N."""
    try:
        if isinstance(shard, str):
            i_text, n_text = shard.split("/")
            index, count = int(i_text), int(n_text)
        else:
            index, count = (int(v) for v in shard)
    except (ValueError, TypeError):
        raise ConfigError(f"shard {shard!r} is not 'I/N' (e.g. '0/4': first of four shards)") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {shard!r}: need 0 <= I < N (shards are numbered 0..N-1)")
    return index, count


def shard_slices(n: int, chunk_rows: int, shard: str | tuple[int, int] | None) -> list[slice]:
    """Chunk-aligned row slices (one per chunk) owned by ``shard``: a contiguous block of chunks.

    Shards own whole chunks so concurrent writers never touch the same chunk of any array.
    ``shard=None`` returns every chunk.
    """
    n_chunks = -(-n // chunk_rows)
    first, last = 0, n_chunks
    if shard is not None:
        index, count = parse_shard(shard)
        first, last = (index * n_chunks) // count, ((index + 1) * n_chunks) // count
    return [slice(c * chunk_rows, min(n, (c + 1) * chunk_rows)) for c in range(first, last)]


def new_generation() -> str:
    """A fresh generation id, written when a store or a teacher's arrays are (re)created, so a
    reader can tell that what it loaded was replaced under it (timestamps repeat within a second)."""
    return uuid.uuid4().hex


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions(io_library: str) -> dict[str, str]:
    """Versions recorded in the root attrs (read from metadata: importing torch here is slow)."""
    from ccl_cache import __version__

    names = ["torch", "av", "numpy", io_library]
    versions = {"ccl-cache": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if io_library == "h5py":
        import h5py

        versions["hdf5"] = h5py.version.hdf5_version
    return versions


def check_root_attrs(path: str, attrs: Mapping[str, Any]) -> None:
    """Refuse a container that is not a ccl-cache store of a schema this code can read."""
    if attrs.get("format") != FORMAT:
        raise StoreError(
            f"{path}: not a ccl-cache store (root attribute format={attrs.get('format')!r}, "
            f"expected {FORMAT!r}); point at a store written by `ccl-cache extract`"
        )
    version = attrs.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise StoreError(f"{path}: damaged store: schema_version={version!r} (expected an integer >= 1)")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: written with store schema v{version}, this ccl-cache reads up to "
            f"v{SCHEMA_VERSION}; upgrade ccl-cache (pip install -U ccl-cache)"
        )
    for name in ("n", "chunk_rows", "manifest_sha256"):
        if name not in attrs:
            raise StoreError(f"{path}: damaged store: root attribute {name!r} is missing")
