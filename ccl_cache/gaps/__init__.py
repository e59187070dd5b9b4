"""Finding the clips whose sound disagrees with their picture: the *semantic gap* of Chen et al.,
"Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (CVPR 2021), which CCL
bridges and which a curator may rather leave out.

- :mod:`~ccl_cache.gaps.config`: :class:`GapConfig`;
- :mod:`~ccl_cache.gaps.data`: the audio and image vectors of a store's clips (:class:`GapData`);
- :mod:`~ccl_cache.gaps.models`: the closed-form probe and cross-modal map, and the folds;
- :mod:`~ccl_cache.gaps.methods`: the scoring methods (:data:`METHODS`, one file each);
- :mod:`~ccl_cache.gaps.score`: :func:`score_gaps` → :class:`GapResult`, the table and the store array;
- :mod:`~ccl_cache.gaps.evaluate`: average precision and precision@n against a ground truth.

The per-clip score is kept in the store (:data:`ccl_cache.store.schema.GAP_SCORE_PATH`, read by
``distill --exclude-gaps`` and ``index --exclude-gaps`` through :mod:`ccl_cache.store.curation`).
"""

from __future__ import annotations

from ccl_cache.gaps.config import GapConfig
from ccl_cache.gaps.evaluate import average_precision, evaluate_ranking, precision_at_n, truth_mask
from ccl_cache.gaps.methods import METHODS
from ccl_cache.gaps.score import GapResult, save_to_store, score_gaps, write_table

__all__ = ["GapConfig", "GapResult", "METHODS", "average_precision", "evaluate_ranking", "precision_at_n",
           "save_to_store", "score_gaps", "truth_mask", "write_table"]
