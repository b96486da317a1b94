"""The training micro-batches, in order, as each process needs them.

Every micro-batch follows from its index alone: micro-batch k is the k-th slice of ``batch_size x
processes`` rows of a seeded permutation of the training data (one per epoch), prepared with a generator
seeded by k. Resuming needs only the count of micro-batches read, and N processes reproduce one.

A task whose data has ``seq_len(indices)`` and whose ``prepare`` takes ``rows`` (``local_rows = True``: the
token and image tasks) has each process read only its own rows, padded to the micro-batch's length, with
random draws made for the whole micro-batch and sliced, and the normalisers summed over processes; otherwise
every process builds the global micro-batch and keeps its rows. One background thread reads (and pins) the
next micro-batch while the current step runs.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from xformer import distributed
from xformer.config import TrainConfig
from xformer.errors import XformerError

Batch = dict[str, torch.Tensor]


def process_rows(n: int, rank: int, world_size: int) -> slice:
    """The rows of ``n`` that process ``rank`` of ``world_size`` handles: a contiguous share, the shares'
    sizes differing by at most one (``batch_size`` rows each of a full training micro-batch)."""
    size, extra = divmod(n, world_size)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The seeded order of ``n`` training rows in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (each micro-batch's random draws have their own)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class Batches:
    """Micro-batch k of training, for this process: its rows, prepared on the device by ``task``."""

    def __init__(self, task, cfg: TrainConfig, dist: distributed.DistInfo):
        self.task, self.cfg, self.dist = task, cfg, dist
        self.size = cfg.batch_size * dist.world_size  # rows of one global micro-batch
        if len(task.train_data) < self.size:
            raise XformerError(f"the training data has {len(task.train_data)} examples, fewer than one batch "
                               f"(train.batch_size={cfg.batch_size} x {dist.world_size} processes)")
        self.epoch_batches = len(task.train_data) // self.size
        self.rows = process_rows(self.size, dist.rank, dist.world_size)
        self.local_rows = dist.world_size > 1 and getattr(task, "local_rows", False)
        self._orders: dict[int, np.ndarray] = {}
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if cfg.prefetch else None
        self._pending: tuple[int, Future] | None = None

    def indices(self, k: int) -> np.ndarray:
        """The training rows of micro-batch k (the orders of the two latest epochs are kept)."""
        epoch, pos = divmod(k, self.epoch_batches)
        if epoch not in self._orders:
            self._orders = {e: order for e, order in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = epoch_order(self.cfg.seed, epoch, len(self.task.train_data))
        return self._orders[epoch][pos * self.size:(pos + 1) * self.size]

    def read(self, k: int) -> Batch:
        """The CPU tensors of micro-batch k that this process needs: its own rows (padded as the whole
        micro-batch would be) for a ``local_rows`` task, else the whole micro-batch."""
        idx, data = self.indices(k), self.task.train_data
        if not self.local_rows:
            batch = data.batch(idx)
        elif hasattr(data, "seq_len"):  # token rows padded as the whole micro-batch would be
            batch = data.batch(idx[self.rows], seq_len=data.seq_len(idx))
        else:
            batch = data.batch(idx[self.rows])
        if self.dist.device.type == "cuda":
            batch = {n: t.pin_memory() for n, t in batch.items()}  # copied to the GPU without blocking
        return batch

    def read_ahead(self, k: int) -> Batch:
        """Micro-batch k as read by the background thread while the previous step ran (or now), once the
        read of k + 1 has started."""
        pending, self._pending = self._pending, None
        batch = pending[1].result() if pending is not None and pending[0] == k else self.read(k)
        if self._prefetcher is not None:
            self._pending = (k + 1, self._prefetcher.submit(self.read, k + 1))
        return batch

    def micro_batch(self, k: int) -> tuple[Batch, Batch]:
        """This process's rows of micro-batch k, prepared on the device, and the normalisers of the whole
        micro-batch."""
        batch = {n: t.to(self.dist.device, non_blocking=True) for n, t in self.read_ahead(k).items()}
        generator = seeded_generator(self.dist.device, self.cfg.seed * 1_000_003 + k)
        if self.local_rows:  # this process's rows only; random draws for the whole micro-batch, sliced
            local = self.task.prepare(batch, generator, train=True, rows=(self.rows.start, self.size))
            norms = {n: v.double() for n, v in self.task.normalizers(local).items()}
            return local, distributed.all_reduce_tensors(norms)
        full = self.task.prepare(batch, generator, train=True)
        return {n: t[self.rows] for n, t in full.items()}, self.task.normalizers(full)

    def close(self) -> None:
        """Stop the background reader (a read in flight is dropped)."""
        if self._prefetcher is not None:
            self._prefetcher.shutdown(cancel_futures=True)
