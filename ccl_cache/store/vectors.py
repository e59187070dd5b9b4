"""Clip-level teacher vectors: one vector per clip, whatever the teacher's frames (what indexes and
gap scores are made of)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ccl_cache.errors import ConfigError


_SPREAD_BLOCK = 4096  # rows per block of the frame spread's float64 deviations


def teacher_vectors(store: Any, key: str, rows: np.ndarray, spread: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Clip vectors of a teacher for ``rows``: frame-level (K, D) rows averaged over their valid frames.

    ``spread``: a frame-level teacher's clip vector is (2D,), the frames' mean followed by their
    per-dimension standard deviation over the valid frames (0 for a clip with one valid frame):
    how much the picture changes over the clip, which the mean alone loses (a still object and a
    moving one of the same appearance share their mean frame). No effect on clip-level teachers.

    Returns the vectors of the rows kept, the (len(rows),) keep mask (extracted and present) and the
    count left out per reason. The one reader of clip-level teacher vectors: ``ccl-cache index`` and ``ccl-cache gaps`` use it."""
    if key not in store.teacher_keys():
        raise ConfigError(f"{store.path}: no teacher {key!r} (teachers: {', '.join(store.teacher_keys()) or 'none'})")
    done = np.asarray(store.teacher(key).done[:], dtype=bool)[rows]
    emb, _, mask = store.read_rows(key, rows)
    mask = np.asarray(mask, dtype=bool)
    if emb.ndim == 3:
        weights = mask.astype(np.float32)
        counts = weights.sum(axis=1)
        # einsum sums the valid frames without materialising a masked (n, K, D) copy.
        mean = np.einsum("nkd,nk->nd", emb, weights) / np.maximum(counts, 1.0)[:, None]
        if spread:
            # Two passes (deviations from the mean) rather than E[x²] − E[x]², which cancels badly in
            # float32; in blocks of rows, so the float64 deviations never cover the whole store.
            std = np.empty_like(mean)
            for lo in range(0, len(mean), _SPREAD_BLOCK):
                block = slice(lo, lo + _SPREAD_BLOCK)
                deviation = np.asarray(emb[block], np.float64) - mean[block, None, :]
                var = np.einsum("nkd,nk->nd", deviation**2, weights[block]) / np.maximum(counts[block], 1.0)[:, None]
                std[block] = np.sqrt(var)
            mean = np.hstack([mean, std])
        emb = mean
        present = counts > 0
    else:
        present = mask
    keep = done & present
    excluded = {"not_extracted": int((~done).sum()), "missing": int((done & ~present).sum())}
    return emb[keep], keep, excluded
