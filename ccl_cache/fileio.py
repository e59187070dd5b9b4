"""Atomic file writes and config files saved beside every output.

Files users keep (checkpoints, indexes, exports, configs) are written to a temporary name in the
same directory and moved into place with ``os.replace``: a crash leaves the previous file intact.
Temporary names carry their writer (``.<name>.<host>-<pid>.<random>.tmp``), so the next write of
the same file removes the temporaries of writers on this host that died mid-write (SIGKILL, OOM
killer): repeated kills during a large checkpoint write do not fill the disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml


def owner_tag() -> str:
    """``<host>-<pid>`` of this process: put in temporary names so stale ones can be told apart."""
    return f"{socket.gethostname()}-{os.getpid()}"


def owner_is_dead(tag: str) -> bool:
    """True when ``tag`` (see :func:`owner_tag`) names a process of this host that no longer exists.

    Processes on other hosts (a shared file system) are never declared dead: their files are left
    alone. A reused pid keeps a stale file (the safe direction).
    """
    host, _, pid_text = tag.rpartition("-")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, owned by another user
        return False
    return False


def sweep_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporaries that dead writers of ``path`` left beside it; return what was removed."""
    path = Path(path)
    prefix, removed = f".{path.name}.", []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        owner = name[len(prefix):-len(".tmp")].rpartition(".")[0]  # drop mkstemp's random part
        if owner and owner_is_dead(owner):
            with contextlib.suppress(OSError):  # another sweeper was first
                candidate.unlink()
                removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it in.

    Temporaries left by dead writers of the same file are removed first (:func:`sweep_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; files users keep get the usual umask-derived mode, as open() gives.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask() can only be read by setting it, which races with other threads.
_UMASK = _read_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_plain(obj: Any) -> Any:
    """Dataclasses, paths and tuples → JSON/YAML-friendly builtins (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(config: Any, path: str | Path) -> None:
    """Write a (frozen dataclass) config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_plain(config), sort_keys=False))


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(to_plain(data), indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
