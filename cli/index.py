"""`ccl-cache index STORE (--run RUN | --teacher MODALITY/NAME) --out DIR`: build a FAISS index."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ccl_cache.search.gallery import SourceVectors, index_store
from ccl_cache.search.index_types import INDEX_TYPES, IndexConfig
from ccl_cache.search.vector_index import VectorIndex
from ccl_cache_cli.common import config_fields, config_option, console, echo_json, interactive


def _index_type(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in INDEX_TYPES or (value.startswith("factory:") and value[len("factory:"):].strip()):
        return value
    raise click.BadParameter(f"{value!r}: choose one of {', '.join(INDEX_TYPES.names())} or factory:<FAISS string>")


def summary(vindex: VectorIndex, src: SourceVectors, out: Path) -> dict[str, Any]:
    """What was indexed and how, for the table and for --json."""
    meta = vindex.meta
    return {
        "out": str(out), "source": meta.source, "split": meta.split, "vectors": meta.count, "dim": meta.dim,
        "excluded": src.excluded, "index_type": meta.index_type, "factory": meta.factory,
        "nprobe": meta.nprobe, "calibration": meta.calibration, "ef_search": meta.ef_search,
        "device": "gpu" if vindex.on_gpu else "cpu",
        "exact_backend": vindex.exact_backend if meta.index_type == "flat" else None,
        "build_seconds": meta.build_seconds, "store": meta.store_path, "notes": vindex.notes,
    }


def describe_calibration(calibration: dict[str, Any] | None) -> str:
    """One line on how nprobe was chosen, e.g. ``recall@10 0.999 ≥ 0.95 at nprobe 4 (ladder ...)``."""
    if not calibration:
        return "not calibrated (nprobe given, or not an IVF type)"
    ladder = ", ".join(f"{p}→{r:.3f}" for p, r in calibration["ladder"])
    verdict = "≥" if calibration["reached"] else "< target"
    return (f"recall@{calibration['k']} {calibration['recall']:.3f} {verdict} {calibration['target_recall']} "
            f"at nprobe {calibration['nprobe']} (ladder nprobe→recall {ladder}; "
            f"{calibration['queries']} queries, {calibration['seconds']:.2f} s)")


def show(info: dict[str, Any]) -> None:
    table = Table(title=f"index {info['out']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    excluded = ", ".join(f"{n} {reason}" for reason, n in info["excluded"].items() if n) or "none"
    search = f"nprobe {info['nprobe']}" if info["nprobe"] else (f"efSearch {info['ef_search']}" if info["ef_search"] else "exact")
    for name, value in (("source", info["source"]), ("split", info["split"]), ("vectors", f"{info['vectors']} × {info['dim']}"),
                        ("excluded rows", excluded), ("index", f"{info['index_type']} ({info['factory']})"),
                        ("search", search), ("device", info["device"]), ("build time", f"{info['build_seconds']:.2f} s"),
                        ("store", info["store"])):
        table.add_row(name, str(value))
        if name == "search" and info["calibration"]:
            table.add_row("nprobe calibration", describe_calibration(info["calibration"]))
    console.print(table)  # notes (CPU fallback, capped nprobe) were already logged by the library


def _run_with_progress(work: Callable[[Callable[[int, int], None] | None], Any]) -> Any:
    if not interactive():
        return work(None)
    columns = (TextColumn("adding vectors"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("add", total=None)
        return work(lambda done, total: bar.update(task, completed=done, total=total))


@click.command()
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.option("--run", "run", default=None,
              help="Student run name, or its run directory (name from summary.json's 'run', else the folder).")
@click.option("--teacher", default=None, help="Teacher key MODALITY/NAME, e.g. audio/cnn14_emb512.")
@click.option("--split", default="train", show_default=True, help="Clips of this split only, or 'all'.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Index directory (index.faiss + index.json).")
@config_option(IndexConfig, "index_type", "--type", "index_type", show_default=True, callback=_index_type,
               help="flat | ivf | hnsw | ivfpq | factory:<FAISS factory string>.")
@config_option(IndexConfig, "nlist", type=click.IntRange(min=1), help="IVF lists (default ≈ 4·√n).")
@config_option(IndexConfig, "nprobe", type=click.IntRange(min=1),
               help="IVF lists searched per query (default: chosen from the data, see --target-recall).")
@config_option(IndexConfig, "target_recall", type=click.FloatRange(min=0.0, max=1.0, min_open=True),
               show_default=True,
               help="ivf/ivfpq without --nprobe: the smallest nprobe of 1, 2, 4, ..., nlist whose recall@10 "
                    "vs exact search on 256 gallery vectors reaches this is chosen at build time.")
@config_option(IndexConfig, "ef_search", type=click.IntRange(min=1), help="HNSW efSearch.")
@config_option(IndexConfig, "device", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True,
               help="Where FAISS builds and searches (GPU needs faiss-gpu).")
@config_option(IndexConfig, "exclude_gaps", type=float, metavar="THRESHOLD",
               help="Leave out the gallery clips whose gap score (written by `ccl-cache gaps STORE`) is above "
                    "THRESHOLD (default: keep them all).")
@click.option("--overwrite", is_flag=True, help="Replace an index already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def index(store: Path, run: str | None, teacher: str | None, split: str, out: Path, overwrite: bool, as_json: bool,
          **options: Any) -> None:
    """Build a FAISS index over a student's or a teacher's embeddings of one split of STORE."""
    if (run is None) == (teacher is None):
        raise click.UsageError("give exactly one of --run RUN_NAME_OR_DIR and --teacher MODALITY/NAME")
    config = IndexConfig(**config_fields(options, IndexConfig))
    vindex, src = _run_with_progress(lambda progress: index_store(
        store, out, config, run=run, teacher=teacher, split=split, overwrite=overwrite, progress=progress))
    info = summary(vindex, src, out)
    if as_json:
        echo_json(info)
    else:
        show(info)

