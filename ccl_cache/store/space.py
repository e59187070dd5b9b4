"""Disk space and failed writes: the checks and messages every command that fills a store shares.

Both writers of a store (``ccl-cache extract`` and ``ccl-cache cache-clips``) commit their work in
units whose completion flag is written last, so what was written before a failure stays valid and a
rerun resumes after it. These helpers turn the failure into a :class:`StoreError` that says why
(full disk, quota, read-only store) and how to go on, and refuse a run up front when the disk
clearly cannot hold it.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from ccl_cache.errors import StoreError

RESUME_HINT = ("the rows written so far are kept (the store is resumable); then rerun the same command: it resumes "
               "where it stopped")


def free_bytes(store_path: str | Path) -> int:
    """Free bytes on the file system that holds (or will hold) ``store_path``."""
    return shutil.disk_usage(Path(store_path).resolve().parent).free


def human_bytes(count: float) -> str:
    """``1536`` → ``"1.5 KiB"``: the unit that keeps the number readable (never "0.00 GiB")."""
    if abs(count) < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB"):
        count /= 1024
        if abs(count) < 1024:
            return f"{count:.2f} {unit}"
    return f"{count / 1024:.2f} GiB"


def check_free_space(store_path: str | Path, needed: int, fix: str) -> None:
    """StoreError when the store's file system has fewer than ``needed`` free bytes; ``fix`` says what else to try."""
    parent = Path(store_path).resolve().parent
    free = free_bytes(store_path)
    if needed > free:
        raise StoreError(
            f"not enough free disk space at {parent}: {store_path} needs about {human_bytes(needed)} more, "
            f"{human_bytes(free)} are free; free some space, choose another location, or {fix}"
        )


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (storage libraries wrap them), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def explain_write_error(store_path: str | Path, exc: BaseException, still_needed: int | None,
                        resume: str = RESUME_HINT) -> StoreError:
    """The StoreError for a failed store write: a full disk or a read-only store is explained.

    ``still_needed``: bytes the rest of the run would add (for the "free this much" advice), or None.
    """
    err = os_error(exc)
    code = err.errno if err is not None else None
    text = f"{exc}".lower()
    where = Path(store_path).resolve().parent
    if code in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text or "quota" in text:
        need = f", the rest of the run needs about {human_bytes(still_needed)} more" if still_needed is not None else ""
        return StoreError(
            f"{store_path}: the disk is full (or over quota) at {where}: {human_bytes(free_bytes(store_path))} free{need}. "
            f"Free space on this file system (old stores, checkpoints, frame caches), or move the store elsewhere; "
            f"{resume}"
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreError(f"{store_path}: cannot write ({err.strerror if err else exc}); make the store writable or "
                          f"copy it to a writable place and pass that path; {resume}")
    return StoreError(f"{store_path}: writing failed: {exc!r}; {resume}")
