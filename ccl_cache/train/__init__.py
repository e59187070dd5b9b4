"""The one training loop for every distillation method: data, optimiser, AMP, DDP, checkpoints.

Chen et al., "Distilling Audio-Visual Knowledge by Compositional Contrastive Learning" (CVPR
2021), and the Table 1 baselines, all train a video student on clips plus cached teacher
embeddings. Whatever the method, one loop runs: the loss comes from ``LOSSES`` and declares
what the batch must carry (``required``: teacher modalities, dataset indices); the dataset loads
exactly that. There is no ``if method == ...`` here.

Modules: ``config`` (:class:`TrainConfig` and its resolution), ``step`` (one training step,
optimiser and schedule, AMP), ``distributed`` (torchrun), ``evaluate`` (windows → clip/video
top-1), ``loop`` (:func:`train`: setup, epochs, checkpoints, test, summary), ``embed`` (a trained
student's embeddings of a store) and ``checkpoint`` (the checkpoint files).
"""

from ccl_cache.train.config import (
    AMP_MODES, DEVICES, LEGACY_VALUES, OPTIMIZERS, PRESETS, RESUME_FREE, SCHEDULES, SOURCES, TrainConfig, options_for_teachers,
    resolve_amp, resolve_config,
)
from ccl_cache.train.distributed import (
    DIST_TIMEOUT, broadcast_module, init_distributed, shutdown_distributed, sync_grads, wrap_distributed,
)
from ccl_cache.train.embed import check_student_run_free, embed_run, embed_store, load_student, load_weights
from ccl_cache.train.evaluate import WindowResult, run_windows, test, window_loader
from ccl_cache.train.loop import (
    MetricsLog, Progress, Run, finish, fit, iter_metrics, save, setup, train, train_epoch, validate,
)
from ccl_cache.train.step import (
    Amp, StepMeter, build_optimizer, seed_everything, student_lr_factor, to_batch, train_step,
)

__all__ = [
    # config
    "AMP_MODES", "DEVICES", "LEGACY_VALUES", "OPTIMIZERS", "PRESETS", "RESUME_FREE", "SCHEDULES", "SOURCES", "TrainConfig",
    "options_for_teachers", "resolve_amp", "resolve_config",
    # distributed
    "DIST_TIMEOUT", "broadcast_module", "init_distributed", "shutdown_distributed", "sync_grads", "wrap_distributed",
    # step
    "Amp", "StepMeter", "build_optimizer", "seed_everything", "student_lr_factor", "to_batch", "train_step",
    # evaluate
    "WindowResult", "run_windows", "test", "window_loader",
    # loop
    "MetricsLog", "Progress", "Run", "finish", "fit", "iter_metrics", "save", "setup", "train", "train_epoch",
    "validate",
    # embed
    "check_student_run_free", "embed_run", "embed_store", "load_student", "load_weights",
]
