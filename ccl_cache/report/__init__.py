"""Self-contained HTML reports: query and result clips that play in place, with their sound.

A PNG grid (``retrieve --save-grid``) cannot play the sound a sound-to-video query started
from; this page can. :func:`write_page` writes one static page from a generic model
(:mod:`ccl_cache.report.model`): sections of a query and its results, each result a playable
clip with label, score and a same-class mark; an optional table and recall plot (inline SVG).
Media are linked relative to the page (:mod:`ccl_cache.report.links`), tar-shard members copied
beside it. ``retrieve --html`` and ``benchmark retrieval --html`` build on it.
"""

from ccl_cache.report.links import MediaLinker, fragment, media_folder, relative_url
from ccl_cache.report.model import MEDIA_KINDS, LinePlot, MediaItem, ResultGroup, ResultItem, Section, Series, Table
from ccl_cache.report.page import PAGE_SUFFIXES, WrittenPage, check_page_path, render_page, write_page
from ccl_cache.report.svg import render_svg

__all__ = [
    "MEDIA_KINDS", "PAGE_SUFFIXES", "LinePlot", "MediaItem", "MediaLinker", "ResultGroup", "ResultItem", "Section",
    "Series", "Table", "WrittenPage", "check_page_path", "fragment", "media_folder", "relative_url", "render_page",
    "render_svg", "write_page",
]
