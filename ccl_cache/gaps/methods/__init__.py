"""Gap scoring methods, one file each, registered in :data:`METHODS` (``ccl-cache gaps --method``).

Adding a method is one file here that decorates a ``(GapData) -> (n,) scores`` function with
``@METHODS.register("name")`` and one import line below.
"""

from __future__ import annotations

from ccl_cache.gaps.methods.base import METHODS, class_fits, cross_fitted, guesses, probe_log_proba, summary
from ccl_cache.gaps.methods import combined as _combined  # noqa: F401  (registers "combined")
from ccl_cache.gaps.methods import crossmodal as _crossmodal  # noqa: F401  (registers "crossmodal")
from ccl_cache.gaps.methods import likelihood as _likelihood  # noqa: F401  (registers "likelihood")
from ccl_cache.gaps.methods import probe as _probe  # noqa: F401  (registers "probe")
from ccl_cache.gaps.methods import single as _single  # noqa: F401  (registers "audio", "image")

__all__ = ["METHODS", "class_fits", "cross_fitted", "guesses", "probe_log_proba", "summary"]
