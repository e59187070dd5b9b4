"""Opening a media file: refuse what cannot be read, open it with PyAV under the call's limits, map
every av/OS error to a ``MediaError``, and place time zero at the file's first timestamp.

A path that does not exist but runs through an uncompressed tar shard (``<shard>.tar/<member>``,
see :mod:`ccl_cache.media.tarshard`) is opened as that member, read in place from the shard."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import av.error

from ccl_cache.errors import CclCacheError, MediaError
from ccl_cache.media.info import DEFAULT_LIMITS, DecodeLimits
from ccl_cache.media.tarshard import MemberFile, TarMember, find_member, split_member_path


@dataclass
class _Input:
    path: Path  # what messages name: the file, or <shard>.tar/<member>
    container: av.container.InputContainer
    origin: float  # absolute seconds of t = 0
    duration: float  # seconds from the origin
    limits: DecodeLimits
    deadline: float  # time.monotonic() after which the call gives up
    member: TarMember | None = None  # set when the media is a member of a tar shard
    handle: MemberFile | None = None  # the member's file object, which PyAV does not close

    @property
    def size_bytes(self) -> int:
        return self.member.size if self.member is not None else self.path.stat().st_size

    def reopen(self) -> None:
        """Close and reopen the file: the one rewind that is exact in every format (an MPEG-TS
        seek to the first timestamp lands on the second keyframe)."""
        self.close()
        self.container, self.handle = _av_open(self.path, self.limits, self.member)

    def close(self) -> None:
        self.container.close()
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise MediaError(self.path, "timeout",
                             f"reading took longer than {self.limits.wall_s:g} s; the file may be "
                             "damaged (or huge: raise DecodeLimits.wall_s)")


def _checked_path(path: str | os.PathLike[str]) -> tuple[Path, TarMember | None]:
    """Refuse what cannot be a readable media file before FFmpeg sees it (a FIFO would block);
    a path into a tar shard gives its member (the real file, when one exists, comes first)."""
    p = Path(path)
    if not os.path.lexists(p):
        inside = split_member_path(p)
        if inside is not None:
            return p, _checked_member(p, find_member(*inside))
        raise MediaError(p, "not-found", f"does not exist (working directory {os.getcwd()}); "
                                         "check the path or the manifest's root")
    if p.is_symlink() and not p.exists():
        raise MediaError(p, "not-found", f"is a symlink to {os.readlink(p)!r}, which does not "
                                         "exist; fix or remove the link")
    if p.is_dir():
        raise MediaError(p, "not-a-file", "is a directory, not a media file; point at a file")
    if not p.is_file():
        raise MediaError(p, "not-a-file", "is not a regular file (device, FIFO or socket); "
                                          "copy the media to a regular file")
    if p.stat().st_size == 0:
        raise MediaError(p, "empty", "is empty (0 bytes); the download or copy probably failed; "
                                     "fetch the file again")
    if not os.access(p, os.R_OK):
        raise MediaError(p, "unreadable", "cannot be read by this user (permission denied); "
                                          "fix its permissions")
    return p, None


def _checked_member(p: Path, member: TarMember) -> TarMember:
    if member.size == 0:
        raise MediaError(p, "empty", f"member {member.name!r} of tar shard {member.shard} is empty (0 "
                                     "bytes); the download probably failed: fetch the video again")
    return member


def _av_open(p: Path, lim: DecodeLimits, member: TarMember | None = None
             ) -> tuple[av.container.InputContainer, MemberFile | None]:
    """The open container and, for a tar member, the file object PyAV reads it through."""
    handle: MemberFile | None = None
    opened = False
    try:
        handle = None if member is None else MemberFile(member)
        # metadata_errors="replace": damaged tags must not stop the media from being read.
        container = av.open(str(p) if handle is None else handle, "r",
                            timeout=(lim.open_timeout_s, lim.read_timeout_s), metadata_errors="replace")
        opened = True
        return container, handle
    except av.error.ExitError as exc:
        raise MediaError(p, "timeout", f"opening took longer than {lim.open_timeout_s:g} s; "
                                       "is it on a stalled network mount?") from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        what = "" if member is None else f" (member {member.name!r} of tar shard {member.shard})"
        raise MediaError(p, "unreadable", f"is not a media file FFmpeg can open{what} ({_describe(exc)})"
                                          "; check it is a complete audio/video file (a file cut "
                                          "short before its index looks like this)") from exc
    finally:
        if handle is not None and not opened:
            handle.close()


@contextmanager
def _open_input(path: str | os.PathLike[str], limits: DecodeLimits | None) -> Iterator[_Input]:
    """Open ``path`` with PyAV; map every av/OS error raised inside to a ``MediaError``."""
    lim = limits or DEFAULT_LIMITS
    p, member = _checked_path(path)
    deadline = time.monotonic() + lim.wall_s
    container, handle = _av_open(p, lim, member)
    origin = _origin(container)
    inp = _Input(p, container, origin, _duration(container, origin), lim, deadline, member, handle)
    try:
        yield inp
    except CclCacheError:
        raise
    except av.error.ExitError as exc:
        raise MediaError(p, "timeout", f"a read took longer than {lim.read_timeout_s:g} s; "
                                       "is it on a stalled network mount?") from exc
    except (av.FFmpegError, OSError, ValueError, OverflowError) as exc:
        # PyAV raises plain ValueError/OverflowError on some damaged data (odd tags, sizes).
        raise MediaError(p, "decode", f"decoding failed ({_describe(exc)}); the file is "
                                      "probably damaged: re-encode or re-download it") from exc
    finally:
        inp.close()


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {text}"


def _origin(container: av.container.InputContainer) -> float:
    if container.start_time is not None:
        return container.start_time / av.time_base
    starts = [float(s.start_time * s.time_base) for s in container.streams
              if s.start_time is not None and s.time_base is not None]
    return min(starts, default=0.0)


def _duration(container: av.container.InputContainer, origin: float) -> float:
    if container.duration is not None and container.duration > 0:
        seconds = container.duration / av.time_base
        # Matroska's segment duration runs from timestamp 0, not from the first timestamp (FFmpeg
        # reports it as it is; MP4's and MPEG-TS's are spans from the start).
        return seconds - origin if _is_matroska(container) else seconds
    ends = [_stream_end(s, origin) for s in container.streams]
    return max((e for e in ends if e is not None), default=0.0)


def _stream_start(stream: av.stream.Stream, origin: float) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base) - origin


def _stream_end(stream: av.stream.Stream, origin: float) -> float | None:
    """Where the stream's header says it ends (seconds from the origin), if it says."""
    if stream.duration and stream.time_base is not None:
        return _stream_start(stream, origin) + float(stream.duration * stream.time_base)
    # Matroska keeps it as a tag, and the tag is where the stream ends on the file's clock (its
    # last timestamp plus that frame's duration), not a length from the stream's own start.
    tag = _tag_seconds(stream.metadata.get("DURATION"))
    return None if tag is None else tag - origin


def _is_matroska(container: av.container.InputContainer) -> bool:
    return "matroska" in container.format.name  # FFmpeg's demuxer "matroska,webm" reads both


def _tag_seconds(text: str | None) -> float | None:
    """Parse an ``HH:MM:SS.fraction`` duration tag."""
    try:
        hours, minutes, seconds = (text or "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
