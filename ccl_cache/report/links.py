"""How a page links its media: relative URLs from the page's folder, and tar members copied out.

Links are relative (``os.path.relpath`` from the page's folder), so the page works opened straight
from disk (``file://``) and keeps working when its folder is moved together with the media. A
browser cannot open a member of a tar shard (``<shard>.tar/<member>``), so each such member is
copied once into ``<page stem>_media/`` beside the page and that copy is linked.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ccl_cache.errors import MediaError
from ccl_cache.fileio import atomic_path
from ccl_cache.media.tarshard import MemberFile, find_member, split_member_path

_COPY_BLOCK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def media_folder(page: str | Path) -> Path:
    """The folder beside ``page`` that holds media copied for it: ``<page stem>_media``."""
    page = Path(page)
    return page.with_name(page.stem + "_media")


def fragment(start: float | None, end: float | None) -> str:
    """The media fragment (W3C Media Fragments, temporal) that plays ``[start, end)``: ``#t=s,e``."""
    if start is None and end is None:
        return ""
    return f"#t={start or 0.0:.3f}" + ("" if end is None else f",{end:.3f}")


def relative_url(target: str | Path, page_dir: str | Path) -> str:
    """``target`` as a URL relative to ``page_dir``, each path segment percent-encoded."""
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir))
    return quote(Path(rel).as_posix(), safe="/")


@dataclass
class MediaLinker:
    """Turns media paths into relative URLs for one page; copies tar members once."""

    page: Path
    copied: dict[str, Path] = field(default_factory=dict)  # member path -> its copy
    missing: list[str] = field(default_factory=list)

    @property
    def page_dir(self) -> Path:
        return self.page.parent

    def url(self, path: str) -> str | None:
        """The relative URL of ``path`` (a file or a tar member), or None when it does not exist."""
        inside = split_member_path(path)
        if inside is not None:
            return relative_url(self._copy_member(path, *inside), self.page_dir)
        if not os.path.isfile(path):
            if path not in self.missing:
                self.missing.append(path)
            return None
        return relative_url(path, self.page_dir)

    def _copy_member(self, path: str, shard: Path, name: str) -> Path:
        if path in self.copied:
            return self.copied[path]
        member = find_member(shard, name)  # MediaError naming shard and member when absent
        # The shard and member are hashed into the name: members of different shards may share a name.
        digest = hashlib.sha256(f"{os.path.abspath(shard)}\0{name}".encode()).hexdigest()[:10]
        base = _UNSAFE.sub("_", os.path.basename(name)) or "member"
        dest = media_folder(self.page) / f"{_UNSAFE.sub('_', shard.stem)}-{digest}-{base}"
        if not (dest.is_file() and dest.stat().st_size == member.size):  # copied by an earlier page write
            handle = MemberFile(member)
            try:
                with atomic_path(dest) as tmp, open(tmp, "wb") as out:
                    while chunk := handle.read(_COPY_BLOCK):
                        out.write(chunk)
            except OSError as exc:
                raise MediaError(path, "unreadable", f"cannot copy the member out of its tar shard for the page "
                                                     f"({exc}); check the shard and that {dest.parent} is writable") from exc
            finally:
                handle.close()
        self.copied[path] = dest
        return dest
