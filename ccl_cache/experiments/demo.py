"""The whole pipeline on a small synthetic dataset, sized for a laptop CPU (README: measured time).

It reproduces, in miniature, the comparison of Chen et al., "Distilling Audio-Visual Knowledge
by Compositional Contrastive Learning" (CVPR 2021): a video student trained with cross-entropy
only (``baseline``) against one distilled from audio and image teachers with compositional
contrastive learning (``ccl``), on data with a *semantic gap* (some clips' sound belongs to
another class or to no class). Steps, each a library call:

1. :func:`ccl_cache.experiments.synth.generate` — a synthetic audio-visual dataset of real mp4 files;
2. :func:`ccl_cache.experiments.teach.train_teacher` — ``small_audio`` and ``small_image`` teachers on the
   ``pretrain`` split (disjoint from the student's clips, like AudioSet/ImageNet);
3. :func:`ccl_cache.extract.run_extraction` — both teachers once over every clip, into a Zarr store;
4. :func:`ccl_cache.train.train` — a small video student per method (embeddings into the store);
5. :func:`ccl_cache.search.gallery.index_store` — a FAISS index of the CCL student's train split;
6. :func:`ccl_cache.search.benchmark.run_benchmark` — test queries against the train gallery, both
   runs and both teachers: Recall@K curves, mAP, report files;
7. :func:`ccl_cache.search.retrieve.retrieve` — one test video searched in the index, drawn as Figure 2.

The numbers are those of a toy: a few epochs on a few dozen clips vary with the seed and say
nothing about the paper's datasets (see ``docs/reproduce.md`` for those).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ccl_cache import hardware
from ccl_cache.errors import ConfigError
from ccl_cache.fileio import atomic_write_text, save_config, write_json

Progress = Callable[[str, str], None]
"""``progress(stage, message)``: one line per finished step."""

AUDIO_TEACHER, IMAGE_TEACHER = "small_audio", "small_image"
TEACHER_IMAGE_SIZE = 64  # small_image's input size: teaching and extraction must agree


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of every step. :meth:`quick` is the preset the test runs; the defaults are the
    smallest sizes at which CCL and the baseline learn something on a 2-core CPU."""

    out: str = "ccl-demo"
    classes: int = 6
    clips_per_class: int = 14
    pretrain_clips_per_class: int = 10
    duration: float = 2.0
    video_size: int = 64
    gap: float = 0.3
    teach_epochs: int = 6
    methods: tuple[str, ...] = ("baseline", "ccl")
    epochs: int = 8
    batch_size: int = 8
    frames: int = 8
    size: int = 48
    student_width: int = 16
    # AdamW at 3e-3: with SGD at 0.05 the CCL composition's logits blow up on the unnormalised
    # small-teacher features (symmetric KL 20-30), which the method-table runs found; AdamW is stable.
    optimizer: str = "adamw"
    lr: float = 3e-3
    k: int = 5
    seed: int = 0
    device: str = "cpu"
    overwrite: bool = False

    @classmethod
    def quick(cls, **overrides: Any) -> "DemoConfig":
        """The smallest setting: fewer classes, clips and epochs (the test's preset)."""
        base = cls(classes=4, clips_per_class=8, pretrain_clips_per_class=6, duration=1.0, teach_epochs=3,
                   epochs=3, frames=8, size=32, student_width=8, k=4)
        return replace(base, **overrides)

    def validate(self) -> None:
        if "ccl" not in self.methods:
            raise ConfigError(f"methods {self.methods}: the demo indexes the CCL run, so include 'ccl'")
        if self.epochs < 1 or self.teach_epochs < 1:
            raise ConfigError(f"epochs={self.epochs}, teach_epochs={self.teach_epochs}: need at least 1 each")
        if self.k < 1:
            raise ConfigError(f"k={self.k}: show at least one result")
        hardware.resolve_device(self.device)  # before anything is written (ConfigError naming it)


@dataclass(frozen=True)
class DemoPaths:
    """Where each step writes, under ``out``."""

    out: Path

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.csv"

    def teacher(self, modality: str) -> Path:
        return self.out / "teachers" / f"{modality}.pt"

    @property
    def store(self) -> Path:
        return self.out / "store.zarr"

    def run(self, method: str) -> Path:
        return self.out / "runs" / method

    @property
    def index(self) -> Path:
        return self.out / "index"

    @property
    def bench(self) -> Path:
        return self.out / "benchmark"

    @property
    def grid(self) -> Path:
        return self.out / "retrieval_grid.png"


@dataclass(frozen=True)
class DemoResult:
    """The comparison table (one row per run and teacher) and every output path."""

    rows: tuple[dict[str, Any], ...]
    outputs: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "outputs": self.outputs, "seconds": self.seconds, "retrieval": self.retrieval}


# --------------------------------------------------------------------------------------------
# Steps (also used by the test fixtures: tests/fixtures_pipeline.py)


def make_dataset(config: DemoConfig, paths: DemoPaths) -> Any:
    """Step 1: the synthetic dataset (with a semantic gap) and its manifest."""
    from ccl_cache.experiments.synth import SynthConfig, generate

    synth = SynthConfig(classes=config.classes, clips_per_class=config.clips_per_class, duration=config.duration,
                        size=config.video_size, gap=config.gap, pretrain_clips_per_class=config.pretrain_clips_per_class,
                        seed=config.seed)
    return generate(paths.data, synth, workers=1, overwrite=config.overwrite)


def teach_teachers(config: DemoConfig, paths: DemoPaths, manifest: Any) -> dict[str, dict[str, Any]]:
    """Step 2: train both small teachers on the pretrain split; modality → teach report."""
    from ccl_cache.experiments.teach import TeachConfig, train_teacher

    reports = {}
    for modality, arch in (("audio", AUDIO_TEACHER), ("image", IMAGE_TEACHER)):
        teach = TeachConfig(modality=modality, arch=arch, epochs=config.teach_epochs, device=config.device,
                            seed=config.seed, audio_seconds=config.duration,
                            image_size=TEACHER_IMAGE_SIZE if modality == "image" else None)
        reports[modality] = train_teacher(manifest, teach, paths.teacher(modality))
    return reports


def extract_store(config: DemoConfig, paths: DemoPaths) -> Any:
    """Step 3: both teachers over every clip into the Zarr store."""
    from ccl_cache.extract import ExtractConfig, run_extraction

    return run_extraction(ExtractConfig(
        manifest=str(paths.manifest), store=str(paths.store), audio_teacher=AUDIO_TEACHER,
        audio_weights=str(paths.teacher("audio")), image_teacher=IMAGE_TEACHER,
        image_weights=str(paths.teacher("image")), image_size=TEACHER_IMAGE_SIZE, frames_per_clip=4,
        batch_size=32, workers=0, device=config.device, overwrite=config.overwrite,
    ))


def distill(config: DemoConfig, paths: DemoPaths, method: str) -> dict[str, Any]:
    """Step 4: train the small student with ``method``; returns the run summary."""
    from ccl_cache.train import TrainConfig, train

    return train(TrainConfig(
        store=str(paths.store), method=method, teachers=("audio", "image"), student="small",
        student_options={"width": config.student_width}, epochs=config.epochs, batch_size=config.batch_size,
        optimizer=config.optimizer, lr=config.lr, frames=config.frames, size=config.size, workers=0, device=config.device, seed=config.seed + 1,
        out=str(paths.run(method)), run_name=method, tensorboard=False, log_every=10**6,
        resume=False,
    ))


def build_index(config: DemoConfig, paths: DemoPaths, method: str = "ccl") -> Any:
    """Step 5: exact FAISS index of the run's train-split embeddings."""
    from ccl_cache.search import IndexConfig, index_store
    from ccl_cache.store import open_store

    with open_store(paths.store, "r") as store:
        vindex, _ = index_store(store, paths.index, IndexConfig(device="cpu"), run=method, split="train",
                                overwrite=config.overwrite)
    return vindex


def benchmark(config: DemoConfig, paths: DemoPaths) -> Any:
    """Step 6: test queries vs train gallery, every run and both teachers."""
    from ccl_cache.search.benchmark import RetrievalBenchConfig, run_benchmark

    return run_benchmark(RetrievalBenchConfig(
        store=str(paths.store), runs=tuple(str(paths.run(m)) for m in config.methods),
        teachers=(f"audio/{AUDIO_TEACHER}", f"image/{IMAGE_TEACHER}"), out=str(paths.bench),
    ))


def retrieve_example(config: DemoConfig, paths: DemoPaths) -> Any:
    """Step 7: the first test clip searched as a video file, drawn beside its results."""
    from ccl_cache.search.retrieve import RetrieveConfig, retrieve
    from ccl_cache.store import open_store

    with open_store(paths.store, "r") as store:
        clips = store.clips
        test = [i for i, s in enumerate(clips.split) if str(s) == "test"]
        if not test:
            raise ConfigError(f"{paths.store}: no test clip to query with")
        query = str(clips.path[test[0]])
    return retrieve(RetrieveConfig(index=str(paths.index), queries=(query,), k=config.k, device=config.device,
                                   save_grid=str(paths.grid)))


# --------------------------------------------------------------------------------------------
# The whole demo


def _prepare(paths: DemoPaths, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then remove only what the demo writes."""
    out = paths.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; pass another --out")
    if out.exists() and any(out.iterdir()):
        if not (out / "demo.yaml").is_file():
            # --overwrite removes whole folders (data, runs, ...): never in a folder of the user's.
            raise ConfigError(f"{out} is not empty and holds no ccl-cache demo (no demo.yaml); pass an empty "
                              "or new --out")
        if not overwrite:
            raise ConfigError(f"{out} holds a demo; pass --overwrite to replace it, or another --out")
        for child in ("data", "teachers", "store.zarr", "runs", "index", "benchmark"):
            shutil.rmtree(out / child, ignore_errors=True)
        for name in ("store.zarr.extract.yaml", "store.zarr.failures.jsonl", paths.grid.name, "summary.json", "summary.md"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def comparison_rows(bench: Any) -> tuple[dict[str, Any], ...]:
    """Per source: video top-1 (runs) and Recall@1/5/10 from the benchmark."""
    rows = []
    for r in bench.results:
        top1 = (r.recognition or {}).get("video_top1")
        rows.append({"source": r.source.label, "kind": r.source.kind, "video_top1": top1,
                     **{f"recall@{k}": r.exact.get(f"recall@{k}") for k in (1, 5, 10)}, "mAP": r.exact["mAP"]})
    return tuple(rows)


def summary_markdown(result: DemoResult) -> str:
    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * float(v):.1f}"

    lines = ["# ccl-cache demo", "", "| source | video top-1 | R@1 | R@5 | R@10 | mAP |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['source']} | {pct(r['video_top1'])} | {pct(r['recall@1'])} | {pct(r['recall@5'])} | "
              f"{pct(r['recall@10'])} | {pct(r['mAP'])} |" for r in result.rows]
    lines += ["", "A toy: a few epochs on a few dozen synthetic clips. The numbers vary with the seed and show "
              "the mechanics, not the paper's results (docs/reproduce.md).", "", "Outputs:", ""] + [f"- {k}: `{v}`" for k, v in result.outputs.items()]
    return "\n".join(lines) + "\n"


def run_demo(config: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Run every step into ``config.out``; write ``summary.json``/``summary.md``; return the table."""
    config.validate()
    # Absolute paths: the store, index sidecar and run records stay valid from any directory.
    paths = DemoPaths(Path(config.out).resolve())
    _prepare(paths, config.overwrite)
    save_config(config, paths.out / "demo.yaml")
    say = progress or (lambda stage, message: None)
    seconds: dict[str, float] = {}

    def step(name: str, fn: Callable[[], Any], message: Callable[[Any], str]) -> Any:
        began = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - began, 2)
        say(name, f"{message(value)} ({seconds[name]:.1f} s)")
        return value

    manifest = step("synth", lambda: make_dataset(config, paths), lambda m: f"{len(m)} clips in {paths.data}")
    step("teach", lambda: teach_teachers(config, paths, manifest),
         lambda r: ", ".join(f"{m} teacher val top-1 {v['val_accuracy']:.2f}" for m, v in r.items()))
    step("extract", lambda: extract_store(config, paths), lambda s: f"{s.processed} clips, {s.failed} failed → {paths.store}")
    for method in config.methods:
        step(f"distill:{method}", lambda m=method: distill(config, paths, m),
             lambda s: f"{s['run']}: test video top-1 {(s.get('test') or {}).get('video_top1', float('nan')):.2f}")
    step("index", lambda: build_index(config, paths), lambda v: f"{v.count} train clips → {paths.index}")
    bench = step("benchmark", lambda: benchmark(config, paths), lambda b: f"{len(b.results)} sources → {paths.bench}")
    found = step("retrieve", lambda: retrieve_example(config, paths), lambda r: f"grid → {r.grid}")
    outputs = {"data": str(paths.data), "store": str(paths.store), "teachers": str(paths.out / "teachers"),
               **{f"run:{m}": str(paths.run(m)) for m in config.methods}, "index": str(paths.index),
               **{f"benchmark:{k}": v for k, v in bench.outputs.items()}, "grid": str(paths.grid),
               "summary": str(paths.out / "summary.md"), "summary_json": str(paths.out / "summary.json")}
    result = DemoResult(comparison_rows(bench), outputs, seconds, found.as_dict())
    write_json(paths.out / "summary.json", result.as_dict())
    atomic_write_text(paths.out / "summary.md", summary_markdown(result))
    return result
