"""`ccl-cache retrieve --index INDEX_DIR --query clip.mp4 [--query ...]`: search by example."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from ccl_cache.search.retrieve import MODALITIES, RetrieveConfig, RetrieveResult, retrieve as run_retrieve
from ccl_cache_cli.common import config_fields, config_option, console, echo_json


def show(result: RetrieveResult) -> None:
    """One rich table per query (rank, clip id, class, score, path) on stderr."""
    console.print(f"index {result.index} ({result.source}) · store {result.store}")
    for note in result.notes:
        console.print(f"[yellow]{note}")
    for r in result.results:
        title = f"{r.query.text} ({r.query.kind}" + (f", class {r.class_name})" if r.class_name else ")")
        if r.windows:
            title += f" · {r.windows} windows"
        table = Table(title=title)
        for col in ("rank", "clip id", "class", "score", "path"):
            table.add_column(col, justify="right" if col in ("rank", "score") else "left")
        for hit in r.hits:
            colour = "" if r.query.label is None else ("green" if hit.label == r.query.label else "red")
            cls = f"[{colour}]{hit.class_name}[/]" if colour else hit.class_name
            table.add_row(str(hit.rank), hit.clip_id, cls, f"{hit.score:.4f}", hit.path)
        console.print(table)
    if result.grid:
        console.print(f"grid: {result.grid}")
    if result.html:
        console.print(f"page: {result.html}")


@click.command()
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Index directory written by `ccl-cache index`.")
@click.option("--query", "-q", "queries", multiple=True, required=True,
              help="A video file, an audio file (.wav/.mp3/.m4a/...) or a clip id of the store; repeatable.")
@config_option(RetrieveConfig, "k", type=int, show_default=True, help="Results per query.")
@config_option(RetrieveConfig, "modality", type=click.Choice(MODALITIES), show_default=True,
               help="How to read the queries (auto: by file content and suffix; 'audio' searches by the sound "
                    "of a video file).")
@config_option(RetrieveConfig, "audio_weights", type=click.Path(dir_okay=False),
               help="The audio teacher's weights file, when the extraction config beside the store does not name it "
                    "(its SHA-256 must match the store's fingerprint).")
@config_option(RetrieveConfig, "run_dir", "--run", "run_dir", type=click.Path(exists=True, file_okay=False),
               help="The student run directory, when the store's record of it is out of date.")
@config_option(RetrieveConfig, "store", type=click.Path(exists=True),
               help="The store the index was built from, when its recorded path is out of date.")
@config_option(RetrieveConfig, "checkpoint", type=click.Choice(["best", "last"]), show_default=True,
               help="Which student checkpoint embeds video queries.")
@config_option(RetrieveConfig, "device", show_default=True, help="cpu, cuda, cuda:N or auto.")
@config_option(RetrieveConfig, "max_windows", type=int,
               help="Cap on the 16-frame windows averaged per video query (default: the run's test setting).")
@config_option(RetrieveConfig, "label",
               help="The queries' class, for colouring results when the store does not know it.")
@config_option(RetrieveConfig, "save_grid", type=click.Path(dir_okay=False),
               help="Write the query beside its results, green = same class, red = other (PNG).")
@config_option(RetrieveConfig, "html", type=click.Path(dir_okay=False),
               help="Write a self-contained HTML page (.html) where each query and its results play, with their "
                    "sound; media are linked relative to the page, tar-shard members copied beside it.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def retrieve(index_dir: str, queries: tuple[str, ...], as_json: bool, **options: Any) -> None:
    """Search an index with video clips, audio files or clip ids: cosine top-k of each query.

    Video files are embedded by the index's student run (windows averaged, as in its test);
    audio files by the store's audio teacher (cross-modal: sound → video for a student index);
    clip ids use their stored embedding.
    """
    config = RetrieveConfig(index=index_dir, queries=queries, **config_fields(options, RetrieveConfig))
    result = run_retrieve(config)
    if as_json:
        echo_json(result.as_dict())
    else:
        show(result)
