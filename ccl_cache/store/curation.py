"""Curation scores kept in a store: the per-clip gap score of ``ccl-cache gaps`` (written here,
read by ``distill --exclude-gaps`` and ``index --exclude-gaps``).

The score says how much a clip's sound disagrees with its picture (the *semantic gap* of Chen et
al., CVPR 2021); :mod:`ccl_cache.gaps` computes it. This module only stores and reads it, so the
trainer and the index need nothing of the scoring code.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ccl_cache.errors import ConfigError, StoreError
from ccl_cache.store.schema import GAP_SCORE_PATH, utc_now


def write_gap_score(store: Any, scores: np.ndarray, attrs: Mapping[str, Any]) -> None:
    """Write (N,) ``scores`` (NaN = not scored) to :data:`GAP_SCORE_PATH`, replacing an earlier one,
    with ``attrs`` (method, config, teacher keys). ``store``: open for writing, its lease held."""
    values = np.asarray(scores, dtype=np.float32)
    if values.shape != (store.n,):
        raise StoreError(f"{store.path}: gap scores of shape {values.shape}, expected ({store.n},)")
    array = store.create_array(GAP_SCORE_PATH, (store.n,), "float32", chunk_rows=store.chunk_rows, overwrite=True,
                               fill_value=math.nan)
    array[:] = values
    # "created" last: a reader refuses an array a killed write left without it.
    store.set_attrs(GAP_SCORE_PATH, {**dict(attrs), "created": utc_now()})


def read_gap_score(store: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The stored (N,) float32 gap scores and their attributes; ConfigError naming the command that
    writes them when the store has none (or only an unfinished write)."""
    if not store.has(GAP_SCORE_PATH):
        raise ConfigError(f"{store.path}: no gap scores ({GAP_SCORE_PATH}); score the clips first with "
                          f"`ccl-cache gaps {store.path}`")
    attrs = store.get_attrs(GAP_SCORE_PATH)
    if "created" not in attrs:
        raise ConfigError(f"{store.path}: the gap scores ({GAP_SCORE_PATH}) were not written to the end; "
                          f"write them again with `ccl-cache gaps {store.path}`")
    return np.asarray(store.array(GAP_SCORE_PATH)[:], dtype=np.float32), attrs


def check_threshold(threshold: Any) -> float:
    """``--exclude-gaps`` THRESHOLD as a finite float (ConfigError otherwise)."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"exclude_gaps={threshold!r}: expected a finite gap score threshold (clips scoring above "
                          "it are left out); see the scores with `ccl-cache gaps STORE`")
    return value


def gap_excluded(store: Any, rows: np.ndarray, threshold: float) -> np.ndarray:
    """Bool mask over ``rows``: clips whose stored gap score is above ``threshold`` (an unscored
    clip, NaN, is kept)."""
    limit = check_threshold(threshold)
    scores, _ = read_gap_score(store)
    picked = scores[np.asarray(rows, dtype=np.int64)]
    return np.nan_to_num(picked, nan=-np.inf) > limit
