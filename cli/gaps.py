"""`ccl-cache gaps STORE`: rank the clips whose sound disagrees with their picture (see ccl_cache.gaps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ccl_cache.gaps import METHODS, GapConfig, GapResult, save_to_store, score_gaps, write_table
from ccl_cache.gaps.methods import summary as method_summary
from ccl_cache.gaps.page import PAGE_TOP, write_gap_page
from ccl_cache.report import check_page_path
from ccl_cache.store.schema import GAP_SCORE_PATH
from ccl_cache_cli.common import config_fields, config_option, console, echo_json

_SHOWN = 20  # rows of the printed table unless --top says otherwise


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def show(result: GapResult, top: int) -> None:
    """The ranked table on stderr (rich)."""
    rows = result.ranked(top)
    mode = "label-free" if result.config.label_free else "with labels"
    table = Table(title=f"{len(rows)} of {len(result.rows)} clips by gap score ({result.config.method}, {mode}; "
                        "higher = sound disagrees more)")
    for name, justify in (("#", "right"), ("id", "left"), ("label", "left"), ("score", "right"),
                          ("audio guess", "left"), ("image guess", "left"), ("path", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for row in rows:
        mark = "" if row["audio_guess"] == row["label"] or not row["audio_guess"] else "[yellow]"
        table.add_row(str(row["rank"]), row["id"], row["label"], f"{row['score']:.4g}", mark + row["audio_guess"],
                      row["image_guess"], row["path"])
    console.print(table)
    if result.excluded:
        console.print("not scored: " + ", ".join(f"{n} {why}" for why, n in result.excluded.items()), highlight=False)


def summary(result: GapResult, top: int | None, out: Path | None, config_path: Path | None,
            store_config: Path | None) -> dict[str, Any]:
    """What --json prints: the config, what was written where, and the ranked clips."""
    return {
        "store": result.store, "teachers": result.teachers, "config": result.config.to_dict(),
        "scored": int(len(result.rows)), "excluded": result.excluded,
        "store_array": GAP_SCORE_PATH if store_config else None,
        "store_config_file": None if store_config is None else str(store_config), "out": None if out is None else str(out),
        "config_file": None if config_path is None else str(config_path), "clips": result.ranked(top),
    }


@click.command(epilog="Methods: " + "; ".join(f"{name}: {method_summary(name)}" for name in METHODS.names()))
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@config_option(GapConfig, "method", type=click.Choice(METHODS.names()), show_default=True,
               help="Scoring method (see below and docs/method.md, 'Finding the semantic gap').")
@config_option(GapConfig, "label_free", "--label-free", is_flag=True,
               help="Never read the scored clips' labels (the pretrain clips' labels are still used to fit the "
                    "class models; --no-pretrain uses none).")
@config_option(GapConfig, "splits", parse=_split_list,
               help="Comma-separated splits to score [default: every split but pretrain].")
@config_option(GapConfig, "teachers", parse=_split_list, show_default=True,
               help="The audio and the image teacher: modalities or store keys such as audio/cnn14,image/resnet34.")
@config_option(GapConfig, "folds", type=click.IntRange(min=2), show_default=True,
               help="Cross-fitting folds: each clip is scored by models fitted on the other folds.")
@config_option(GapConfig, "trim", type=click.FloatRange(0, 1, max_open=True), show_default=True,
               help="Share of the likeliest gap clips left out of the second pass's fit (0: one pass).")
@config_option(GapConfig, "shrinkage", type=click.FloatRange(0, 1), show_default=True,
               help="Covariance shrinkage of the class models (0: sample covariance, 1: spherical).")
@config_option(GapConfig, "ridge", type=click.FloatRange(min=0, min_open=True), show_default=True,
               help="L2 penalty of the cross-modal maps (crossmodal, combined).")
@config_option(GapConfig, "seed", type=int, show_default=True, help="Seed of the fold assignment.")
@config_option(GapConfig, "use_pretrain", "--pretrain/--no-pretrain", show_default=True,
               help="Fit the models on the pretrain clips too (the teachers' clean, labelled training clips).")
@config_option(GapConfig, "frame_spread", "--frame-spread/--no-frame-spread", show_default=True,
               help="Image vectors: the frames' per-dimension spread beside their mean (motion; off: the mean "
                    "alone).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the ranked table to this .csv or .json file (atomically), its config beside it "
                   "(<name>.gaps.yaml).")
@click.option("--html", "html", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Also write an HTML page of the ranked clips, each playing its window with its sound "
                   f"(the --top clips, default {PAGE_TOP}; media linked relative to the page).")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help=f"Clips shown and written (default: {_SHOWN} shown, all written).")
@click.option("--no-store", "no_store", is_flag=True,
              help=f"Do not write the per-clip scores into STORE ({GAP_SCORE_PATH}).")
@click.option("--json", "as_json", is_flag=True, help="Print the config and the ranked clips as JSON on stdout.")
def gaps(store: Path, out: Path | None, html: Path | None, top: int | None, no_store: bool, as_json: bool,
         **options: Any) -> None:
    """Rank STORE's clips by how much their sound disagrees with their picture (the semantic gap).

    Every usable clip of the chosen splits is scored with cached teacher embeddings only; the scores
    go into STORE (for `distill --exclude-gaps` and `index --exclude-gaps`) unless --no-store, and
    the ranked table to stderr and --out.
    """
    config = GapConfig(**config_fields(options, GapConfig))
    if html is not None:
        check_page_path(html)  # before the scoring, not after it
    result = score_gaps(store, config)
    store_config = None if no_store else save_to_store(result)
    config_path = write_table(result, out, top) if out is not None else None
    page = write_gap_page(result, html, top) if html is not None else None
    if as_json:
        echo_json({**summary(result, top, out, config_path, store_config),
                   "html": None if page is None else str(page.path)})
    else:
        show(result, top or _SHOWN)
        where = [f"{GAP_SCORE_PATH} in {store}", str(store_config)] if store_config else []
        where += [str(out), str(config_path)] if out is not None else []
        where += [str(page.path)] if page is not None else []
        if where:
            console.print("wrote " + ", ".join(where), highlight=False)
