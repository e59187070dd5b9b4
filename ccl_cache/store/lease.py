"""Writer leases: one live writer per store (or per shard of a Zarr store).

A lease is a small JSON file (pid, host, time, command, shard) in a hidden directory beside the
store, ``.<store name>.ccl/`` (beside, not inside: extra files inside a Zarr group make zarr warn,
and an HDF5 store is a single file). Leases are taken and checked under an ``flock`` on
``.<store name>.ccl/lock`` so two processes on one host cannot both win. A lease whose process
is dead on this host is stale and is taken over with a warning; a live one is refused with
:class:`StoreLockedError` unless ``force=True`` (``--force``), e.g. for a writer on another host
that is known to be gone.

Shard leases (``shard="3/8"``) let the shards of one Zarr store run concurrently: shards of the
same N own disjoint chunks and do not conflict; a whole-store lease conflicts with every lease.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ccl_cache.errors import StoreLockedError
from ccl_cache.fileio import atomic_write_text
from ccl_cache.store.schema import parse_shard, utc_now

try:  # POSIX only; elsewhere the lease files alone guard (check-then-create)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class StaleLeaseWarning(UserWarning):
    """A lease left by a dead process was taken over."""


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease file says about its writer."""

    pid: int
    host: str
    time: str
    command: str
    shard: str | None
    token: str
    start_ticks: int | None = None  # process start time (Linux), guards against pid reuse

    def describe(self) -> str:
        where = f"shard {self.shard}" if self.shard else "the whole store"
        return f"pid {self.pid} on host {self.host} since {self.time} ({where}; command: {self.command})"


def lease_dir(store_path: str | Path) -> Path:
    path = Path(store_path)
    return path.parent / f".{path.name}.ccl"


def _lease_file(store_path: Path, shard: str | None) -> Path:
    if shard is None:
        return lease_dir(store_path) / "lease-all.json"
    index, count = parse_shard(shard)
    return lease_dir(store_path) / f"lease-{index}of{count}.json"


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux /proc), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after the closing parenthesis are plain.
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_alive(info: LeaseInfo) -> bool:
    """True unless the lease's process is provably gone (only provable on this host)."""
    if info.host != socket.gethostname():
        return True
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if info.start_ticks is not None:
        ticks = _start_ticks(info.pid)
        if ticks is not None and ticks != info.start_ticks:
            return False  # the pid was reused by another process
    return True


def _conflicts(mine: str | None, other: str | None) -> bool:
    if mine is None or other is None:
        return True
    (i, n), (j, m) = parse_shard(mine), parse_shard(other)
    return n != m or i == j  # different N: the row blocks overlap


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "a+") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read(path: Path) -> LeaseInfo | None:
    try:
        data = json.loads(path.read_text())
        return LeaseInfo(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        # A torn or foreign file: treat as a dead lease so it can be taken over.
        return LeaseInfo(pid=-1, host=socket.gethostname(), time="?", command="?", shard=None, token="")


class Lease:
    """A held writer lease; ``release()`` (or leaving the ``with`` block) gives it back."""

    def __init__(self, store_path: Path, info: LeaseInfo) -> None:
        self.store_path = store_path
        self.info = info
        self.file = _lease_file(store_path, info.shard)
        self.released = False

    def release(self) -> None:
        if self.released or os.getpid() != self.info.pid:
            return  # a forked child's copy of the lease is not the child's to give back
        with _locked(lease_dir(self.store_path)):
            current = _read(self.file)
            if current is not None and current.token == self.info.token:
                self.file.unlink()
        self.released = True

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lease(
    store_path: str | Path, shard: str | None = None, force: bool = False, command: str | None = None
) -> Lease:
    """Take the writer lease of ``store_path`` (or of one shard); see the module docstring."""
    store_path = Path(store_path)
    if shard is not None:
        index, count = parse_shard(shard)
        shard = f"{index}/{count}"
    info = LeaseInfo(
        pid=os.getpid(), host=socket.gethostname(), time=utc_now(),
        command=command if command is not None else " ".join(sys.argv), shard=shard,
        token=uuid.uuid4().hex, start_ticks=_start_ticks(os.getpid()),
    )
    directory = lease_dir(store_path)
    with _locked(directory):
        for path in sorted(directory.glob("lease-*.json")):
            other = _read(path)
            if other is None or not _conflicts(shard, other.shard):
                continue
            if not is_alive(other):
                warnings.warn(
                    f"{store_path}: taking over a stale writer lease of {other.describe()}: "
                    "that process is no longer running", StaleLeaseWarning, stacklevel=2,
                )
            elif not force:
                raise StoreLockedError(
                    f"{store_path}: another writer holds the lease: {other.describe()}. Wait for it "
                    "to finish, or pass --force (force=True) if you are sure it is gone"
                )
            else:
                warnings.warn(f"{store_path}: forcing past the lease of {other.describe()}",
                              StaleLeaseWarning, stacklevel=2)
            path.unlink(missing_ok=True)
        atomic_write_text(_lease_file(store_path, shard), json.dumps(asdict(info)))
    return Lease(store_path, info)


def read_leases(store_path: str | Path) -> list[LeaseInfo]:
    """Every lease file beside the store (live or stale), for `info` and error messages."""
    directory = lease_dir(store_path)
    if not directory.is_dir():
        return []
    infos = (_read(p) for p in sorted(directory.glob("lease-*.json")))
    return [i for i in infos if i is not None]


def live_leases(store_path: str | Path) -> list[LeaseInfo]:
    return [i for i in read_leases(store_path) if is_alive(i)]
