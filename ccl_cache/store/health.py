"""Store health and summary (what `ccl-cache info` shows).

Scans every teacher block by block (stores hold ~200k rows): done/present/masked/failed counts,
rows with NaN or inf, embedding-norm statistics of the present vectors, and duplicated rows
(identical embeddings of different clips usually mean a decoding or batching bug upstream).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict
from typing import Any

import numpy as np

from ccl_cache.store.base import Store
from ccl_cache.store.failures import rows_failed_for
from ccl_cache.store.lease import is_alive
from ccl_cache.store.schema import AUDIO_COVERAGE_PATH, COVERAGE_PATH, DECODE_ERRORS_PATH

COVERAGE_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)
PARTIAL_BELOW = 0.99  # healthy files measure 1.0; below this a clip is partially decodable


def summarize(store: Store) -> dict[str, Any]:
    """Everything `ccl-cache info` reports, as a JSON-friendly dict."""
    failures = store.failures()
    keys = store.teacher_keys()
    modalities = {key.split("/")[0] for key in keys}
    return {
        "path": str(store.path),
        "backend": store.backend,
        "n": store.n,
        "chunk_rows": store.chunk_rows,
        "compression": store.compression,
        "checksums": store.checksums,  # None: written before checksums existed
        "size_bytes": store.size_bytes(),
        "provenance": dict(store.attrs),
        "clips": _clip_summary(store),
        "teachers": {key: teacher_health(store, key, rows_failed_for(store.n, failures, key, modalities))
                     for key in keys},
        "failures": _failure_summary(failures, failure_list(store, failures[:LISTED_FAILURES])),
        "coverage": coverage_summary(store, failures),
        "audio_coverage": audio_coverage_summary(store, failures),
        "decode_errors": decode_error_summary(store),
        "students": {run: {"dim": int(store._b.array_info(f"students/{run}/embedding")[0][1]),
                           "attrs": store.student_attrs(run)} for run in store.student_runs()},
        "arrays": {path: {"shape": list(info[0]), "dtype": info[1]}
                   for path in store.generic_arrays() for info in [store._b.array_info(path)]},
        "leases": [{**asdict(lease), "alive": is_alive(lease)} for lease in store.leases()],
    }


def _clip_summary(store: Store) -> dict[str, Any]:
    clips, classes = store.clips, store.classes
    splits, split_counts = np.unique(clips.split.astype(str), return_counts=True)
    labels, label_counts = np.unique(clips.label, return_counts=True)
    probed = np.isfinite(clips.duration)
    return {
        "n": len(clips),
        "by_split": {str(s): int(c) for s, c in zip(splits, split_counts)},
        "by_class": {(classes[int(k)] if 0 <= k < len(classes) else str(int(k))): int(c)
                     for k, c in zip(labels, label_counts)},
        "classes": len(classes),
        "probed": int(probed.sum()),
        "no_audio": int((probed & ~clips.has_audio).sum()),
        "total_duration_s": float(np.nansum(clips.duration)),
    }


class _Stats:
    """Streaming count/mean/std/min/max in float64."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, values: np.ndarray) -> None:
        if values.size:
            v = values.astype(np.float64)
            self.count += v.size
            self.total += float(v.sum())
            self.squares += float((v * v).sum())
            self.low, self.high = min(self.low, float(v.min())), max(self.high, float(v.max()))

    def result(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        mean = self.total / self.count
        var = max(0.0, self.squares / self.count - mean * mean)
        return {"count": self.count, "mean": mean, "std": math.sqrt(var), "min": self.low, "max": self.high}


def teacher_health(store: Store, key: str, failed: np.ndarray | None = None) -> dict[str, Any]:
    """Counts and embedding statistics of one teacher (failed: rows with a failure record)."""
    t = store.teacher(key)
    row_bytes = int(np.prod(t.embedding.shape[1:])) * 4
    present = np.zeros(store.n, dtype=bool)
    done_count = nonfinite = duplicates = 0
    norms, seen = _Stats(), set()
    row_norm = np.full(store.n, np.nan)  # each present row's mean vector norm: 8 bytes a clip
    for start, stop in store._blocks(row_bytes):
        done = np.asarray(t.done[start:stop], dtype=bool)
        if not done.any():
            continue
        done_count += int(done.sum())
        raw = t.embedding[start:stop][done]
        mask = np.asarray(t.mask[start:stop], dtype=bool)[done]
        rows_present = mask if mask.ndim == 1 else mask.any(axis=1)
        present[np.flatnonzero(done) + start] = rows_present
        emb = raw.astype(np.float32)
        finite = np.isfinite(emb).reshape(len(emb), -1).all(axis=1)
        nonfinite += int((~finite & rows_present).sum())
        vec_norms = np.linalg.norm(emb, axis=-1)  # (r,) or (r, K)
        ok = (mask if mask.ndim == vec_norms.ndim else rows_present) & np.isfinite(vec_norms)
        norms.add(vec_norms[ok])
        per_row = np.where(ok, vec_norms, np.nan) if vec_norms.ndim == 1 else _nanmean_rows(np.where(ok, vec_norms, np.nan))
        row_norm[np.flatnonzero(done) + start] = per_row
        for row in raw[rows_present]:
            digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            duplicates += digest in seen
            seen.add(digest)
    failed_rows = failed if failed is not None else np.zeros(store.n, dtype=bool)
    return {
        "dim": t.dim, "frames": t.frames, "dtype": t.dtype, "fingerprint": t.fingerprint,
        "done": done_count, "pending": store.n - done_count, "present": int(present.sum()),
        "masked": done_count - int(present.sum()), "failed": int((failed_rows & ~present).sum()),
        "nonfinite_rows": nonfinite, "duplicate_rows": duplicates, "norm": norms.result(),
        "norm_outliers": _norm_outliers(store, row_norm),
    }


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    counts = np.isfinite(values).sum(axis=1)
    sums = np.nansum(values, axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _norm_outliers(store: Store, row_norm: np.ndarray) -> dict[str, Any]:
    """Rows whose embedding norm lies far from the rest (robust z-score above OUTLIER_Z): a clip
    that is black, silent, or not what the others are, worth a look before training on it."""
    rows = np.flatnonzero(np.isfinite(row_norm))
    if rows.size < 8:
        return {"count": 0, "first": []}
    values = row_norm[rows]
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    if spread <= 0:
        return {"count": 0, "first": []}
    z = np.abs(values - median) / spread
    far = rows[z > OUTLIER_Z]
    order = far[np.argsort(-z[z > OUTLIER_Z])][:LISTED_OUTLIERS]
    ids = store.clips.id
    return {"count": int(far.size), "median": median,
            "first": [{"row": int(r), "id": str(ids[r]), "norm": float(row_norm[r])} for r in order]}


def _coverage_bins(values: np.ndarray) -> dict[str, int]:
    """Counts of ``values`` in the quarter bins of COVERAGE_BINS, labelled "0-25%" ... "75-100%"."""
    counts, _ = np.histogram(values, bins=COVERAGE_BINS) if values.size else (np.zeros(4, int), None)
    labels = [f"{int(a * 100)}-{int(b * 100)}%" for a, b in zip(COVERAGE_BINS[:-1], COVERAGE_BINS[1:])]
    return {label: int(c) for label, c in zip(labels, counts)}


def coverage_summary(store: Store, failures: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Partially decodable clips (truncated downloads) by coverage, from the extraction's per-clip
    ``extraction/coverage`` column: ``partial`` clips decode less than PARTIAL_BELOW of their window;
    ``partial_accepted`` of them were embedded from their decodable part (no failure recorded, their
    coverage was above ``--min-coverage``), the others are ``partial`` (or other) failures.
    """
    failures = store.failures() if failures is None else failures
    return _partial_summary(store, COVERAGE_PATH, [f["row"] for f in failures])


def audio_coverage_summary(store: Store, failures: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Clips whose audio stream covers only part of their window (audio shorter than the video, or
    starting late; the rest is zero-padded), from ``extraction/audio_coverage``: ``partial`` clips'
    audio covers less than PARTIAL_BELOW of the window; ``partial_accepted`` of them had their
    padded audio embedded (at least ``--min-coverage``, no failure that rules the audio out), the
    others are ``partial-audio`` (or other) failures. Clips without an audio stream are not measured.
    """
    failures = store.failures() if failures is None else failures
    return _partial_summary(store, AUDIO_COVERAGE_PATH, [f["row"] for f in failures if f["stage"] != "image"])


def _partial_summary(store: Store, path: str, failed_rows: list[int]) -> dict[str, Any]:
    """Measured/full/partial counts of the per-clip fraction array ``path``; ``partial_accepted``:
    partial clips not in ``failed_rows``."""
    if not store.has(path):
        return {"measured": 0, "full": 0, "partial": 0, "partial_accepted": 0,
                "partial_by_coverage": _coverage_bins(np.zeros(0))}
    coverage = np.asarray(store.array(path)[:], dtype=np.float64)
    measured = np.isfinite(coverage)
    partial = measured & (coverage < PARTIAL_BELOW)
    failed = np.zeros(store.n, dtype=bool)
    failed[failed_rows] = True
    return {
        "measured": int(measured.sum()),
        "full": int((measured & ~partial).sum()),
        "partial": int(partial.sum()),
        "partial_accepted": int((partial & ~failed).sum()),
        "partial_by_coverage": _coverage_bins(coverage[partial]),
    }


def decode_error_summary(store: Store) -> dict[str, int]:
    """Clips whose frames decoded although the decoder rejected packets (bit rot: tolerated unless
    ``--strict``), and the packets rejected in all, from ``extraction/decode_errors``."""
    if not store.has(DECODE_ERRORS_PATH):
        return {"clips": 0, "errors": 0}
    counts = np.asarray(store.array(DECODE_ERRORS_PATH)[:], dtype=np.int64)
    return {"clips": int((counts > 0).sum()), "errors": int(counts[counts > 0].sum())}


LISTED_FAILURES = 10  # failures `info` names one by one (`info --failures` lists them all)
OUTLIER_Z = 6.0  # a norm this many robust standard deviations (1.4826·MAD) from the median is an outlier
LISTED_OUTLIERS = 10


def failure_list(store: Store, failures: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each failure with its clip's path: id, path, stage, reason, message (in row order)."""
    failures = store.failures() if failures is None else failures
    paths = store.clips.path
    return [{"row": f["row"], "id": f["id"], "path": str(paths[f["row"]]), "stage": f["stage"],
             "reason": f["reason"], "message": f["message"]} for f in failures]


def _failure_summary(failures: list[dict[str, Any]], listed: list[dict[str, Any]]) -> dict[str, Any]:
    by_reason: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    for f in failures:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
        by_stage[f["stage"]] = by_stage.get(f["stage"], 0) + 1
    partial = np.array([f["coverage"] for f in failures if f["coverage"] is not None and f["coverage"] < 1.0])
    return {
        "total": len(failures),
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "by_stage": dict(sorted(by_stage.items(), key=lambda kv: -kv[1])),
        "partial_by_coverage": _coverage_bins(partial),
        "first": listed[:LISTED_FAILURES],
    }
