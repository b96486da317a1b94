"""The schedule of a run over its budget: the LR (warmup, then decay), the micro-batches per optimizer step
(the batch-size ramp), and when training ends.

The budget (``train.budget``) is ``max_steps`` / ``epochs`` steps, where the LR and the micro-batches are
functions of the step, or ``max_minutes`` of wall time, where they are functions of the elapsed time, read
before every step from a :class:`Clock`. There is no LRScheduler: :meth:`Schedule.set` sets each group's LR
from the step or the time, so a resume needs only the step, the elapsed time and the micro-batch count.

With several processes the time is rank 0's, broadcast at each log (every ``log_every`` steps) and carried
forward between logs at the pace of the last log window (broadcast every step before the first log), so
processes never disagree and need no collective per step.
"""

from __future__ import annotations

import math
import time

import torch

from xformer import distributed
from xformer.config import TrainConfig


def warmup_share(cfg: TrainConfig) -> float:
    """The share of the budget spent warming up, unless ``warmup_steps`` counts it in steps."""
    if cfg.warmup_ratio is not None:
        return cfg.warmup_ratio
    return 0.5 if cfg.schedule == "triangle" and not cfg.warmup_steps else 0.0


def decay(cfg: TrainConfig, progress: float) -> float:
    """The LR factor after warmup, ``progress`` (0..1) through the decay."""
    if cfg.schedule == "constant":
        return 1.0
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Under a step budget, the LR factor of (0-based) step: linear warmup to ``lr``, then linear or cosine
    decay to ``lr * min_lr_ratio`` at ``total_steps`` (or constant; triangle decays linearly)."""
    warmup = cfg.warmup_steps or math.ceil(warmup_share(cfg) * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay(cfg, min(1.0, (step - warmup) / max(1, total_steps - warmup)))

    return factor


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Under a time budget, the LR factor once ``progress`` (0..1) of the time is spent; the same shapes."""
    warmup = warmup_share(cfg)
    if progress < warmup:
        return progress / warmup
    return decay(cfg, min(1.0, (progress - warmup) / (1 - warmup)))


def micro_batches(cfg: TrainConfig, progress: float) -> int:
    """Micro-batches in the optimizer step taken once ``progress`` (0..1) of the budget is spent: from 1
    up to ``grad_accum`` linearly over the first ``batch_ramp`` of it (the batch-size ramp)."""
    if progress >= cfg.batch_ramp:
        return cfg.grad_accum
    return 1 + int((cfg.grad_accum - 1) * progress / cfg.batch_ramp)


def budget_steps(cfg: TrainConfig, epoch_batches: int) -> tuple[int | None, int]:
    """The steps of the budget (None under a time budget: it ends when the time is spent) and the steps of
    one epoch, for data of ``epoch_batches`` micro-batches."""
    steps_per_epoch = max(1, epoch_batches // cfg.grad_accum)
    if cfg.budget == "time":
        return None, steps_per_epoch
    if cfg.epochs is None:
        return cfg.max_steps, steps_per_epoch
    return max(1, round(cfg.epochs * steps_per_epoch)), steps_per_epoch


class Schedule:
    """Sets the LR of each parameter group of ``optimizer`` and :attr:`accum`, the micro-batches of the next
    optimizer step, from the step (``total_steps`` of a step budget) or the elapsed seconds (a time budget,
    ``total_steps`` None)."""

    def __init__(self, cfg: TrainConfig, total_steps: int | None, optimizer: torch.optim.Optimizer):
        self.cfg, self.total_steps, self.optimizer = cfg, total_steps, optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_lr = None if total_steps is None else lr_lambda(cfg, total_steps)
        self.accum = cfg.grad_accum
        # under a step budget, max_minutes still stops training early
        self.budget_s = None if cfg.max_minutes is None else 60 * cfg.max_minutes

    @property
    def time_budget(self) -> bool:
        """Whether the schedule runs over wall time rather than steps."""
        return self.total_steps is None

    def set(self, step: int, elapsed: float = 0.0) -> None:
        """Set the LR and the micro-batches of the next optimizer step, ``step``, which begins ``elapsed``
        seconds into training (the same on every process; read under a time budget only)."""
        if self.time_budget:
            progress = min(1.0, elapsed / self.budget_s)
            factor = lr_at(self.cfg, progress)
        else:
            progress, factor = step / self.total_steps, self.step_lr(step)
        self.accum = micro_batches(self.cfg, progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def spent(self, step: int, elapsed: float) -> bool:
        """Whether the budget is spent once ``step`` steps and ``elapsed`` seconds are done."""
        return elapsed >= self.budget_s if self.time_budget else step >= self.total_steps

    def out_of_time(self, elapsed: float) -> bool:
        """Whether ``max_minutes`` (the budget, or an early stop under a step budget) has passed."""
        return self.budget_s is not None and elapsed >= self.budget_s

    @property
    def lr(self) -> float:
        """The LR of the next step (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]


class Clock:
    """The seconds of training spent, counted on from a resumed checkpoint's, the same on every process."""

    now = staticmethod(time.perf_counter)  # seconds; tests set a fake one

    def __init__(self, dist: distributed.DistInfo, step: int, elapsed_before: float):
        self.dist, self.elapsed_before, self.t_start = dist, elapsed_before, self.now()
        self.synced: tuple[int, float, float | None] = (step, elapsed_before, None)  # step, seconds, pace

    def local(self) -> float:
        """This process's own count of the seconds spent (what checkpoints and logs record)."""
        return self.elapsed_before + self.now() - self.t_start

    def at(self, step: int) -> float:
        """Seconds spent before ``step``, the same on every process: this process's clock alone, or rank 0's
        at the last :meth:`sync` carried forward at that window's pace per step (broadcast now until the
        first sync gives a pace)."""
        step0, elapsed0, pace = self.synced
        if self.dist.world_size == 1:
            return self.local()
        if pace is None:
            return distributed.broadcast_float(self.local(), self.dist.device)
        return elapsed0 + (step - step0) * pace

    def sync(self, step: int) -> float:
        """Rank 0's seconds after ``step``, on every process (one collective: call it at log steps), and the
        pace since the last sync, which :meth:`at` carries forward."""
        elapsed = distributed.broadcast_float(self.local(), self.dist.device)
        step0, elapsed0, _ = self.synced
        self.synced = (step, elapsed, (elapsed - elapsed0) / (step - step0))
        return elapsed
