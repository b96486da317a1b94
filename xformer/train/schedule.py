"""The schedule of a run over its budget: the LR (warmup, then decay), the micro-batches per optimizer step
(the batch-size ramp), and when training ends.

The budget (``train.budget``) is ``max_steps`` / ``epochs`` steps (``max_steps`` caps ``epochs``), where the
LR and the micro-batches are functions of the step, or ``max_minutes`` of wall time, where they are functions
of the elapsed time, read before every step from a :class:`Clock`. Each may be cut short by the other unit:
``max_minutes`` stops a step budget, ``max_steps`` a time budget, and the run says so. There is no
LRScheduler: :meth:`Schedule.set` sets each group's LR from the step or the time, so a resume needs only the
step, the elapsed time and the micro-batch count.

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


DEFAULT_STEPS = 1000  # the step budget when neither train.max_steps nor train.epochs is set


def budget_steps(cfg: TrainConfig, epoch_batches: int) -> tuple[int | None, int]:
    """The steps of the budget (None under a time budget: it ends when the time is spent) and the steps of
    one epoch, for data of ``epoch_batches`` micro-batches. ``max_steps`` caps ``epochs``: the schedule
    then runs over the capped steps."""
    steps_per_epoch = max(1, epoch_batches // cfg.grad_accum)
    if cfg.budget == "time":
        return None, steps_per_epoch
    if cfg.epochs is None:
        return cfg.max_steps or DEFAULT_STEPS, steps_per_epoch
    epoch_steps = max(1, round(cfg.epochs * steps_per_epoch))
    return min(epoch_steps, cfg.max_steps or epoch_steps), steps_per_epoch


def describe_budget(cfg: TrainConfig, total_steps: int | None, steps_per_epoch: int) -> str:
    """One line saying what the run will train for: steps, epochs or minutes, the steps that makes, which key
    decides it, and whether another key may stop it earlier."""
    if total_steps is None:
        line = f"budget: {cfg.max_minutes:g} minutes of training (train.budget=time; the LR follows the clock)"
        if cfg.max_steps is not None:
            line += f"; train.max_steps={cfg.max_steps} stops it earlier if reached first (LR not decayed)"
        return line
    epochs = f"{total_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch:,} steps"
    if cfg.epochs is None:
        key = f"train.max_steps={cfg.max_steps}" if cfg.max_steps else f"default; set train.max_steps or train.epochs"
        line = f"budget: {total_steps:,} steps ({key}), {epochs}"
    elif cfg.max_steps is not None and total_steps == cfg.max_steps:
        line = (f"budget: {total_steps:,} steps (train.max_steps={cfg.max_steps} caps train.epochs={cfg.epochs:g}, "
                f"which is {max(1, round(cfg.epochs * steps_per_epoch)):,} steps), {epochs}")
    else:
        line = f"budget: {cfg.epochs:g} epochs = {total_steps:,} steps of {steps_per_epoch:,} an epoch (train.epochs)"
    if cfg.max_minutes is not None:
        line += f"; train.max_minutes={cfg.max_minutes:g} still applies: training stops there if the steps are not done"
    return line


def warmup_warning(cfg: TrainConfig, total_steps: int | None) -> str | None:
    """A warning when warmup outlasts a step budget (the LR would never reach its peak), with the numbers."""
    if total_steps is None or cfg.warmup_steps <= total_steps:
        return None
    return (f"warning: train.warmup_steps={cfg.warmup_steps} is longer than the run's {total_steps:,} steps: the LR "
            f"would reach only {total_steps / cfg.warmup_steps:.0%} of its peak train.lr={cfg.lr:g}; lower "
            f"train.warmup_steps or use train.warmup_ratio")


def ramp_warning(cfg: TrainConfig, total_steps: int | None) -> str | None:
    """A warning when the batch-size ramp cannot happen: nothing to ramp (``grad_accum`` 1), or a step budget
    whose ramp lasts at most one step (the batch is full from the next), with the numbers."""
    if not cfg.batch_ramp:
        return None
    if cfg.grad_accum == 1:
        return (f"warning: train.batch_ramp={cfg.batch_ramp:g} has nothing to ramp: the micro-batches per step grow "
                f"from 1 to train.grad_accum, which is 1; raise train.grad_accum or set train.batch_ramp=0")
    ramp_steps = 0 if total_steps is None else math.ceil(cfg.batch_ramp * total_steps)
    if total_steps is None or ramp_steps > 1:
        return None
    return (f"warning: train.batch_ramp={cfg.batch_ramp:g} of the run's {total_steps:,} steps lasts {ramp_steps} "
            f"step: the batch jumps from 1 to train.grad_accum={cfg.grad_accum} micro-batches at once; raise "
            f"train.batch_ramp or set it to 0")


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

    @property
    def stop_step(self) -> int | None:
        """The step training ends at, whatever the time: the budget's steps, or under a time budget
        ``max_steps`` when set (None: none)."""
        return self.cfg.max_steps if self.time_budget else self.total_steps

    def spent(self, step: int, elapsed: float) -> bool:
        """Whether the budget is spent once ``step`` steps and ``elapsed`` seconds are done (or, under a time
        budget, ``max_steps`` reached)."""
        if self.time_budget:
            return elapsed >= self.budget_s or (self.stop_step is not None and step >= self.stop_step)
        return step >= self.total_steps

    def early_stop(self, step: int, elapsed: float) -> str | None:
        """Why training stopped before its schedule's end at ``step`` (``elapsed`` seconds in), or None when
        the schedule ran to its end: a step budget cut by ``max_minutes``, a time budget by ``max_steps``."""
        if self.time_budget and elapsed < self.budget_s:
            return (f"stopped by train.max_steps={self.stop_step} at step {step:,}, {elapsed / 60:.1f} of "
                    f"{self.cfg.max_minutes:g} minutes (LR not decayed)")
        if not self.time_budget and step < self.total_steps:
            return (f"stopped by train.max_minutes={self.cfg.max_minutes:g} at step {step:,} of "
                    f"{self.total_steps:,} (LR not decayed)")
        return None

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
