"""Sampling and loaders: the seeded, resumable, rank-sharded epoch order and the project's DataLoader."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler

from ccl_cache import hardware, media
from ccl_cache.errors import ConfigError
from ccl_cache.workers import check_workers

class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: a seeded permutation per epoch, sharded across ranks.

    The order is a pure function of (seed, epoch) — a resumed run continues exactly where it
    stopped with :meth:`set_epoch` ``(epoch, skip)``. With ``world > 1`` the permutation is padded
    by wrapping around to a multiple of ``world`` and rank r takes every world-th index from r
    (as torch's DistributedSampler does).
    """

    def __init__(self, size: int, *, seed: int = 1, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        if size < 1:
            raise ConfigError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle, self.rank, self.world = size, int(seed), shuffle, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch``, leaving out the first ``skip`` items of this rank (already trained)."""
        self.epoch, self.skip = int(epoch), int(skip)

    def per_rank(self) -> int:
        return -(-self.size // self.world)

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank() * self.world
        order = (order * (-(-total // self.size)))[:total]
        for idx in order[self.rank::self.world][self.skip:]:
            yield self.epoch, idx


def _worker_init(_: int) -> None:
    # Why: each worker decodes/resizes one clip at a time; intra-op or decoder threads would
    # oversubscribe the cores the other workers use.
    torch.set_num_threads(1)
    media.set_decoder_threads(1)


DEFAULT_WORKERS = 4  # loader processes when not given, at most one per usable core


def default_workers(workers: int | None) -> int:
    """``workers`` (within :func:`ccl_cache.workers.check_workers`'s bound), or for None
    ``DEFAULT_WORKERS`` but at most one per usable core (more only queue behind each other, and
    torch warns about it)."""
    return min(DEFAULT_WORKERS, hardware.usable_cores()) if workers is None else check_workers(workers)


def make_loader(dataset: Dataset, *, batch_sampler: Any = None, batch_size: int = 1, workers: int | None = 0,
                pin_memory: bool = False, prefetch: int = 2, collate: Any = None) -> torch.utils.data.DataLoader:
    """A DataLoader with the project's settings: persistent forked workers, pinned memory;
    ``workers=None``: :func:`default_workers`."""
    workers = default_workers(workers)
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory, "worker_init_fn": _worker_init}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch)
    if collate is not None:
        kwargs["collate_fn"] = collate
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
