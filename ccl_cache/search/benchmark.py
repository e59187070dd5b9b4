"""Offline retrieval benchmark: Recall@K curves of several runs (and teachers) on one store.

The protocol is the usual one behind Chen et al., "Distilling Audio-Visual Knowledge by
Compositional Contrastive Learning" (CVPR 2021, supplementary Table C and Figure 1): the videos
of one split (``queries``, default ``test``) query those of another (``gallery``, default
``train``) by cosine similarity of their embeddings; a query scores a hit at K when any of its
top K shares its class. Reported per source (a trained student run, or a teacher's cached
embeddings as a reference): Recall@K, precision@K, mAP and per-class Recall@K, computed by
exact search (:func:`ccl_cache.evaluate.retrieval_metrics`). When an approximate index type is
named, the same metrics are computed again through that FAISS index, together with its recall
against exact search (``|ANN top-K ∩ exact top-K| / K``).

When queries and gallery overlap (same split, or ``all``), each query's own row is left out of
its ranking and of its relevant count, so a video never retrieves itself.

Outputs (:func:`write_report`): ``retrieval.json``, ``retrieval.md`` and ``recall_at_k.png``
(one line per source, like the paper's Figure 1). With ``html``, one self-contained page
(:func:`write_html`): the Recall@K curves as inline SVG, the table, and the first
``html_queries`` clips of the query split playing beside each source's top ``html_k``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccl_cache.errors import ConfigError
from ccl_cache.evaluate import DEFAULT_KS, count_relevant, metrics_from_ranking, retrieval_metrics
from ccl_cache.fileio import atomic_path, atomic_write_text, write_json
from ccl_cache.search.exact import topk_exact
from ccl_cache.report import LinePlot, ResultGroup, ResultItem, Section, Series, Table, check_page_path, write_page
from ccl_cache.search.gallery import collect_vectors, resolve_run, split_rows
from ccl_cache.search.index import build_index
from ccl_cache.search.index_types import IndexConfig

REPORT_JSON = "retrieval.json"
REPORT_MD = "retrieval.md"
REPORT_PNG = "recall_at_k.png"
SampleHits = tuple[tuple[int, float], ...]  # (gallery store row, cosine) of one sample query, best first


@dataclass(frozen=True)
class RetrievalBenchConfig:
    """What to benchmark. ``runs``: student run directories or run names in the store;
    ``teachers``: teacher keys (``audio/NAME``, ``image/NAME``) benchmarked in their own space.
    ``index_type``: None for exact search only, else an index type of :mod:`ccl_cache.search.index_types`
    (``ivf``, ``hnsw``, ``ivfpq``, ``factory:...``; ``flat`` checks FAISS's exact path) measured as well."""

    store: str
    runs: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ()
    queries: str = "test"
    gallery: str = "train"
    ks: tuple[int, ...] = DEFAULT_KS
    index_type: str | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    out: str | None = None
    html: str | None = None
    html_queries: int = 4
    html_k: int = 5

    def validate(self) -> None:
        if not self.runs and not self.teachers:
            raise ConfigError("nothing to benchmark: pass at least one --run RUN_DIR or --teacher MODALITY/NAME")
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise ConfigError(f"ks={self.ks}: give positive integers, e.g. 1,5,10")
        if self.index_type is None and (self.nprobe is not None or self.ef_search is not None):
            raise ConfigError(f"nprobe={self.nprobe}, ef_search={self.ef_search} tune an index search: pass "
                              "--index-type too (exact search has no such setting), or drop them")
        if self.html is not None:
            check_page_path(self.html)
        if self.html_queries < 0 or self.html_k < 1:
            raise ConfigError(f"html_queries={self.html_queries}, html_k={self.html_k}: give 0 or more sample "
                              "queries and at least 1 result each")


@dataclass(frozen=True)
class Source:
    """One line of the benchmark: a student run or a teacher's embeddings."""

    label: str          # shown in tables and the plot legend
    kind: str           # "student" | "teacher"
    key: str            # run name in the store, or teacher key
    method: str = ""
    run_dir: str | None = None


@dataclass(frozen=True)
class SourceResult:
    """Metrics of one source: exact search, optionally an ANN index, recognition from the run."""

    source: Source
    exact: dict[str, Any]
    n_queries: int
    n_gallery: int
    excluded: dict[str, dict[str, int]]
    ann: dict[str, Any] | None = None
    recognition: dict[str, Any] | None = None
    seconds: float = 0.0
    samples: dict[int, SampleHits] = field(default_factory=dict)  # query store row -> its top html_k

    def recall(self, k: int) -> float:
        return float(self.exact[f"recall@{k}"])


@dataclass(frozen=True)
class RetrievalBenchResult:
    """Every source's result plus the settings that produced them."""

    config: RetrievalBenchConfig
    classes: tuple[str, ...]
    results: tuple[SourceResult, ...]
    outputs: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.config.store, "queries": self.config.queries, "gallery": self.config.gallery,
            "ks": list(self.config.ks), "index_type": self.config.index_type, "classes": list(self.classes),
            "sources": [_result_dict(r) for r in self.results], "outputs": dict(self.outputs),
        }


def _result_dict(r: SourceResult) -> dict[str, Any]:
    return {"label": r.source.label, "kind": r.source.kind, "key": r.source.key, "method": r.source.method,
            "run_dir": r.source.run_dir, "n_queries": r.n_queries, "n_gallery": r.n_gallery,
            "excluded": r.excluded, "exact": r.exact, "ann": r.ann, "recognition": r.recognition,
            "seconds": round(r.seconds, 3)}


# --------------------------------------------------------------------------------------------
# Sources


def resolve_sources(store: Any, runs: Sequence[str], teachers: Sequence[str]) -> list[Source]:
    """Student runs (directories or names, checked against the store) and teacher keys → sources."""
    out: list[Source] = []
    for run in runs:
        name = resolve_run(store, run)
        attrs = store.student_attrs(name)
        run_dir = Path(run) if Path(run).is_dir() else None
        if run_dir is None and attrs.get("run_dir"):
            run_dir = Path(str(attrs["run_dir"]))
        method = str(attrs.get("method", ""))
        out.append(Source(f"{name} ({method})" if method else name, "student", name, method,
                          str(run_dir) if run_dir is not None else None))
    known = store.teacher_keys()
    for key in teachers:
        if key not in known:
            raise ConfigError(f"{store.path}: no teacher {key!r}; teachers in this store: "
                              f"{', '.join(known) or 'none'} (give MODALITY/NAME, e.g. audio/small_audio)")
        out.append(Source(f"teacher {key}", "teacher", key, "teacher"))
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"the same source is listed twice ({labels}); give each run or teacher once")
    return out


def _recognition(source: Source) -> dict[str, Any] | None:
    """The run's own test metrics (video/clip top-1) from its ``summary.json``, when present."""
    if source.run_dir is None:
        return None
    path = Path(source.run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        test = json.loads(path.read_text(encoding="utf-8")).get("test") or {}
    except (OSError, ValueError):
        return None
    keep = {k: test[k] for k in ("video_top1", "clip_top1", "videos") if k in test}
    return keep or None


# --------------------------------------------------------------------------------------------
# Metrics of one source


def self_exclusion(query_rows: np.ndarray, gallery_rows: np.ndarray) -> np.ndarray:
    """Per query, the gallery position holding the same store row (the query itself), or -1."""
    position = {int(r): i for i, r in enumerate(gallery_rows)}
    return np.array([position.get(int(r), -1) for r in query_rows], dtype=np.int64)


def _drop_self(rows: np.ndarray, exclude: np.ndarray, width: int) -> np.ndarray:
    """Remove each query's own gallery position from its result list, keep ``width`` columns."""
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, (found, ex) in enumerate(zip(rows, exclude)):
        keep = found[found != ex] if ex >= 0 else found
        out[i, :min(width, len(keep))] = keep[:width]
    return out


def ann_metrics(q: np.ndarray, q_labels: np.ndarray, g: np.ndarray, g_labels: np.ndarray,
                exclude: np.ndarray, ks: tuple[int, ...], config: IndexConfig) -> dict[str, Any]:
    """Retrieval metrics through an approximate FAISS index, and its recall against exact search.

    ``recall_vs_exact@K`` = mean over queries of ``|ANN top-K ∩ exact top-K| / min(K, ranking)``.
    """
    t0 = time.perf_counter()
    vindex = build_index(g, config)  # positions 0..n-1 are the gallery rows of this benchmark
    build_s = time.perf_counter() - t0
    width = min(max(ks), len(g) - int((exclude >= 0).any()))
    extra = 1 if (exclude >= 0).any() else 0
    t1 = time.perf_counter()
    _, found = vindex.search(q, width + extra)
    search_s = time.perf_counter() - t1
    ann_rows = _drop_self(found, exclude, width)
    _, exact = topk_exact(q, g, width + extra)
    exact_rows = _drop_self(exact, exclude, width)
    ranked = np.where(ann_rows >= 0, g_labels[np.maximum(ann_rows, 0)], -1)
    metrics = metrics_from_ranking(ranked, q_labels, count_relevant(q_labels, g_labels, exclude), ks)
    overlap = {}
    for k in ks:
        kk = min(k, width)
        inter = [len(set(a[:kk][a[:kk] >= 0]) & set(e[:kk][e[:kk] >= 0])) for a, e in zip(ann_rows, exact_rows)]
        overlap[f"recall_vs_exact@{k}"] = float(np.mean(inter) / kk) if kk else float("nan")
    return {"index_type": config.index_type, "factory": vindex.meta.factory, "nprobe": vindex.meta.nprobe,
            "ef_search": vindex.meta.ef_search, "build_s": round(build_s, 4), "search_s": round(search_s, 4),
            **overlap, "metrics": metrics.as_dict()}


def _vectors(store: Any, source: Source, split: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    kwargs = {"run": source.key} if source.kind == "student" else {"teacher": source.key}
    vec = collect_vectors(store, split=split, **kwargs)
    return vec.vectors, vec.rows, vec.excluded


def sample_hits(q: np.ndarray, q_rows: np.ndarray, g: np.ndarray, g_rows: np.ndarray, exclude: np.ndarray,
                sample_rows: Sequence[int], k: int) -> dict[int, SampleHits]:
    """The exact top ``k`` of the sample queries this source has (its own row left out)."""
    position = {int(r): i for i, r in enumerate(q_rows)}
    picked = [position[int(r)] for r in sample_rows if int(r) in position]
    if not picked:
        return {}
    scores, found = topk_exact(q[picked], g, k + 1)
    out = {}
    for i, s, f in zip(picked, scores, found):
        keep = f != exclude[i]
        out[int(q_rows[i])] = tuple((int(g_rows[j]), float(v)) for j, v in zip(f[keep][:k], s[keep][:k]))
    return out


def benchmark_source(store: Any, source: Source, config: RetrievalBenchConfig,
                     sample_rows: Sequence[int] = ()) -> SourceResult:
    """Exact (and optionally ANN) retrieval metrics of one source, queries vs gallery, and the top
    ``html_k`` of the ``sample_rows`` queries (for the page)."""
    t0 = time.perf_counter()
    labels = np.asarray(store.clips.label, dtype=np.int64)
    q, q_rows, q_ex = _vectors(store, source, config.queries)
    g, g_rows, g_ex = _vectors(store, source, config.gallery)
    exclude = self_exclusion(q_rows, g_rows)
    if len(g) - int((exclude >= 0).any()) < 1:
        raise ConfigError(f"{source.label}: the gallery ({config.gallery}) has no item left once each query "
                          "is excluded from its own results; use a larger gallery split")
    ks = tuple(int(k) for k in config.ks)
    exact = retrieval_metrics(q, labels[q_rows], g, labels[g_rows], ks,
                              exclude_self=exclude if (exclude >= 0).any() else None)
    ann = None
    if config.index_type is not None:
        icfg = IndexConfig(index_type=config.index_type, nprobe=config.nprobe, ef_search=config.ef_search, device="cpu")
        ann = ann_metrics(q, labels[q_rows], g, labels[g_rows], exclude, ks, icfg)
    samples = sample_hits(q, q_rows, g, g_rows, exclude, sample_rows, config.html_k) if sample_rows else {}
    return SourceResult(source, exact.as_dict(), len(q), len(g), {"queries": q_ex, "gallery": g_ex}, ann,
                        _recognition(source), time.perf_counter() - t0, samples)


def run_benchmark(config: RetrievalBenchConfig, progress: Any = None) -> RetrievalBenchResult:
    """Benchmark every source of ``config``; write the report files when ``config.out`` is set.

    ``progress(label, done, total)`` is called after each source.
    """
    from ccl_cache.store import open_store

    config.validate()
    with open_store(config.store, "r") as store:
        sources = resolve_sources(store, config.runs, config.teachers)
        classes = tuple(store.classes)
        samples = split_rows(store, config.queries)[:config.html_queries].tolist() if config.html else []
        results = []
        for i, source in enumerate(sources):
            results.append(benchmark_source(store, source, config, samples))
            if progress is not None:
                progress(source.label, i + 1, len(sources))
        result = RetrievalBenchResult(config, classes, tuple(results))
        outputs = {}
        if config.html is not None:
            outputs["html"] = str(write_html(result, store, samples, config.html))
    if config.out is not None:
        outputs = {**write_report(result, config.out), **outputs}
    return replace(result, outputs=outputs)


# --------------------------------------------------------------------------------------------
# Reports


def _pct(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * float(value):.1f}"


def markdown_report(result: RetrievalBenchResult) -> str:
    """Recall@K / mAP / precision table, recognition and ANN tables, per-class Recall@1."""
    cfg, ks = result.config, result.config.ks
    lines = [f"# Retrieval benchmark: {cfg.queries} queries vs {cfg.gallery} gallery", "",
             f"Store: `{cfg.store}`. Cosine similarity, exact search; a hit at K when any of the top K "
             "shares the query's class. Values in %.", ""]
    head = ["source", "queries", "gallery"] + [f"R@{k}" for k in ks] + ["mAP"] + [f"P@{k}" for k in ks]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result.results:
        cells = [r.source.label, str(r.n_queries), str(r.n_gallery)] + [_pct(r.exact[f"recall@{k}"]) for k in ks]
        cells += [_pct(r.exact["mAP"])] + [_pct(r.exact[f"precision@{k}"]) for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    recog = [r for r in result.results if r.recognition]
    if recog:
        lines += ["", "## Recognition (the run's test split)", "", "| source | video top-1 | clip top-1 |", "|---|---|---|"]
        lines += [f"| {r.source.label} | {_pct(r.recognition.get('video_top1'))} | "
                  f"{_pct(r.recognition.get('clip_top1'))} |" for r in recog if r.recognition]
    if cfg.index_type is not None:
        lines += ["", f"## Through a `{cfg.index_type}` index", "",
                  "| source | factory | " + " | ".join(f"R@{k}" for k in ks) + " | "
                  + " | ".join(f"vs exact@{k}" for k in ks) + " |", "|" + "---|" * (2 + 2 * len(ks))]
        for r in result.results:
            assert r.ann is not None
            m = r.ann["metrics"]
            lines.append(f"| {r.source.label} | {r.ann['factory']} | "
                         + " | ".join(_pct(m[f"recall@{k}"]) for k in ks) + " | "
                         + " | ".join(_pct(r.ann[f"recall_vs_exact@{k}"]) for k in ks) + " |")
    lines += ["", f"## Per-class Recall@{ks[0]}", "", "| class | " + " | ".join(r.source.label for r in result.results) + " |",
              "|" + "---|" * (1 + len(result.results))]
    for c, name in enumerate(result.classes):
        cells = [_pct(r.exact["per_class_recall"].get(str(c), {}).get(f"recall@{ks[0]}")) for r in result.results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def recall_plot(result: RetrievalBenchResult) -> LinePlot:
    """Recall@K (%) against K, one series per source (teachers dashed), for the HTML page."""
    ks = tuple(int(k) for k in result.config.ks)
    return LinePlot(f"Retrieval: {result.config.queries} → {result.config.gallery}", ks,
                    tuple(Series(r.source.label, tuple(100 * r.recall(k) for k in ks), r.source.kind == "teacher")
                          for r in result.results),
                    "K", "Recall@K (%)", log_x=True, y_range=(0.0, 100.0))


def recall_table(result: RetrievalBenchResult) -> Table:
    """Queries, gallery, Recall@K and mAP (%) per source."""
    ks = result.config.ks
    rows = tuple((r.source.label, str(r.n_queries), str(r.n_gallery), *(_pct(r.exact[f"recall@{k}"]) for k in ks),
                  _pct(r.exact["mAP"])) for r in result.results)
    return Table(("source", "queries", "gallery", *(f"R@{k}" for k in ks), "mAP"), rows, "Values in %")


def write_html(result: RetrievalBenchResult, store: Any, sample_rows: Sequence[int], path: str | Path) -> Path:
    """The benchmark as one self-contained page: table, Recall@K curves (inline SVG), then each
    sample query playing beside every source's top ``html_k`` (green: same class, red: other)."""
    from ccl_cache.search.retrieve import clip_media

    clips, classes = store.clips, result.classes

    def name(label: int) -> str:
        return classes[label] if 0 <= label < len(classes) else "unlabelled"

    sections = []
    for row in sample_rows:
        label = int(clips.label[row])
        groups = []
        for r in result.results:
            hits = r.samples.get(int(row))
            items = tuple(ResultItem(clip_media(store, g), name(int(clips.label[g])), score,
                                     None if label < 0 else int(clips.label[g]) == label, (f"#{rank} {clips.id[g]}",))
                          for rank, (g, score) in enumerate(hits or (), start=1))
            empty = (f"{r.source.label} has no embedding of this clip (missing modality or failed decode)"
                     if hits is None else "no results")
            groups.append(ResultGroup(r.source.label, items, empty))
        sections.append(Section(f"{clips.id[row]}", clip_media(store, int(row)), (),
                                (f"{result.config.queries} query", name(label)), tuple(groups)))
    cfg = result.config
    notes = [f"Store {cfg.store}: {cfg.queries} clips query the {cfg.gallery} clips by exact cosine search; a query "
             "hits at K when one of its top K shares its class. Each query's own clip is left out of its ranking.",
             f"Samples: the first {len(sample_rows)} clips of the {cfg.queries} split, top {cfg.html_k} per source."]
    return write_page(path, f"Retrieval benchmark: {cfg.queries} → {cfg.gallery}", sections, plot=recall_plot(result),
                      notes=notes, table=recall_table(result)).path


def plot_recall_curves(result: RetrievalBenchResult, path: str | Path) -> Path:
    """Recall@K against K, one line per source (the paper's Figure 1), as a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2), dpi=110)
    FigureCanvasAgg(fig)  # a canvas of its own: no pyplot, no global backend state
    ax = fig.add_subplot(1, 1, 1)
    ks = list(result.config.ks)
    for r in result.results:
        style = "--" if r.source.kind == "teacher" else "-"
        ax.plot(ks, [100 * r.recall(k) for k in ks], style, marker="o", label=r.source.label)
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Retrieval: {result.config.queries} → {result.config.gallery}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_report(result: RetrievalBenchResult, out: str | Path) -> dict[str, str]:
    """Write ``retrieval.json``, ``retrieval.md`` and ``recall_at_k.png`` into ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; give a directory for the benchmark outputs")
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"json": str(out / REPORT_JSON), "markdown": str(out / REPORT_MD), "plot": str(out / REPORT_PNG)}
    atomic_write_text(out / REPORT_MD, markdown_report(result))
    plot_recall_curves(result, out / REPORT_PNG)
    write_json(out / REPORT_JSON, {**result.as_dict(), "outputs": outputs, "config": result.config})
    return outputs
