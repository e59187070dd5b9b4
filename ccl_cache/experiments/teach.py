"""Train (or fine-tune) a teacher on labelled clips: ``ccl-cache teach``.

Chen et al. (CVPR 2021) take their teachers pretrained on other data (PANNs on AudioSet, ResNet
on ImageNet). When no such teacher fits the data (the synthetic dataset, a new domain), this
module plays that role: it trains a teacher backbone plus a linear classification head on the
clips of one split, on one modality only, and writes a checkpoint that ``build_teacher(arch,
weights=PATH)`` (and ``ccl-cache extract --audio-weights/--image-weights``) load.

Data: the clips of ``config.split`` (default ``"pretrain"``, the synthetic dataset's teacher
split, disjoint from the student's clips; when the manifest has no such split, ``"train"`` is
used and the report says so). Each clip is decoded ONCE into RAM before training: audio at the
teacher's sample rate (float32), or ``frames_per_clip`` frames at the centres of equal parts of
the clip, already resized/cropped/normalised by the teacher (float16). Per epoch, an audio clip
contributes a random ``audio_seconds`` window (zero-padded when shorter), an image clip one
random of its frames. Held-out evaluation uses the centre window / the mean logits over all
frames. Clips whose media fail are skipped and counted; clips without audio are skipped for the
audio modality. ``val_fraction`` of each class is held out (stratified, seeded, by the trainer's
rule :func:`ccl_cache.data.splits.carve_val`: a class keeps at least one training clip, and a
class of two or more clips gives at least one) and its top-1 accuracy reported per epoch; the
checkpoint keeps the last epoch's weights. After every epoch the BatchNorm statistics are
recomputed over the training clips ("precise BN"), so that eval-mode outputs (the held-out
accuracy, and later the extracted embeddings) match the trained weights.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccl_cache import hardware
from ccl_cache.data.splits import carve_val
from ccl_cache.errors import ConfigError, MediaError, NoAudioError, TeacherError
from ccl_cache.extract.decode import ClipTask, DecodeSpec, decode_clip
from ccl_cache.fileio import atomic_path, to_plain, write_json
from ccl_cache.manifest import ClipRecord, Manifest
from ccl_cache.teachers import MODALITIES, Teacher, build_teacher, teacher_modality
from ccl_cache.teachers.user import is_user_spec
from ccl_cache.train.checkpoint import refused_global

CHECKPOINT_FORMAT = "ccl-cache-teacher"
CHECKPOINT_VERSION = 1
MAX_LISTED_FAILURES = 50

Progress = Callable[[str, int, int, dict[str, Any]], None]
"""progress(stage, done, total, info): stage "decode" per clip, "train" per epoch (info = metrics)."""


@dataclass(frozen=True)
class TeachConfig:
    """What to train. ``arch``: a registered teacher name or ``"pkg.module:factory"``.

    ``weights``: start from a weights file (or "imagenet" for the ResNets); None = random init.
    ``image_size``: None keeps the teacher's default (112 for ResNets, 64 for small_image).
    ``device``: "auto" picks CUDA when available.
    """

    modality: str
    arch: str
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    split: str = "pretrain"
    val_fraction: float = 0.2
    seed: int = 0
    image_size: int | None = None
    frames_per_clip: int = 4
    audio_seconds: float = 2.0
    weights: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"TeachConfig.{name}={getattr(self, name)!r}: expected {expected}")

        need(self.modality in MODALITIES, "modality", f"one of {', '.join(MODALITIES)}")
        need(self.epochs >= 1, "epochs", "at least 1")
        need(self.lr > 0, "lr", "a positive learning rate")
        need(self.weight_decay >= 0, "weight_decay", "0 or more")
        need(self.batch_size >= 2, "batch_size", "at least 2 (BatchNorm needs two samples)")
        need(0.0 <= self.val_fraction < 1.0, "val_fraction", "a fraction in [0, 1)")
        need(self.image_size is None or self.image_size >= 16, "image_size", "None or at least 16 pixels")
        need(self.frames_per_clip >= 1, "frames_per_clip", "at least 1")
        need(self.audio_seconds > 0, "audio_seconds", "a positive window length in seconds")
        if not is_user_spec(self.arch):
            actual = teacher_modality(self.arch)  # ConfigError for unknown names
            need(actual == self.modality, "arch", f"a {self.modality} teacher ({self.arch} is an {actual} teacher)")


@dataclass
class ClipData:
    """The decoded, prepared clips of one split, and what was left out."""

    inputs: list[Tensor]  # audio: (S,) float32; image: (K, 3, S, S) float16
    labels: np.ndarray  # (n,) int64
    ids: list[str]
    failures: list[dict[str, str]]
    no_audio: int


def choose_split(manifest: Manifest, split: str) -> tuple[Manifest, str]:
    """The clips of ``split``; a missing "pretrain" split falls back to "train"."""
    splits = manifest.splits()
    if split in splits:
        return manifest.split(split), split
    if split == "pretrain" and "train" in splits:
        return manifest.split("train"), "train"
    raise ConfigError(
        f"the manifest has no split {split!r} (it has: {', '.join(splits)}); pass --split with one of them"
    )


def _decode_one(teacher: Teacher, rec: ClipRecord, frames_per_clip: int) -> Tensor:
    """The teacher's input for one clip, decoded by extraction's own path (:func:`decode_clip`:
    the same window, frame times, decoder scaling and audio stream), so a teacher trained here
    sees at training the pixels and samples that ``extract`` later feeds it."""
    image = teacher.modality == "image"
    spec = DecodeSpec(sample_rate=None if image else int(teacher.preprocess.sample_rate or 0),
                      frames_per_clip=frames_per_clip, image_size=int(teacher.preprocess.image_size or 0) if image else None,
                      min_coverage=0.0)  # a partly decodable clip still teaches; its decodable part is read
    clip = decode_clip(ClipTask(0, rec.path, rec.start, rec.end, audio=not image, image=image), spec)
    failure = clip.failures.get(teacher.modality)
    if failure is not None:
        raise MediaError(rec.path, failure.reason, failure.message)
    if image:
        assert clip.frames is not None
        return teacher.prepare(clip.frames).to(torch.float16)
    if clip.audio is None:
        raise NoAudioError(rec.path)
    return teacher.prepare(clip.audio)


def decode_clips(
    manifest: Manifest, teacher: Teacher, frames_per_clip: int, progress: Progress | None = None
) -> ClipData:
    """Decode every clip once; media failures and missing audio are counted, not fatal."""
    inputs: list[Tensor] = []
    labels: list[int] = []
    ids: list[str] = []
    failures: list[dict[str, str]] = []
    no_audio = 0
    for i, rec in enumerate(manifest.records):
        try:
            inputs.append(_decode_one(teacher, rec, frames_per_clip))
            labels.append(manifest.label_id(rec.label))
            ids.append(rec.id)
        except NoAudioError:
            no_audio += 1
        except MediaError as exc:
            failures.append({"id": rec.id, "path": rec.path, "reason": exc.reason, "message": str(exc)})
        except TeacherError as exc:  # decoded, but not a usable input (e.g. an empty audio window)
            failures.append({"id": rec.id, "path": rec.path, "reason": "prepare", "message": str(exc)})
        if progress is not None:
            progress("decode", i + 1, len(manifest), {})
    return ClipData(inputs, np.asarray(labels, dtype=np.int64), ids, failures, no_audio)


def make_batch(data: ClipData, rows: np.ndarray, modality: str, window: int,
               rng: np.random.Generator | None) -> Tensor:
    """Stack the inputs of ``rows``: random crops/frames with ``rng``, centre ones without.

    Image batches are (B, 3, S, S) with ``rng`` and (B, K, 3, S, S) without (all frames), in the
    stored float16; audio batches are float32.
    """
    if modality == "image":  # float16 as stored: callers convert on the device (half the copy)
        if rng is None:
            return torch.stack([data.inputs[r] for r in rows])
        return torch.stack([data.inputs[r][rng.integers(len(data.inputs[r]))] for r in rows])
    out = torch.zeros(len(rows), window)
    for j, r in enumerate(rows):
        wave = data.inputs[r]
        spare = max(0, wave.shape[0] - window)
        offset = int(rng.integers(spare + 1)) if rng is not None else spare // 2
        piece = wave[offset : offset + window]
        out[j, : piece.shape[0]] = piece
    return out


def _logits(teacher: Teacher, head: nn.Linear, x: Tensor) -> Tensor:
    if x.ndim == 5:  # (B, K, 3, S, S): one prediction per clip from the mean logits of its frames
        b, k = x.shape[:2]
        return head(teacher(x.flatten(0, 1))).view(b, k, -1).mean(dim=1)
    return head(teacher(x))


def evaluate(teacher: Teacher, head: nn.Linear, data: ClipData, rows: np.ndarray, batch_size: int,
             window: int, device: torch.device) -> float | None:
    """Top-1 accuracy on ``rows`` (None when there are none)."""
    if len(rows) == 0:
        return None
    teacher.eval()
    correct = 0
    with torch.no_grad():
        for part in np.array_split(rows, math.ceil(len(rows) / batch_size)):
            x = make_batch(data, part, teacher.modality, window, None).to(device).float()
            pred = _logits(teacher, head, x).argmax(dim=1).cpu().numpy()
            correct += int((pred == data.labels[part]).sum())
    return correct / len(rows)


def train_epoch(teacher: Teacher, head: nn.Linear, opt: torch.optim.Optimizer, data: ClipData,
                rows: np.ndarray, cfg: TeachConfig, window: int, rng: np.random.Generator,
                device: torch.device) -> tuple[float, float]:
    """One pass over ``rows`` in random order -> (mean loss, training top-1)."""
    teacher.train()
    order = rng.permutation(rows)
    # array_split balances batch sizes so no batch has a single sample (BatchNorm needs two).
    parts = np.array_split(order, max(1, len(order) // cfg.batch_size))
    # Summed on the device (float64, as Python's float did) and read once: no host sync per step.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for part in parts:
        x = make_batch(data, part, teacher.modality, window, rng).to(device).float()
        y = torch.as_tensor(data.labels[part], device=device)
        logits = _logits(teacher, head, x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += loss.detach().double() * len(part)
        correct += (logits.argmax(dim=1) == y).sum()
    return float(total_loss) / len(order), int(correct) / len(order)


def recalibrate_batchnorm(teacher: Teacher, data: ClipData, rows: np.ndarray, batch_size: int,
                          window: int, device: torch.device) -> None:
    """Precise BatchNorm: recompute the running statistics for the current weights.

    After few optimisation steps the exponential running averages lag far behind the weights
    (bn0 of the audio teachers sees dB values near -50 and starts from mean 0), and evaluation
    with them predicts a single class. One no-grad pass over the training clips with a
    cumulative average fixes that; the statistics are also what extraction uses later.
    """
    norms = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(rows) == 0:
        return
    teacher.eval()  # dropout off: only the BatchNorm layers gather statistics
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    with torch.no_grad():
        for part in np.array_split(rows, max(1, len(rows) // batch_size)):
            x = make_batch(data, part, teacher.modality, window, None)
            teacher((x.flatten(0, 1) if x.ndim == 5 else x).to(device).float())
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    teacher.eval()


def _build(cfg: TeachConfig, device: torch.device) -> Teacher:
    options = {"image_size": cfg.image_size} if cfg.modality == "image" and cfg.image_size else {}
    with warnings.catch_warnings():
        # Starting from random weights is the normal case here: the teacher is about to learn.
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        teacher = build_teacher(cfg.arch, cfg.weights, device, **options)
    if teacher.modality != cfg.modality:
        raise ConfigError(f"teacher {cfg.arch!r} is an {teacher.modality} teacher, not {cfg.modality}")
    return teacher


def _usable(data: ClipData, used: Manifest, split: str, cfg: TeachConfig) -> None:
    """Refuse data that cannot train anything, saying why."""
    classes = np.unique(data.labels)
    if len(data.inputs) < 2 or len(classes) < 2:
        raise ConfigError(
            f"split {split!r}: {len(data.inputs)} of {len(used)} clips decoded "
            f"({len(data.failures)} failed, {data.no_audio} without audio) covering "
            f"{len(classes)} class(es); training a {cfg.modality} teacher needs at least 2 clips "
            "of 2 classes. Check the media (ccl-cache probe) or choose another split"
        )


def train_teacher(manifest: Manifest, config: TeachConfig, out_path: str | Path,
                  progress: Progress | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train ``config.arch`` on ``manifest`` and write the checkpoint + ``<out>.json`` report.

    Returns the report (also stored in the checkpoint): clip counts, failures, per-epoch loss
    and accuracies, final held-out top-1 and chance level. An existing checkpoint is refused
    unless ``overwrite``: stores record its SHA-256 as their teacher's weights.
    """
    out_path = Path(out_path)
    if out_path.suffix == ".json":
        raise ConfigError(f"{out_path}: the checkpoint needs another suffix (.pt); its report goes to <name>.json")
    if out_path.exists() and not overwrite:
        raise ConfigError(f"{out_path} already exists (stores extracted with it name it by its SHA-256); "
                          "pass --overwrite (overwrite=True) to replace it, or another --out")
    began = time.monotonic()
    torch.manual_seed(config.seed)
    device = hardware.resolve_device(config.device)
    teacher = _build(config, device)
    start_weights = teacher.weights
    used, split = choose_split(manifest, config.split)
    data = decode_clips(used, teacher, config.frames_per_clip, progress)
    _usable(data, used, split, config)
    # the trainer's hold-out rule (data.splits.carve_val): a class keeps >= 1 training clip
    train_rows, val_rows = carve_val(np.arange(len(data.labels)), data.labels, config.val_fraction, config.seed)
    head = nn.Linear(teacher.dim, len(manifest.classes)).to(device)
    params = [p for p in teacher.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    window = int(round(config.audio_seconds * (teacher.preprocess.sample_rate or 0)))
    rng = np.random.default_rng(config.seed)
    history = []
    for epoch in range(config.epochs):
        loss, train_acc = train_epoch(teacher, head, opt, data, train_rows, config, window, rng, device)
        recalibrate_batchnorm(teacher, data, train_rows, config.batch_size, window, device)
        val_acc = evaluate(teacher, head, data, val_rows, config.batch_size, window, device)
        history.append({"epoch": epoch + 1, "loss": loss, "train_accuracy": train_acc, "val_accuracy": val_acc})
        if progress is not None:
            progress("train", epoch + 1, config.epochs, history[-1])
    teacher.eval()
    report = _report(config, manifest, used, split, data, train_rows, val_rows, history, start_weights)
    report.update(checkpoint=str(out_path), device=str(device), seconds=round(time.monotonic() - began, 3))
    save_checkpoint(out_path, teacher, head, manifest.classes, report)
    write_json(report_path(out_path), report)
    return report


def _report(cfg: TeachConfig, manifest: Manifest, used: Manifest, split: str, data: ClipData,
            train_rows: np.ndarray, val_rows: np.ndarray, history: list[dict[str, Any]],
            start_weights: str) -> dict[str, Any]:
    counts = np.bincount(data.labels[val_rows], minlength=len(manifest.classes)) if len(val_rows) else None
    taught = np.bincount(data.labels[train_rows], minlength=len(manifest.classes))
    return to_plain({
        "arch": cfg.arch, "modality": cfg.modality, "split": split, "requested_split": cfg.split,
        "num_classes": len(manifest.classes), "classes": list(manifest.classes),
        "clips": {"in_split": len(used), "used": len(data.inputs), "train": len(train_rows),
                  "val": len(val_rows), "failed": len(data.failures), "skipped_no_audio": data.no_audio},
        "failures": data.failures[:MAX_LISTED_FAILURES],
        # the head still has an output for these, but never saw one of their clips
        "classes_without_clips": [c for c, n in zip(manifest.classes, taught) if n == 0],
        "epochs": history,
        "val_accuracy": history[-1]["val_accuracy"],
        # the majority class of the held-out clips: what always guessing one class scores
        "val_chance": float(counts.max() / counts.sum()) if counts is not None else None,
        "start_weights": start_weights,
        "config": dataclasses.asdict(cfg),
    })  # fmt: skip


def report_path(out_path: str | Path) -> Path:
    """Where the JSON report of checkpoint ``out_path`` goes: same name, ``.json`` suffix."""
    return Path(out_path).with_suffix(".json")


def save_checkpoint(path: Path, teacher: Teacher, head: nn.Linear, classes: tuple[str, ...],
                    report: dict[str, Any]) -> None:
    """Atomically write a ``torch.load(weights_only=True)``-safe teacher checkpoint."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": teacher.arch,
        "modality": teacher.modality,
        "num_classes": len(classes),
        "classes": list(classes),
        "state_dict": {k: v.detach().cpu() for k, v in teacher.backbone.state_dict().items()},
        "head_state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "preprocess": to_plain(dataclasses.asdict(teacher.preprocess)),
        "report": report,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_head(path: str | Path) -> tuple[nn.Linear, list[str]]:
    """The classification head and class names of a ``ccl-cache teach`` checkpoint."""
    try:
        ckpt = torch.load(Path(path), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        blocked = refused_global(exc)
        if blocked is None:
            raise TeacherError(f"{path}: cannot read the checkpoint (not a torch.save file)") from exc
        raise TeacherError(
            f"{path}: refused to load: the file holds Python objects other than tensors and builtins, "
            f"which torch.load(weights_only=True) will not execute ({blocked}); use a checkpoint written "
            "by `ccl-cache teach` that you trust"
        ) from exc
    except Exception as exc:  # torch.load fails on junk with many exception types
        raise TeacherError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TeacherError(f"{path}: not a `ccl-cache teach` checkpoint (format {CHECKPOINT_FORMAT!r})")
    weight = ckpt["head_state_dict"]["weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict(ckpt["head_state_dict"])
    return head.eval(), list(ckpt["classes"])
