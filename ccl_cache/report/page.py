"""One self-contained static HTML page: inline CSS, inline SVG plot, a few lines of inline script,
media linked by relative paths. No CDN, no server, no external script: it opens straight from
disk and keeps working when its folder is moved with its media.

Video tiles start at their clip's window through a temporal media fragment (``clip.mp4#t=2,3``),
and a small inline script seeks there too (and back to the start when play is pressed after the
window's end), so a clip cut from a longer file plays the part that was searched. Each video
tile carries its first frame as an inline JPEG poster (:mod:`ccl_cache.report.posters`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Sequence

from ccl_cache.errors import ConfigError
from ccl_cache.fileio import atomic_write_text
from ccl_cache.report.links import MediaLinker, fragment, media_folder
from ccl_cache.report.model import LinePlot, MediaItem, ResultItem, Section, Table
from ccl_cache.report.posters import Posters
from ccl_cache.report.svg import render_svg

PAGE_SUFFIXES = (".html", ".htm")
TILE_WIDTH = 192  # pixels of a result's player
QUERY_WIDTH = 300  # the query's: room for an audio player's controls

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1d1d1d;
       background: #fafafa; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin: 0 0 .6em 0; } h3 { font-size: .95em; margin: .8em 0 .3em 0; }
.notes p { margin: .2em 0; color: #444; }
section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .9em; margin: 1em 0; }
.row { display: flex; gap: 1.2em; align-items: flex-start; }
.results { display: flex; flex-wrap: wrap; gap: .6em; }
.tile { width: %(w)dpx; border: 3px solid #ccc; border-radius: 5px; padding: 4px; background: #fff; }
.tile.query { border-color: #555; width: %(q)dpx; }
.tile.same { border-color: #1a9641; } .tile.other { border-color: #d7191c; }
.tile video { width: %(w)dpx; display: block; background: #000; }
.tile video, .tile audio { max-width: 100%%; }
.tile.query video { width: %(q)dpx; } .tile audio { width: 100%%; display: block; }
.label { font-weight: 600; margin-top: 3px; overflow-wrap: anywhere; }
.detail { font-size: .85em; color: #555; overflow-wrap: anywhere; }
.mark { font-size: .85em; font-weight: 600; } .mark.same { color: #1a9641; } .mark.other { color: #d7191c; }
.missing { font-size: .85em; color: #a00; background: #fee; padding: .5em; overflow-wrap: anywhere; }
.empty { color: #777; font-style: italic; }
table { border-collapse: collapse; margin: 1em 0; background: #fff; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; } th:first-child, td:first-child { text-align: left; }
figure { margin: 1em 0; }
""" % {"w": TILE_WIDTH, "q": QUERY_WIDTH}

# Seek to the window's start once the metadata is there (the fragment does it too, where supported),
# and start the window again when play is pressed after its end.
_SCRIPT = """
document.querySelectorAll("video[data-start], audio[data-start]").forEach(function (m) {
  var s = parseFloat(m.dataset.start), e = m.dataset.end ? parseFloat(m.dataset.end) : NaN;
  m.addEventListener("loadedmetadata", function () { if (m.currentTime < s - 0.05) { m.currentTime = s; } });
  m.addEventListener("play", function () { if (!isNaN(e) && m.currentTime >= e - 0.05) { m.currentTime = s; } });
});
"""


@dataclass(frozen=True)
class WrittenPage:
    """Where the page went, the tar members copied beside it, the media that were not found."""

    path: Path
    media_dir: Path
    copied: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def check_page_path(path: str | Path) -> Path:
    """``path`` if it names an .html page that can be written; ConfigError with the fix otherwise."""
    p = Path(path)
    if p.suffix.lower() not in PAGE_SUFFIXES:
        raise ConfigError(f"{path}: the report is an HTML page; give a path ending in .html")
    if p.is_dir():
        raise ConfigError(f"{path} is a directory; give the path of the .html page to write")
    return p


@dataclass
class _Context:
    linker: MediaLinker
    posters: Posters | None


def _player(item: MediaItem, ctx: _Context) -> str:
    url = ctx.linker.url(item.path)
    if url is None:
        return f'<div class="missing">not found: {escape(item.path)}</div>'
    window = ""
    if item.start is not None:
        window += f' data-start="{item.start:.3f}"'
    if item.end is not None:
        window += f' data-end="{item.end:.3f}"'
    src = escape(url + fragment(item.start, item.end))
    title = escape(item.path)
    if item.kind == "audio":
        return f'<audio controls preload="metadata" src="{src}" title="{title}"{window}></audio>'
    poster = ctx.posters.uri(item) if ctx.posters is not None else None
    poster_attr = f' poster="{poster}"' if poster else ""
    return f'<video controls preload="metadata" src="{src}" title="{title}"{poster_attr}{window}></video>'


def _lines(lines: Sequence[str], cls: str = "detail") -> str:
    return "".join(f'<div class="{cls}">{escape(line)}</div>' for line in lines)


def _score(score: float | None) -> str:
    if score is None:
        return ""
    return f'<div class="detail">score {escape(f"{score:.4f}" if math.isfinite(score) else str(score))}</div>'


def _tile(item: ResultItem, ctx: _Context) -> str:
    state = {True: "same", False: "other", None: ""}[item.match]
    mark = ""
    if item.match is not None:
        mark = f'<div class="mark {state}">{"✓ same class" if item.match else "✗ other class"}</div>'
    return (f'<div class="tile result {state}">{_player(item.media, ctx)}'
            f'<div class="label">{escape(item.label)}</div>{_score(item.score)}{mark}{_lines(item.details)}</div>')


def _results(results: Sequence[ResultItem], ctx: _Context, empty: str | None) -> str:
    if not results:
        return f'<div class="empty">{escape(empty)}</div>' if empty else ""
    return '<div class="results">' + "".join(_tile(r, ctx) for r in results) + "</div>"


def _section(section: Section, ctx: _Context) -> str:
    parts = [f"<section><h2>{escape(section.title)}</h2>", '<div class="row">']
    if section.query is not None or section.caption:
        player = _player(section.query, ctx) if section.query is not None else ""
        parts.append(f'<div class="tile query">{player}{_lines(section.caption, "label")}</div>')
    parts.append(_results(section.results, ctx, None))
    parts.append("</div>")
    for group in section.groups:
        parts.append(f"<h3>{escape(group.heading)}</h3>{_results(group.results, ctx, group.empty)}")
    parts.append("</section>")
    return "\n".join(parts)


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{escape(table.title)}</caption>" if table.title else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def render_page(page: Path, title: str, sections: Sequence[Section], plot: LinePlot | None = None,
                notes: Sequence[str] = (), table: Table | None = None, posters: bool = True
                ) -> tuple[str, MediaLinker]:
    """The page's HTML (links relative to ``page``'s folder; tar members copied) and its linker.
    ``posters``: embed each video's first frame (:mod:`ccl_cache.report.posters`)."""
    linker = MediaLinker(page)
    ctx = _Context(linker, Posters() if posters else None)
    body = [_section(s, ctx) for s in sections]  # first: it finds the missing media
    head = [f"<h1>{escape(title)}</h1>"]
    lines = list(notes)
    if linker.missing:
        lines.append(f"{len(linker.missing)} media file(s) were not found and are shown as 'not found' "
                     f"(moved or deleted since they were recorded): {', '.join(linker.missing[:3])}"
                     + (" ..." if len(linker.missing) > 3 else ""))
    if lines:
        head.append('<div class="notes">' + "".join(f"<p>{escape(n)}</p>" for n in lines) + "</div>")
    if table is not None:
        head.append(_table(table))
    if plot is not None:
        head.append(f"<figure>{render_svg(plot)}</figure>")
    if not sections and plot is None and table is None:
        head.append('<p class="empty">nothing to show</p>')
    html = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(head + body) + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n")
    return html, linker


def write_page(path: str | Path, title: str, sections: Sequence[Section], plot: LinePlot | None = None,
               notes: Sequence[str] = (), table: Table | None = None, posters: bool = True) -> WrittenPage:
    """Write one self-contained HTML page atomically (see the module docstring); tar members it
    shows are copied into ``<page stem>_media/`` beside it first; ``posters`` embeds each video
    tile's first frame as a small JPEG (decoded here, once per clip and start)."""
    page = check_page_path(path)
    html, linker = render_page(page, title, sections, plot, notes, table, posters)
    atomic_write_text(page, html)
    return WrittenPage(page, media_folder(page), tuple(linker.copied), tuple(linker.missing))
