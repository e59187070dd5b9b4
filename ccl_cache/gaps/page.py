"""The HTML page of a gap ranking (``ccl-cache gaps --html``): the ranked clips as players with
their sound, so a curator hears what the score found (:mod:`ccl_cache.report` writes the page).

Each section is one clip, highest score first: its window of the file plays in a ``<video>``
player (sound included), captioned by its label, its score and each modality's best-guess class;
the ranked table heads the page.
"""

from __future__ import annotations

from pathlib import Path

from ccl_cache.gaps.score import GapResult
from ccl_cache.report import MediaItem, Section, Table, WrittenPage, write_page

PAGE_TOP = 50  # clips on the page when no --top is given: each is a player the browser loads


def gap_sections(result: GapResult, top: int) -> list[Section]:
    """One section per clip of the ``top`` highest scores, in rank order."""
    sections = []
    for row in result.ranked(top):
        caption = [f"label: {row['label']}", f"gap score: {row['score']:.4g}",
                   f"audio guess: {row['audio_guess'] or '-'}", f"image guess: {row['image_guess'] or '-'}",
                   f"split: {row['split']}"]
        sections.append(Section(f"{row['rank']}. {row['id']}", MediaItem(row["path"], row["start"], row["end"]),
                                caption=tuple(caption)))
    return sections


def write_gap_page(result: GapResult, path: str | Path, top: int | None = None) -> WrittenPage:
    """Write the page of ``result``'s ``top`` highest-scoring clips (default :data:`PAGE_TOP`)."""
    top = PAGE_TOP if top is None else top
    rows = result.ranked(top)
    mode = "label-free" if result.config.label_free else "with labels"
    table = Table(("#", "id", "label", "score", "audio guess", "image guess"),
                  tuple((str(r["rank"]), r["id"], r["label"], f"{r['score']:.4g}", r["audio_guess"], r["image_guess"])
                        for r in rows),
                  title=f"{len(rows)} of {len(result.rows)} clips by gap score ({result.config.method}, {mode})")
    notes = (f"store: {result.store}",
             "higher score = the clip's sound disagrees more with its picture"
             + ("" if result.config.label_free else " and its label") + "; each clip plays with its sound")
    return write_page(path, "Clips whose sound disagrees with their picture", gap_sections(result, top),
                      notes=notes, table=table)
