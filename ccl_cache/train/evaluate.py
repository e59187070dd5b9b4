"""Evaluation on windows of videos: clip/video top-1 and per-video embeddings.

The paper's test protocol: video top-1 with the softmax averaged over non-overlapping windows,
clip top-1 per window; validation uses ``val_clips`` evenly spaced windows per video.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from torch import nn

from ccl_cache.data import VideoWindows, collate_windows, make_loader
from ccl_cache.evaluate import clip_top1, video_top1
from ccl_cache.train.config import TrainConfig
from ccl_cache.train.step import Amp

if TYPE_CHECKING:
    from ccl_cache.train.loop import Run


@dataclass
class WindowResult:
    """Per-window logits and per-video (window-averaged) embeddings of an evaluation pass."""

    logits: np.ndarray  # (W, C)
    window_rows: np.ndarray  # (W,) store row of each window
    window_labels: np.ndarray  # (W,)
    rows: np.ndarray  # (V,) store rows
    embedding: np.ndarray  # (V, D)

    def metrics(self) -> dict[str, float]:
        return {"clip_top1": clip_top1(self.logits, self.window_labels),
                "video_top1": video_top1(self.logits, self.window_rows, self.window_labels),
                "videos": int(len(self.rows)), "windows": int(len(self.logits))}


@torch.no_grad()
def run_windows(student: nn.Module, loader: Any, device: torch.device, amp: Amp, chunk: int,
                channels_last: bool = False) -> WindowResult:
    """Evaluate ``student`` (eval mode) on a :class:`VideoWindows` loader, ``chunk`` windows a pass."""
    was_training = student.training
    student.eval()
    logits, emb, wrows, wlabels, rows = [], [], [], [], []
    for data in loader:
        video, owner = data["video"], data["owner"]
        outs = []
        for i in range(0, len(video), chunk):
            part = video[i: i + chunk].to(device, non_blocking=device.type == "cuda")
            if channels_last:
                part = part.contiguous(memory_format=torch.channels_last_3d)
            with amp.autocast(), _cudnn_autotuned(len(part) == chunk):
                out = student(part)
            outs.append((out.logits.float().cpu(), out.embedding.float().cpu()))
        lg, em = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        per_video = torch.zeros(len(data["row"]), em.shape[1]).index_add_(0, owner, em)
        per_video /= torch.bincount(owner, minlength=len(data["row"])).clamp_min(1)[:, None].float()
        logits.append(lg.numpy())
        emb.append(per_video.numpy())
        wrows.append(data["row"][owner].numpy())
        wlabels.append(data["label"][owner].numpy())
        rows.append(data["row"].numpy())
    student.train(was_training)
    return WindowResult(np.concatenate(logits), np.concatenate(wrows), np.concatenate(wlabels),
                        np.concatenate(rows), np.concatenate(emb))


@contextlib.contextmanager
def _cudnn_autotuned(allowed: bool) -> Iterator[None]:
    """cuDNN autotuning (``cudnn.benchmark``, when on) only where ``allowed``.

    A loader batch holds a varying number of windows, so its last chunk takes nearly every size
    below ``chunk`` over an evaluation; autotuning each new size (every conv layer's algorithms,
    timed) would cost more than it saves, so those chunks run on cuDNN's heuristics.
    """
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark
    cudnn.benchmark = saved and allowed
    try:
        yield
    finally:
        cudnn.benchmark = saved


def window_loader(config: TrainConfig, rows: np.ndarray, count: int | None, device: torch.device) -> Any:
    """A loader of :class:`VideoWindows` (``count`` spaced windows, or all) for ``rows``."""
    ds = VideoWindows(config.store, rows, spec=config.clip_spec, count=count,
                      max_windows=config.test_max_windows if count is None else None, source=config.source)
    per_batch = max(1, (config.eval_batch_size or config.batch_size) // (count or 4))
    return make_loader(ds, batch_size=per_batch, workers=config.workers, pin_memory=device.type == "cuda",
                       prefetch=config.prefetch, collate=collate_windows)


def test(run: Run) -> dict[str, Any] | None:
    """The paper's test protocol with the best checkpoint: video top-1 (softmax averaged over
    non-overlapping windows) and clip top-1 (rank 0)."""
    if len(run.splits.test) == 0:
        return None
    loader = window_loader(run.config, run.splits.test, None, run.device)
    result = run_windows(run.student, loader, run.device, run.amp,
                         run.config.eval_batch_size or run.config.batch_size, run.config.channels_last)
    metrics = {**result.metrics(), "checkpoint": "best", "epoch": run.state.best_epoch}
    run.metrics.write({"kind": "test", "global_step": run.state.global_step, **metrics})
    run.emit("test", metrics)
    return metrics
