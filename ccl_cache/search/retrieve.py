"""Search an index by example: video clips, audio files or clip ids already in the store.

Chen et al., "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (CVPR
2021, Figure 2) show retrieval with the distilled video student: a query video's embedding
ranks the training videos by cosine similarity. This module answers such queries against an
index built by ``ccl-cache index`` (:mod:`ccl_cache.search.index`):

* **video file** → embedded by the index's student run exactly as the test protocol does
  (non-overlapping 16-frame windows over the whole file, centre crop, embeddings averaged:
  :class:`ccl_cache.data.FrameReader` windows through :func:`ccl_cache.train.run_windows`);
* **audio file** → embedded by the store's audio teacher, rebuilt from the fingerprint the
  store recorded (architecture, preprocessing; weights from the extraction config beside the
  store, or ``audio_weights``, and their SHA-256 checked against the fingerprint). Against a
  student index this is cross-modal search, sound → video: CCL trained the student to agree
  with the audio teacher's space, so the *raw* teacher embedding is searched (the run's audio
  composition layer is not applied). The two spaces must have the same dimension;
* **clip id** of the store → its stored embedding of the index's source (no decoding).

The sidecar of the index says which store and which source (``student:<run>`` or
``teacher:<key>``) it holds; a student run's directory (checkpoint, config) is recorded with
its embeddings in the store (``run_dir``), or passed as ``run_dir``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ccl_cache import hardware, media
from ccl_cache.errors import CheckpointError, ConfigError, IndexMismatchError, MediaError, TeacherError
from ccl_cache.fileio import atomic_path, sha256_file
from ccl_cache.report import MediaItem, ResultItem, Section, check_page_path, write_page
from ccl_cache.search.gallery import collect_vectors
from ccl_cache.search.index import load_index
from ccl_cache.search.sidecar import check_store
from ccl_cache.search.vector_index import VectorIndex

AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".m4a", ".flac", ".ogg", ".oga", ".opus", ".aac", ".wma", ".aif", ".aiff"})
MODALITIES = ("auto", "video", "audio", "clip")
GRID_FRAME_SIDE = 128  # shorter side of the frames drawn in the grid (pixels)


@dataclass(frozen=True)
class RetrieveConfig:
    """One retrieval request. ``modality``: how to read every query ("auto" decides per query:
    an existing file with a video stream is a video, an audio suffix or an audio-only file is
    audio, anything else must be a clip id of the store). ``run_dir``/``store`` override what
    the index and the store recorded; ``max_windows`` caps a video query's windows (None: the
    run's test setting); ``label``: the query's class, when the store does not know it (only
    colours the grid)."""

    index: str
    queries: tuple[str, ...]
    k: int = 10
    modality: str = "auto"
    audio_weights: str | None = None
    run_dir: str | None = None
    store: str | None = None
    checkpoint: str = "best"
    device: str = "cpu"
    max_windows: int | None = None
    label: str | None = None
    save_grid: str | None = None
    html: str | None = None

    def validate(self) -> None:
        if not self.queries:
            raise ConfigError("no query: give a video file, an audio file or a clip id of the store")
        if self.k < 1:
            raise ConfigError(f"k={self.k}: ask for at least one result")
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality {self.modality!r}: choose one of {', '.join(MODALITIES)}")
        if self.checkpoint not in ("best", "last"):
            raise ConfigError(f"checkpoint {self.checkpoint!r}: choose best or last")
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigError(f"max_windows={self.max_windows}: need at least 1 (or None for the run's setting)")
        if self.save_grid is not None and Path(self.save_grid).suffix.lower() != ".png":
            raise ConfigError(f"{self.save_grid}: the grid is written as PNG; give a path ending in .png")
        if self.html is not None:
            check_page_path(self.html)


@dataclass(frozen=True)
class Query:
    """A query as understood: ``kind`` video | audio | clip; ``row`` the store row when known."""

    text: str
    kind: str
    path: str | None = None
    row: int | None = None
    label: int | None = None


@dataclass(frozen=True)
class Hit:
    rank: int
    row: int
    clip_id: str
    label: int
    class_name: str
    score: float
    path: str


@dataclass(frozen=True)
class QueryResult:
    query: Query
    class_name: str | None
    hits: tuple[Hit, ...]
    windows: int = 0  # windows a video query was embedded from (0: not a video query)


@dataclass(frozen=True)
class RetrieveResult:
    index: str
    store: str
    source: str
    k: int  # results per query: the k asked for, cut to the index size
    results: tuple[QueryResult, ...]
    grid: str | None = None
    notes: tuple[str, ...] = ()
    html: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "store": self.store, "source": self.source, "k": self.k, "grid": self.grid,
            "html": self.html,
            "notes": list(self.notes),
            "queries": [{"query": r.query.text, "kind": r.query.kind, "class": r.class_name, "windows": r.windows,
                         "hits": [vars(h) for h in r.hits]} for r in self.results],
        }


# --------------------------------------------------------------------------------------------
# Index, store and queries


def resolve_store_path(index_dir: Path, recorded: str | None, override: str | None) -> Path:
    """The store an index was built from: ``override``, else the sidecar's path (as recorded,
    or relative to the index directory's parent when it was recorded relative)."""
    if override is not None:
        return Path(override)
    if not recorded:
        raise IndexMismatchError(f"{index_dir}: the index records no store; pass the store (--store) it was built from")
    path = Path(recorded)
    for candidate in (path, index_dir.parent / path):
        if candidate.exists():
            return candidate
    raise IndexMismatchError(f"{index_dir}: its store {recorded} is not found from here; pass --store PATH")


def classify_query(text: str, modality: str, store: Any, row_of: dict[str, int], paths: dict[str, int]) -> Query:
    """Decide what ``text`` is (see :class:`RetrieveConfig`); clear errors for anything else."""
    path = Path(text).expanduser()
    exists = path.exists() or media.is_member_path(path)  # a file, or <shard>.tar/<member>
    if modality == "clip" or (modality == "auto" and not exists and text in row_of):
        if text not in row_of:
            raise ConfigError(f"{text!r} is not a clip id of store {store.path}; give an id from its clips table")
        row = row_of[text]
        return Query(text, "clip", None, row, int(store.clips.label[row]))
    if not exists:
        raise ConfigError(f"query {text!r}: no such file, and not a clip id of store {store.path}; "
                          "give a video/audio file or a clip id")
    if path.is_dir():
        raise ConfigError(f"query {text!r} is a directory; give a video or audio file (or a clip id)")
    row = paths.get(str(path.resolve()))
    label = None if row is None else int(store.clips.label[row])
    kind = modality
    if kind == "auto":
        info = media.probe(path)  # MediaError (naming the file) for what is not media
        audio_suffix = path.suffix.lower() in AUDIO_SUFFIXES
        kind = "audio" if audio_suffix or not info.has_video else "video"
        if kind == "audio" and not info.has_audio:
            raise MediaError(path, "no-audio", "has neither a video nor an audio stream; give a media file")
    return Query(text, kind, str(path), row, label)


# --------------------------------------------------------------------------------------------
# Embedding queries


def embed_videos(paths: Sequence[str], run_dir: str | Path, store_path: str | Path, *, checkpoint: str = "best",
                 device: torch.device = torch.device("cpu"), max_windows: int | None = None
                 ) -> tuple[np.ndarray, list[int]]:
    """Student embeddings of video files by the test protocol: ``(Q, D)`` and windows per file.

    Reuses the trainer's windows (:class:`ccl_cache.data.FrameReader`) and evaluation pass
    (:func:`ccl_cache.train.run_windows`), so a gallery clip given as a file embeds as in the store.
    """
    from ccl_cache.data import ClipInfo, FrameReader, center, collate_windows
    from ccl_cache.train import Amp, load_student, run_windows

    student, config, _ = load_student(run_dir, checkpoint, device)
    cap = max_windows if max_windows is not None else config.test_max_windows
    reader = FrameReader(store_path, [ClipInfo(str(p), 0.0, math.nan, -1) for p in paths], config.clip_spec, None)
    embeddings, counts = [], []
    try:
        for i, path in enumerate(paths):
            try:
                windows = reader.windows(i, None, cap)
            except MediaError as exc:
                raise MediaError(path, exc.reason, f"cannot decode the query video ({exc.__cause__ or exc}); "
                                 "check the file plays, or re-encode it") from exc
            video = torch.stack([center(torch.from_numpy(w.frames), config.clip_spec) for w in windows])
            item = {"video": video, "label": torch.tensor(-1), "index": torch.tensor(i), "row": torch.tensor(i)}
            result = run_windows(student, [collate_windows([item])], device, Amp("off", device.type),
                                 config.eval_batch_size or config.batch_size)
            embeddings.append(result.embedding[0])
            counts.append(len(windows))
    finally:
        reader.close()
    return np.stack(embeddings).astype(np.float32), counts


def _weights_from_provenance(store_path: Path) -> str | None:
    """The audio weights file named by the extraction config(s) saved beside the store."""
    import yaml

    for cfg in [store_path.with_name(store_path.name + ".extract.yaml"),
                *sorted(store_path.parent.glob(store_path.name + ".extract-shard-*.yaml"))]:
        if cfg.is_file():
            weights = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("audio_weights")
            if weights:
                path = Path(str(weights)).expanduser()
                return str(path if path.exists() or path.is_absolute() else cfg.parent / path)
    return None


def load_audio_teacher(store: Any, key: str, weights: str | None, device: torch.device) -> Any:
    """Rebuild the store's audio teacher ``key`` from its fingerprint, weights SHA-256 checked."""
    from ccl_cache.teachers import build_teacher

    fp = store.teacher(key).fingerprint
    recorded = str(fp.get("weights", ""))
    if recorded == "random":
        raise TeacherError(f"{store.path}: teacher {key} was extracted with random weights, which cannot be "
                           "rebuilt; extract with a weights file to search by sound")
    path = weights or _weights_from_provenance(Path(store.path))
    if path is None or not Path(path).is_file():
        origin = "given" if weights else "named by the extraction config"
        where = f"weights file {path} ({origin}) is missing" if path else "no weights file is recorded"
        raise ConfigError(f"audio teacher {key}: {where}; pass the weights file the store was extracted with "
                          "(--audio-weights PATH)")
    if len(recorded) == 64 and sha256_file(path) != recorded:
        raise TeacherError(f"{path}: SHA-256 differs from the weights {key} was extracted with ({recorded[:12]}…); "
                           "pass the same weights file (--audio-weights)")
    teacher = build_teacher(str(fp["name"]), path, device)
    built = teacher.fingerprint()
    diff = sorted(k for k in built if k in fp and built[k] != fp[k])
    if diff:
        raise TeacherError(f"rebuilt audio teacher {key} differs from the store's fingerprint in {', '.join(diff)}; "
                           "the store was written by another ccl-cache version or teacher options")
    return teacher


def embed_audio(path: str, teacher: Any, key: str, fingerprint: dict[str, Any]) -> np.ndarray:
    """The audio teacher's embedding of a whole file, by the store's extraction policy
    (clip level, or the mean of its L-second segments, as the index averages them)."""
    from ccl_cache.extract import ClipTask, DecodeSpec, TeacherRunner, decode_clip

    policy = fingerprint.get("extraction", {})
    rate = int(teacher.preprocess.sample_rate or 0)
    clip = decode_clip(ClipTask(0, path, None, None, audio=True), DecodeSpec(sample_rate=rate, min_coverage=0.0))
    failure = clip.failures.get("audio")
    if failure is not None:
        raise MediaError(path, failure.reason, f"cannot decode the query audio: {failure.message}")
    if clip.audio is None or clip.audio.size == 0:
        raise MediaError(path, "no-audio", "has no decodable audio; give a file with sound")
    segment = policy.get("segment_seconds") if policy.get("audio") == "segments" else None
    slots = None if segment is None else max(1, int(clip.audio.size // max(1, round(segment * rate))))
    weight = next(teacher.parameters(), None)  # a teacher without parameters runs on the CPU
    runner = TeacherRunner(key, teacher, "cpu" if weight is None else str(weight.device), amp=False, dtype="float32",
                           slots=slots, segment_seconds=segment)
    out = runner.run([clip])
    if out.failures:
        raise MediaError(path, "teacher", f"the audio teacher failed on it: {out.failures[0].message}")
    emb, mask = out.embedding[0], np.asarray(out.mask[0], dtype=bool)
    return (emb[mask].mean(axis=0) if emb.ndim == 2 else emb).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The request


@dataclass
class _Context:
    """What one request holds open: index, store, source, lazily built embedders."""

    config: RetrieveConfig
    vindex: VectorIndex
    store: Any
    store_path: Path
    source_kind: str  # "student" | "teacher"
    source_key: str
    notes: list[str] = field(default_factory=list)
    device: torch.device = torch.device("cpu")

    def run_dir(self) -> Path:
        attrs = self.store.student_attrs(self.source_key) if self.source_kind == "student" else {}
        if self.config.run_dir is not None:
            given = Path(self.config.run_dir)
            # Queries must be embedded by the student that embedded the gallery.
            if attrs.get("run_dir") and Path(str(attrs["run_dir"])).resolve() != given.resolve():
                raise ConfigError(f"--run {given}: the index holds student run {self.source_key!r}, embedded by "
                                  f"{attrs['run_dir']}; pass that run (or leave --run out), or index this run's "
                                  "embeddings")
            return given
        if not attrs.get("run_dir"):
            raise CheckpointError(f"{self.store_path}: student run {self.source_key} records no run directory; "
                                  "pass the `ccl-cache distill --out` directory (--run)")
        return Path(str(attrs["run_dir"]))

    def audio_key(self) -> str:
        if self.source_kind == "teacher":
            if not self.source_key.startswith("audio/"):
                raise ConfigError(f"index holds {self.source_key} embeddings: an audio query needs a student "
                                  "index or an audio teacher index")
            return self.source_key
        summary = self.run_dir() / "summary.json"
        if summary.is_file():
            import json

            key = (json.loads(summary.read_text(encoding="utf-8")).get("teachers") or {}).get("audio")
            if key:
                return str(key)
        keys = [k for k in self.store.teacher_keys() if k.startswith("audio/")]
        if len(keys) != 1:
            raise ConfigError(f"{self.store_path}: cannot tell which audio teacher to use (audio teachers: "
                              f"{', '.join(keys) or 'none'}); search by sound needs exactly one")
        return keys[0]


def _stored_vectors(ctx: _Context, rows: list[int]) -> np.ndarray:
    kwargs = {"run": ctx.source_key} if ctx.source_kind == "student" else {"teacher": ctx.source_key}
    src = collect_vectors(ctx.store, split="all", **kwargs)
    where = {int(r): i for i, r in enumerate(src.rows)}
    missing = [r for r in rows if r not in where]
    if missing:
        ids = [str(ctx.store.clips.id[r]) for r in missing]
        raise ConfigError(f"clip(s) {', '.join(ids)} have no {ctx.source_kind} embedding in {ctx.store_path} "
                          "(failed or missing modality); query with the file instead")
    return src.vectors[[where[r] for r in rows]]


def _embed_all(ctx: _Context, queries: list[Query]) -> tuple[np.ndarray, list[int]]:
    """(Q, D) query vectors in query order, and windows per video query."""
    vectors: list[np.ndarray | None] = [None] * len(queries)
    windows = [0] * len(queries)
    clip_pos = [i for i, q in enumerate(queries) if q.kind == "clip"]
    if clip_pos:
        for i, v in zip(clip_pos, _stored_vectors(ctx, [int(queries[i].row) for i in clip_pos])):
            vectors[i] = v
    video_pos = [i for i, q in enumerate(queries) if q.kind == "video"]
    if video_pos:
        if ctx.source_kind != "student":
            raise ConfigError(f"index holds {ctx.source_key} embeddings: video queries need an index of a "
                              "student run (`ccl-cache index --run RUN_DIR`)")
        emb, counts = embed_videos([str(queries[i].path) for i in video_pos], ctx.run_dir(), ctx.store_path,
                                   checkpoint=ctx.config.checkpoint, device=ctx.device,
                                   max_windows=ctx.config.max_windows)
        for i, v, c in zip(video_pos, emb, counts):
            vectors[i], windows[i] = v, c
    audio_pos = [i for i, q in enumerate(queries) if q.kind == "audio"]
    if audio_pos:
        key = ctx.audio_key()
        teacher = load_audio_teacher(ctx.store, key, ctx.config.audio_weights, ctx.device)
        if teacher.dim != ctx.vindex.dim:
            raise IndexMismatchError(f"audio teacher {key} gives {teacher.dim}-d embeddings but the index "
                                     f"({ctx.vindex.meta.source}) holds {ctx.vindex.dim}-d vectors; sound-to-video "
                                     "search needs a student trained with an audio teacher of the same size")
        if ctx.source_kind == "student":
            ctx.notes.append(f"audio queries embedded by {key} and searched against the student space (cross-modal)")
            method = str(ctx.store.student_attrs(ctx.source_key).get("method", ""))
            if method != "ccl":
                # Only CCL contrasts the student's embedding with the raw teacher embedding itself.
                ctx.notes.append(f"run {ctx.source_key} was trained with {method or 'an unknown method'}, which does "
                                 "not align its space with the audio teacher's: sound-to-video results are not meaningful")
        fp = ctx.store.teacher(key).fingerprint
        for i in audio_pos:
            vectors[i] = embed_audio(str(queries[i].path), teacher, key, fp)
    return np.stack([v for v in vectors if v is not None]).astype(np.float32), windows


def _hits(ctx: _Context, scores: np.ndarray, rows: np.ndarray) -> tuple[Hit, ...]:
    clips, classes = ctx.store.clips, ctx.store.classes
    out = []
    for rank, (score, row) in enumerate(zip(scores, rows), start=1):
        if row < 0:
            break
        label = int(clips.label[row])
        out.append(Hit(rank, int(row), str(clips.id[row]), label, classes[label], float(score), str(clips.path[row])))
    return tuple(out)


def _open(config: RetrieveConfig) -> _Context:
    from ccl_cache.store import open_store

    index_dir = Path(config.index)
    vindex = load_index(index_dir, verify=True)
    store_path = resolve_store_path(index_dir, vindex.meta.store_path, config.store)
    store = open_store(store_path, "r")
    try:
        check_store(vindex.meta, store, index_dir)
        kind, _, key = vindex.meta.source.partition(":")
        if kind not in ("student", "teacher") or not key:
            raise IndexMismatchError(f"{index_dir}: source {vindex.meta.source!r} is not student:<run> or "
                                     "teacher:<key>; rebuild the index with `ccl-cache index`")
    except Exception:
        store.close()
        raise
    device = hardware.resolve_device(config.device)
    return _Context(config, vindex, store, store_path, kind, key, list(vindex.notes), device)


def retrieve(config: RetrieveConfig) -> RetrieveResult:
    """Answer every query of ``config`` with its top-k gallery clips (and draw the grid if asked)."""
    config.validate()
    ctx = _open(config)
    try:
        clips = ctx.store.clips
        row_of = clips.row_of()
        paths = {str(Path(str(p)).resolve()): i for i, p in enumerate(clips.path)}
        queries = [classify_query(q, config.modality, ctx.store, row_of, paths) for q in config.queries]
        if config.label is not None:
            if config.label not in ctx.store.classes:
                raise ConfigError(f"label {config.label!r} is not a class of {ctx.store_path}")
            queries = [replace(q, label=ctx.store.classes.index(config.label)) for q in queries]
        vectors, windows = _embed_all(ctx, queries)
        scores, rows = ctx.vindex.search(vectors, config.k)
        classes = ctx.store.classes
        results = tuple(QueryResult(q, None if q.label is None else classes[q.label], _hits(ctx, s, r), w)
                        for q, s, r, w in zip(queries, scores, rows, windows))
        grid = page = None
        if config.save_grid is not None:
            grid = str(save_grid(results, ctx.store, config.save_grid))
        if config.html is not None:
            notes = [f"index {config.index} ({ctx.vindex.meta.source}), store {ctx.store_path}; cosine top-{rows.shape[1]}",
                     *ctx.notes]
            page = str(write_page(config.html, "Retrieval results", html_sections(results, ctx.store), notes=notes).path)
        return RetrieveResult(str(config.index), str(ctx.store_path), ctx.vindex.meta.source, rows.shape[1], results,
                              grid, tuple(ctx.notes), page)
    finally:
        ctx.store.close()


# --------------------------------------------------------------------------------------------
# Figure 2: the query beside its top-k results


def middle_frame(path: str, start: float | None = None, end: float | None = None) -> np.ndarray:
    """The frame in the middle of ``[start, end)`` (or the file), shorter side ~128 px."""
    from ccl_cache.extract import frame_size

    info = media.probe(path)
    if info.video is None:
        raise MediaError(path, "no-video", "has no video stream to draw")
    s = 0.0 if start is None or not math.isfinite(start) else float(start)
    e = info.duration if end is None or not math.isfinite(end) else float(end)
    return media.read_frames(path, [max(0.0, (s + e) / 2)], size=frame_size(info, GRID_FRAME_SIDE)).frames[0]


def _query_panel(ax: Any, result: QueryResult, store: Any) -> None:
    q = result.query
    if q.kind == "audio":
        wave = media.read_audio(str(q.path), sample_rate=8000)
        ax.plot(np.arange(len(wave)) / 8000.0, wave, linewidth=0.4, color="black")
        ax.set_xlim(0, max(len(wave) / 8000.0, 1e-3))
        ax.set_ylim(-1, 1)
    else:
        path = str(q.path) if q.path is not None else str(store.clips.path[q.row])
        start = end = None
        if q.kind == "clip":
            start, end = float(store.clips.start[q.row]), float(store.clips.end[q.row])
        ax.imshow(middle_frame(path, start, end))
    ax.set_title(f"query ({q.kind})\n{result.class_name or '?'}", fontsize=8)


def save_grid(results: Sequence[QueryResult], store: Any, path: str | Path) -> Path:
    """Draw the paper's Figure 2: per query a row, its frame (or waveform) then the top-k frames,
    each captioned with class and score, framed green when the class matches the query's and
    red when it does not (grey when the query's class is unknown). PNG, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 1 + max(len(r.hits) for r in results)
    fig = Figure(figsize=(1.8 * cols, 2.0 * len(results)), dpi=100)  # room for captions of long class names
    FigureCanvasAgg(fig)
    clips = store.clips
    for i, result in enumerate(results):
        ax = fig.add_subplot(len(results), cols, i * cols + 1)
        _query_panel(ax, result, store)
        ax.set_xticks([])
        ax.set_yticks([])
        for j, hit in enumerate(result.hits):
            ax = fig.add_subplot(len(results), cols, i * cols + j + 2)
            ax.imshow(middle_frame(hit.path, float(clips.start[hit.row]), float(clips.end[hit.row])))
            colour = "grey" if result.query.label is None else ("green" if hit.label == result.query.label else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{hit.rank}. {hit.class_name}\n{hit.score:.4f}", fontsize=8, color=colour)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.1)  # captions never cut at the edge
    return out


# --------------------------------------------------------------------------------------------
# The HTML page: queries and results that play, with their sound


def clip_media(store: Any, row: int) -> MediaItem:
    """The store clip ``row`` as a playable window of its file."""
    clips = store.clips
    return MediaItem(str(clips.path[row]), float(clips.start[row]), float(clips.end[row]), "video")


def query_media(query: Query, store: Any) -> MediaItem | None:
    """What plays for a query: an audio file (or a video's sound) in an audio player, a video
    file whole, a clip id as its window of the store's file."""
    if query.kind == "clip":
        return clip_media(store, int(query.row)) if query.row is not None else None
    if query.path is None:
        return None
    return MediaItem(query.path, kind="audio" if query.kind == "audio" else "video")


def html_sections(results: Sequence[QueryResult], store: Any) -> list[Section]:
    """One page section per query: the query playing, then its top-k clips, each with class,
    score and a same-class mark (none when the query's class is unknown)."""
    sections = []
    for i, r in enumerate(results, start=1):
        q = r.query
        caption = [f"{q.kind} query", r.class_name or "class unknown"]
        if r.windows:
            caption.append(f"{r.windows} windows averaged")
        hits = tuple(ResultItem(clip_media(store, h.row), h.class_name, h.score,
                                None if q.label is None else h.label == q.label, (f"#{h.rank} {h.clip_id}",))
                     for h in r.hits)
        sections.append(Section(f"{i}. {q.text}", query_media(q, store), hits, tuple(caption)))
    return sections
