"""`ccl-cache benchmark retrieval STORE --run RUN_DIR ...`: Recall@K, mAP, reports and plot."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from ccl_cache.search.benchmark import RetrievalBenchConfig, RetrievalBenchResult, run_benchmark
from ccl_cache_cli.common import config_fields, config_option, console, echo_json


def _ks(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated integers, e.g. 1,5,10") from None
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"{value!r}: give positive integers, e.g. 1,5,10")
    return ks


def show(result: RetrievalBenchResult) -> None:
    """The Recall@K table (and ANN / recognition columns) on stderr."""
    ks = result.config.ks
    table = Table(title=f"retrieval: {result.config.queries} queries vs {result.config.gallery} gallery (%)")
    for col in ["source", "queries", "gallery", *(f"R@{k}" for k in ks), "mAP", "video top-1"]:
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in result.results:
        top1 = (r.recognition or {}).get("video_top1")
        table.add_row(r.source.label, str(r.n_queries), str(r.n_gallery),
                      *(f"{100 * r.exact[f'recall@{k}']:.1f}" for k in ks), f"{100 * r.exact['mAP']:.1f}",
                      "-" if top1 is None else f"{100 * top1:.1f}")
    console.print(table)
    if result.config.index_type is not None:
        ann = Table(title=f"through a {result.config.index_type} index: recall against exact search (%)")
        for col in ["source", "factory", *(f"@{k}" for k in ks)]:
            ann.add_column(col, justify="left" if col in ("source", "factory") else "right")
        for r in result.results:
            assert r.ann is not None
            ann.add_row(r.source.label, r.ann["factory"], *(f"{100 * r.ann[f'recall_vs_exact@{k}']:.1f}" for k in ks))
        console.print(ann)
    for kind, path in result.outputs.items():
        console.print(f"{kind}: {path}")


@click.command("retrieval")
@click.argument("store", type=click.Path(exists=True))
@config_option(RetrievalBenchConfig, "runs", "--run", "runs", multiple=True,
               help="A student run directory (or its run name in the store); repeat for several.")
@config_option(RetrievalBenchConfig, "teachers", "--teacher", "teachers", multiple=True,
               help="A teacher's embeddings as a reference line, e.g. audio/small_audio; repeatable.")
@config_option(RetrievalBenchConfig, "queries", show_default=True,
               help="Split whose clips are the queries ('all' for every clip).")
@config_option(RetrievalBenchConfig, "gallery", show_default=True, help="Split whose clips are searched.")
@config_option(RetrievalBenchConfig, "ks", show_default=True, callback=_ks, help="The K of Recall@K / precision@K.")
@config_option(RetrievalBenchConfig, "index_type",
               help="Also search through this FAISS index (ivf, hnsw, ivfpq, factory:..., or flat) and "
                    "report its recall against exact search.")
@config_option(RetrievalBenchConfig, "nprobe", type=click.IntRange(min=1),
               help="IVF lists visited per query (with --index-type).")
@config_option(RetrievalBenchConfig, "ef_search", type=click.IntRange(min=1),
               help="HNSW candidate list size (with --index-type hnsw).")
@config_option(RetrievalBenchConfig, "out", type=click.Path(),
               help="Directory for retrieval.json, retrieval.md and recall_at_k.png.")
@config_option(RetrievalBenchConfig, "html", type=click.Path(dir_okay=False),
               help="Write a self-contained HTML page (.html): the table, the Recall@K curves (SVG) and sample "
                    "queries playing beside each source's top results.")
@config_option(RetrievalBenchConfig, "html_queries", type=click.IntRange(min=0), show_default=True,
               help="Sample queries on the page: the first N clips of the query split.")
@config_option(RetrievalBenchConfig, "html_k", type=click.IntRange(min=1), show_default=True,
               help="Results shown per source for each sample query.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def retrieval(store: str, as_json: bool, **options: Any) -> None:
    """Recall@K (hit when any of the top K shares the query's class), mAP, precision@K and
    per-class recall of each --run and --teacher on STORE, by exact cosine search."""
    config = RetrievalBenchConfig(store=store, **config_fields(options, RetrievalBenchConfig))

    def progress(label: str, done: int, total: int) -> Any:
        if not as_json:
            console.print(f"[{done}/{total}] {label}")

    result = run_benchmark(config, progress)
    if as_json:
        echo_json(result.as_dict())
    else:
        show(result)
