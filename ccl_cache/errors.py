"""One exception hierarchy for the whole toolkit.

Every error raised on purpose by ccl-cache derives from :class:`CclCacheError` and also from
the built-in it resembles, so ``except ValueError`` keeps working for callers that do not know
us. Messages name the file or value, what was expected, and the fix.
"""

from __future__ import annotations

from pathlib import Path


class CclCacheError(Exception):
    """Root of every error ccl-cache raises on purpose."""


class ConfigError(CclCacheError, ValueError):
    """A configuration value or command-line option is invalid."""


class MediaError(CclCacheError, ValueError):
    """A media file cannot be probed or decoded as asked.

    ``reason`` is a short machine-readable tag (``"not-found"``, ``"unreadable"``,
    ``"no-video"``, ``"no-audio"``, ``"window"``, ``"timeout"``, ``"decode"``, ...) that the
    extraction failure ledger stores; the message names the file and says what to do.
    """

    def __init__(self, path: str | Path, reason: str, message: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {message}")


class NoAudioError(MediaError):
    """The file has no audio stream (not a failure for video reading: later stages mask it)."""

    def __init__(self, path: str | Path, message: str = "has no audio stream") -> None:
        super().__init__(path, "no-audio", message)


class ManifestError(CclCacheError, ValueError):
    """A manifest row or file is malformed; the message names the file and line."""


class StoreError(CclCacheError, RuntimeError):
    """An embedding store cannot be opened, read or written as asked."""


class StoreMismatchError(StoreError):
    """A store was written with another configuration (teacher, weights, preprocessing...)."""


class StoreLockedError(StoreError):
    """Another live process holds the store's writer lease."""


class TeacherError(CclCacheError, RuntimeError):
    """A teacher network cannot be built or its weights cannot be loaded."""


class CheckpointError(CclCacheError, RuntimeError):
    """A training checkpoint is missing, damaged or from another configuration."""


class IndexMismatchError(CclCacheError, RuntimeError):
    """A FAISS index does not match its sidecar, its store or the query dimension."""


class TrainingError(CclCacheError, RuntimeError):
    """Training cannot go on (non-finite loss, a rank lost); the message says what to change."""


class ExtractError(CclCacheError, RuntimeError):
    """The extraction pipeline itself broke (a decode worker cannot start, a stage stopped)."""
