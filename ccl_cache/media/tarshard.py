"""Media stored inside uncompressed tar shards (the WebDataset layout video2dataset writes), read in
place: the path syntax of a member, a per-process index of each shard's members, and a bounded
read-only file object over one member's bytes that PyAV decodes.

**Path syntax**: ``<shard>.tar/<member>``, the shard's path, a slash and the member's name inside
the tar (``/data/vggsound/00012.tar/000120034.mp4``). A regular file has no children, so such a
path can never name a real file: a path that exists is always read as itself, and a path that
does not exist is a member when a leading part of it is an existing regular ``.tar`` file.
(WebDataset separates several shard URLs with ``::``, so that is not used here.)

**Reading in place**: an uncompressed tar keeps each member's bytes contiguous after its 512-byte
header, so a member is the byte range ``[offset, offset + size)`` of the shard. Compressed shards
(``.tar.gz``, ...) have no such range and are refused with the fix (decompress them once).

**Index**: a shard is scanned once per process (headers only: the scan seeks over the data) into
member name -> (offset, size), kept for the shards used last and rescanned when the shard's size
or modification time changes. A shard cut short keeps the members that are complete; the damage
is named when a missing or cut member is asked for.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ccl_cache.errors import MediaError

TAR_SUFFIX = ".tar"
COMPRESSED_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst")
"""Names of compressed tars: recognised in member paths so that they get their own error."""

_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_DECOMPRESS = {"gzip": "gunzip -k", "bzip2": "bunzip2 -k", "xz": "unxz -k", "zstd": "unzstd"}
_BLOCK = 512  # tar header and padding unit
_CACHED_SHARDS = 64  # indexes kept per process (a few MB for thousands of members each)


@dataclass(frozen=True)
class TarMember:
    """One regular file inside a tar shard: its name and the byte range of its data."""

    shard: Path
    name: str
    offset: int  # of the first data byte in the shard
    size: int

    @property
    def path(self) -> str:
        """The member's media path (``<shard>/<name>``), which every media reader accepts."""
        return member_path(self.shard, self.name)


@dataclass(frozen=True)
class TarIndex:
    """The complete regular-file members of a shard, in tar order, and what damage the scan met."""

    shard: Path
    members: tuple[TarMember, ...]
    damage: str | None = None  # why the scan stopped early (a truncated or damaged shard)
    by_name: dict[str, TarMember] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {m.name: m for m in self.members}  # a name written twice: the last copy, as `tar -x` leaves it
        for m in self.members:
            names.setdefault(posixpath.normpath(m.name), m)  # "./x.mp4" found as "x.mp4"
        object.__setattr__(self, "by_name", names)


def member_path(shard: str | os.PathLike[str], member: str) -> str:
    """The media path of ``member`` inside ``shard``: ``<shard>/<member>``."""
    return f"{os.fspath(shard)}/{member}"


def is_tar_name(path: str | os.PathLike[str]) -> bool:
    """True for names ending in ``.tar`` or a compressed-tar suffix (case-insensitive)."""
    name = os.fspath(path).lower()
    return name.endswith(TAR_SUFFIX) or name.endswith(COMPRESSED_SUFFIXES)


def split_member_path(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """``(shard, member name)`` when ``path`` names a member of a tar shard, else None.

    That is: ``path`` does not exist and a leading part of it is an existing regular file named
    like a tar. Cheap: a few ``stat`` calls up to the first existing folder.
    """
    text = os.fspath(path)
    if not text or os.path.lexists(text):
        return None
    head = text
    while True:
        parent = os.path.dirname(head.rstrip("/"))
        if not parent or parent == head:
            return None
        head = parent
        if os.path.lexists(head):
            if os.path.isfile(head) and is_tar_name(head):
                member = text[len(head):].lstrip("/")
                return (Path(head), member) if member else None
            return None  # an existing folder (or a file that is no tar): nothing above it is a shard


def is_member_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names a member of a tar shard (see :func:`split_member_path`)."""
    return split_member_path(path) is not None


# --------------------------------------------------------------------------------------------
# The index


_INDEXES: OrderedDict[tuple[str, int, int], TarIndex] = OrderedDict()
# Per process, no lock: two threads that miss together scan twice, which is only wasted work
# (and a lock held across fork() would deadlock DataLoader workers).


def tar_index(shard: str | os.PathLike[str]) -> TarIndex:
    """The member index of ``shard`` (scanned on first use in this process, then cached).

    Raises :class:`MediaError` naming the shard when it is missing, unreadable, compressed or
    not a tar at all; a shard cut short gives the members before the cut (``damage`` says where).
    """
    path = Path(shard)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise MediaError(path, "not-found", f"tar shard cannot be opened ({exc.strerror}); check the path") from None
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    index = _INDEXES.get(key)
    if index is None:
        index = _scan(path, st.st_size)
        _INDEXES[key] = index
        while len(_INDEXES) > _CACHED_SHARDS:
            _INDEXES.popitem(last=False)
    else:
        _INDEXES.move_to_end(key)
    return index


def clear_index_cache() -> None:
    """Forget every shard index of this process (they are rebuilt on next use)."""
    _INDEXES.clear()


def _scan(path: Path, size: int) -> TarIndex:
    if not path.is_file():
        raise MediaError(path, "not-a-file", "is not a regular file; a tar shard is one .tar file")
    if size == 0:
        raise MediaError(path, "empty", "tar shard is empty (0 bytes); the download or copy failed: fetch it again")
    try:
        with open(path, "rb") as fh:
            _refuse_compressed(path, fh.read(6))
            fh.seek(0)
            return _scan_open(path, fh, size)
    except PermissionError:
        raise MediaError(path, "unreadable", "tar shard cannot be read by this user (permission denied); "
                                             "fix its permissions") from None
    except OSError as exc:
        raise MediaError(path, "unreadable", f"tar shard cannot be read ({exc.strerror or exc}); "
                                             "check the disk or mount") from None


def _refuse_compressed(path: Path, head: bytes) -> None:
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise MediaError(path, "unsupported",
                             f"is a {kind}-compressed tar: its members cannot be read in place; decompress the "
                             f"shard once (e.g. `{_DECOMPRESS[kind]} {path.name}`) and use the plain .tar")


def _scan_open(path: Path, fh: BinaryIO, size: int) -> TarIndex:
    members: list[TarMember] = []
    damage: str | None = None
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tf:
            for info in tf:  # lazy: a damaged header raises after the members before it
                if info.offset_data + info.size > size:
                    damage = (f"member {info.name!r} is cut short (its data ends at byte "
                              f"{info.offset_data + info.size}, the shard at {size})")
                    break
                if info.isreg():
                    members.append(TarMember(path, info.name, info.offset_data, info.size))
                tf.members.clear()  # the scan keeps its own list; tarfile's would double it
            end = tf.offset
    except tarfile.TarError as exc:
        if not members and damage is None:
            raise MediaError(path, "unreadable", f"is not a readable tar archive ({exc}); check that it is "
                                                 "a complete, uncompressed .tar shard") from None
        damage = damage or f"the archive is damaged after member {members[-1].name!r} ({exc})"
    else:
        if damage is None:
            damage = _check_end(fh, end, size, members)
    return TarIndex(path, tuple(members), damage)


def _check_end(fh: BinaryIO, end: int, size: int, members: list[TarMember]) -> str | None:
    """Why the archive does not end with its end-of-archive block at ``end`` (None when it does).

    Python's tarfile takes a shard cut at a header boundary (or mid-header) for a complete one,
    so the end-of-archive zero block that every tar writer puts after the last member is checked.
    """
    fh.seek(end)
    block = fh.read(_BLOCK)
    if len(block) == _BLOCK and not block.strip(b"\0"):
        return None
    after = f"after member {members[-1].name!r}" if members else "before its first member"
    if len(block) < _BLOCK:
        return f"the shard ends at byte {size} {after}, without the end-of-archive block: it is truncated"
    return f"byte {end} {after} is neither a member header nor the end-of-archive block: the shard is damaged"


# --------------------------------------------------------------------------------------------
# Opening a member


def find_member(shard: str | os.PathLike[str], name: str) -> TarMember:
    """The member ``name`` of ``shard``; :class:`MediaError` naming both when it is not there."""
    index = tar_index(shard)
    member = index.by_name.get(name) or index.by_name.get(posixpath.normpath(name))
    if member is not None:
        return member
    where = member_path(shard, name)
    if index.damage is not None:
        raise MediaError(where, "unreadable", f"member {name!r} is not readable in tar shard {shard}: "
                                              f"{index.damage}; re-download or re-create the shard")
    some = ", ".join(repr(m.name) for m in index.members[:3]) or "none"
    raise MediaError(where, "not-found", f"tar shard {shard} has no member {name!r} ({len(index.members)} "
                                         f"member(s), e.g. {some}); check the member name")


def member_exists(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names a member that its (readable) tar shard holds."""
    inside = split_member_path(path)
    if inside is None:
        return False
    try:
        find_member(*inside)
    except MediaError:
        return False
    return True


class MemberFile:
    """A read-only, seekable file object over one member's bytes (what ``av.open`` reads).

    Positions are relative to the member's first byte; reads stop at its end. The shard is read
    with positioned reads (``os.pread``), so the object shares no file position with anyone.
    """

    def __init__(self, member: TarMember) -> None:
        self.member = member
        self._fd = -1
        self._pos = 0
        self._fd = os.open(member.shard, os.O_RDONLY)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = self.member.size - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self.member.offset + self._pos)
        if len(data) < n:  # the shard shrank after it was indexed
            raise OSError(f"tar shard {self.member.shard} ends inside member {self.member.name!r} "
                          f"(truncated after it was indexed); re-download or re-create the shard")
        self._pos += n
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.member.size}.get(whence)
        if base is None or base + offset < 0:
            raise OSError(f"invalid seek ({offset}, whence={whence}) in member {self.member.name!r}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def read_member(member: TarMember, limit: int) -> bytes:
    """The bytes of ``member`` (a sidecar such as ``<key>.json``); at most ``limit`` bytes are read."""
    handle = MemberFile(member)
    try:
        return handle.read(limit)
    finally:
        handle.close()
