"""What a report page shows, as plain frozen dataclasses: no HTML here.

A page (:func:`ccl_cache.report.write_page`) is a title, notes, an optional table and line plot,
then a list of :class:`Section`. A section has a title, an optional query (a playable
:class:`MediaItem`) with a caption, and rows of :class:`ResultItem` — each a playable clip with a
label, an optional score, an optional same-class mark and extra detail lines. The retrieval
commands fill sections with a query and its top-k; a section without results (one clip and its
caption) renders as well, for listings such as clips whose sound disagrees with their picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ccl_cache.errors import ConfigError

MEDIA_KINDS = ("video", "audio")


def _window_value(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)  # numpy scalars too
    if math.isnan(value):
        return None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"MediaItem.{name}={value!r}: expected seconds >= 0 (or None for the file's bounds)")
    return value


@dataclass(frozen=True)
class MediaItem:
    """A media file to play, optionally a window ``[start, end)`` of it in seconds.

    ``path``: a file, or a member of an uncompressed tar shard (``<shard>.tar/<member>``, see
    :mod:`ccl_cache.media.tarshard`), which the page copies beside itself since a browser cannot
    open it inside the tar. ``kind``: ``video`` (a ``<video>`` player, which plays the sound too)
    or ``audio`` (an ``<audio>`` player). None or NaN for ``start``/``end``: the file's bounds.
    """

    path: str
    start: float | None = None
    end: float | None = None
    kind: str = "video"

    def __post_init__(self) -> None:
        if self.kind not in MEDIA_KINDS:
            raise ConfigError(f"MediaItem.kind={self.kind!r}: expected one of {', '.join(MEDIA_KINDS)}")
        if not str(self.path):
            raise ConfigError("MediaItem.path is empty: give the media file's path")
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "start", _window_value("start", self.start))
        object.__setattr__(self, "end", _window_value("end", self.end))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ConfigError(f"MediaItem window [{self.start}, {self.end}) of {self.path} is empty: "
                              "end must be after start")


@dataclass(frozen=True)
class ResultItem:
    """One tile: a playable clip, its label (e.g. class name), an optional score, and ``match``:
    True/False draws a green/red same-class mark, None draws none (the query's class is unknown).
    ``details``: extra lines under the label (e.g. rank, clip id, each modality's best guess)."""

    media: MediaItem
    label: str
    score: float | None = None
    match: bool | None = None
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResultGroup:
    """A headed row of results (e.g. one source's top-k for the section's query)."""

    heading: str
    results: tuple[ResultItem, ...] = ()
    empty: str = "no results"  # shown when ``results`` is empty


@dataclass(frozen=True)
class Section:
    """A query and its results: ``results`` is an unheaded row, ``groups`` headed rows after it.
    ``query`` None: no player (e.g. a query given by a clip id whose file is unknown).
    ``caption``: lines under the query (its kind, its class, ...)."""

    title: str
    query: MediaItem | None = None
    results: tuple[ResultItem, ...] = ()
    caption: tuple[str, ...] = ()
    groups: tuple[ResultGroup, ...] = ()


@dataclass(frozen=True)
class Series:
    """One line of a :class:`LinePlot`: y values at the plot's x values (NaN: no point)."""

    label: str
    ys: tuple[float, ...]
    dashed: bool = False


@dataclass(frozen=True)
class LinePlot:
    """A line plot drawn as inline SVG: one line per series over shared x values."""

    title: str
    xs: tuple[float, ...]
    series: tuple[Series, ...]
    x_label: str = ""
    y_label: str = ""
    log_x: bool = False
    y_range: tuple[float, float] | None = None  # None: from the data

    def __post_init__(self) -> None:
        if not self.xs:
            raise ConfigError(f"plot {self.title!r} has no x values")
        if self.log_x and min(self.xs) <= 0:
            raise ConfigError(f"plot {self.title!r}: a log x axis needs x values > 0, got {min(self.xs)}")
        for s in self.series:
            if len(s.ys) != len(self.xs):
                raise ConfigError(f"plot {self.title!r}: series {s.label!r} has {len(s.ys)} values for "
                                  f"{len(self.xs)} x values")


@dataclass(frozen=True)
class Table:
    """A plain table: column headings and rows of cell texts."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    title: str = ""
