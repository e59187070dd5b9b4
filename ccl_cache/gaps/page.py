"""The HTML page of a gap ranking (``ccl-cache gaps --html``): the ranked clips as players with
their sound, so a curator hears what the score found (:mod:`ccl_cache.report` writes the page).

The ranked table heads the page; then each clip, highest score first, is a tile whose window of
the file plays in a ``<video>`` player (sound included), with its label, score, rank, id and each
modality's best-guess class.
"""

from __future__ import annotations

from pathlib import Path

from ccl_cache.gaps.score import GapResult
from ccl_cache.report import MediaItem, ResultItem, Section, Table, WrittenPage, write_page

PAGE_TOP = 50  # clips on the page when no --top is given: each is a player the browser loads


def gap_sections(result: GapResult, top: int) -> list[Section]:
    """One section of tiles, the ``top`` highest scores in rank order: each tile plays its clip and
    names its label, score, rank, id and each modality's best guess."""
    tiles = tuple(
        ResultItem(MediaItem(row["path"], row["start"], row["end"]), row["label"], row["score"],
                   details=(f"#{row['rank']} {row['id']} ({row['split']})",
                            f"audio guess: {row['audio_guess'] or '-'}", f"image guess: {row['image_guess'] or '-'}"))
        for row in result.ranked(top))
    return [Section("Highest gap scores first", results=tiles)]


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
