"""The training loop shared by every model.

A *task* adapts a model family to the loop (the ``Task`` protocol of :mod:`xformer.tasks.base`). It
provides ``train_data`` / ``val_data`` (``len()`` and ``batch(indices) -> dict of CPU tensors``) and
three methods:

- ``prepare(batch, generator, train)``: on-device, random per batch work (masking, augmentation;
  with ``train=False`` only what evaluation needs, e.g. fixed masks, no augmentation);
- ``normalizers(batch)``: 0-d counts that the loss divides by (rows, masked tokens), summed over the
  whole micro-batch, so N processes match one with N x batch;
- ``loss(model, local, norms)``: loss and summed counts for this process's rows ``local``;
- ``metrics(counts)``: summed counts -> named metrics;
- optionally ``param_groups(model)`` (what to train, with which decay), ``evaluate(model)`` (metrics
  that need the whole validation set at once, e.g. retrieval, added to each evaluation) and
  ``snapshot(model, step, out_dir)`` (after each evaluation, on every process; the main one gets the run
  directory to write into, the others None: e.g. MAE's reconstruction pictures).

The loop delegates to components, each in its own module: the model made ready to train
(:mod:`~xformer.train.parallel`: attention backend, activation checkpointing, compilation, DDP / FSDP), the
optimizer (:mod:`~xformer.train.optimizer`), the micro-batches in order (:mod:`~xformer.train.batches`), the
LR and batch schedule over a step or time budget and its clock (:mod:`~xformer.train.schedule`),
checkpoints full or sharded (:mod:`~xformer.train.checkpointer`) and the logged metrics
(:mod:`~xformer.train.metrics`).

A step whose loss or gradient norm is not finite stops training at the next log or save (one host
sync there, none per step) with an error naming the step; no checkpoint is written after it. So does a
training loss that explodes without going non-finite (:class:`~xformer.train.metrics.ExplosionWatch`).
A validation record with no targets, or a non-finite loss, is warned about with its step.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from xformer import distributed
from xformer.config import RunConfig
from xformer.errors import XformerError
from xformer.losses import no_targets
from xformer.train.batches import Batches, process_rows, seeded_generator
from xformer.train.checkpointer import Checkpointer
from xformer.train.metrics import (
    DivergenceWatch,
    ExplosionWatch,
    LogWindow,
    MetricsLog,
    add_counts,
    start_wandb,
    validation_warning,
)
from xformer.train.optimizer import optimizer_for
from xformer.train.parallel import (
    autocast_for,
    clip_gradients,
    gradient_sync,
    is_sharded_run,
    parallelize,
    unshard_model,
)
from xformer.train.schedule import Clock, Schedule, budget_steps, describe_budget, ramp_warning, warmup_warning
from xformer.train.signals import StopRequests, Stopped, signal_name


class Trainer:
    """Runs ``cfg.train`` on ``model`` for ``task``; checkpoints and metrics go to ``run_dir``."""

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, task, run_dir: str | Path,
                 dist: distributed.DistInfo):
        self.cfg, self.tcfg, self.task, self.dist = cfg, cfg.train, task, dist
        self.run_dir = Path(run_dir)
        self.model = model.to(dist.device)
        self.autocast = autocast_for(self.tcfg, dist.device)
        self.fsdp = is_sharded_run(self.tcfg, dist)
        self.step_model = parallelize(self.model, self.tcfg, dist)  # before the optimizer: FSDP makes DTensors
        self.optimizer = optimizer_for(self.model, task, self.tcfg, dist.device)
        self.batches = Batches(task, self.tcfg, dist)
        self.total_steps, self.steps_per_epoch = budget_steps(self.tcfg, self.batches.epoch_batches)
        steps_per_epoch = self.steps_per_epoch
        self.eval_every = steps_per_epoch if self.tcfg.eval_every == "epoch" else self.tcfg.eval_every
        self.save_every = steps_per_epoch if self.tcfg.save_every == "epoch" else self.tcfg.save_every
        self.schedule = Schedule(self.tcfg, self.total_steps, self.optimizer)
        self.checkpointer = Checkpointer(self.run_dir, cfg, self.model, self.optimizer, dist, self.fsdp)
        self.window = LogWindow(model, dist, self.tcfg.peak_tflops)
        self.divergence = DivergenceWatch(dist.device)
        self.explosion = ExplosionWatch()
        self.val_counts: dict[str, float] = {}  # the summed counts of the last evaluation
        self.micro_done = 0  # micro-batches read since the start of training: the next step reads on from here
        self.clock: Clock | None = None  # set by fit
        self.bar, self.log = None, None
        self.saved_at = time.monotonic()  # when the last checkpoint was written (or training began)
        self.saved_step: int | None = None

    @property
    def lr(self) -> float:
        """The LR of the next step (of the first parameter group)."""
        return self.schedule.lr

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimizer step over the schedule's micro-batches; returns the summed counts, with the gradient
        norm before clipping and the count of non-finite values (on the device)."""
        self.step_model.train()
        counts: dict[str, torch.Tensor] = {}
        accum = self.schedule.accum
        for micro in range(accum):
            local, norms = self.batches.micro_batch(self.micro_done + micro)
            sync = gradient_sync(self.model, self.step_model, micro == accum - 1, self.fsdp)
            with sync, self.autocast():
                loss, c = self.task.loss(self.step_model, local, norms)
            # DDP and FSDP average gradients over processes; losses are already shares of the global batch,
            # and the step's mean over its own micro-batches (their number changes during a batch ramp).
            (loss * self.dist.world_size / accum).backward()
            c["nonfinite"] = (~torch.isfinite(loss.detach())).sum()
            add_counts(counts, c)
        norm = clip_gradients(self.model, self.tcfg.clip_grad)
        counts["nonfinite"] = counts["nonfinite"] + (~torch.isfinite(norm)).sum()
        counts["grad_norm"] = norm.detach().double()
        self.divergence.update(step + 1, counts["nonfinite"])
        self.explosion.add(step + 1, counts)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro_done += accum
        self.schedule.set(step + 1, self.clock.at(step + 1) if self.schedule.time_budget else 0.0)
        return counts

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics over the first ``eval_batches`` global batches of the validation data (fixed masks)."""
        data, size = self.task.val_data, self.batches.size
        self.val_counts = {}
        if data is None or len(data) == 0:
            return {}
        self.step_model.eval()
        counts: dict[str, torch.Tensor] = {}
        n_batches = math.ceil(len(data) / size)
        if self.tcfg.eval_batches is not None:
            n_batches = min(n_batches, self.tcfg.eval_batches)
        for i in range(n_batches):
            idx = np.arange(i * size, min(len(data), (i + 1) * size))
            full = {n: t.to(self.dist.device) for n, t in data.batch(idx).items()}
            full = self.task.prepare(full, seeded_generator(self.dist.device, 2**31 + i), train=False)
            rows = process_rows(len(idx), self.dist.rank, self.dist.world_size)
            with self.autocast():
                _, c = self.task.loss(self.model, {n: t[rows] for n, t in full.items()}, self.task.normalizers(full))
            add_counts(counts, c)
        self.val_counts = distributed.all_reduce_sums(counts)
        metrics = self.task.metrics(self.val_counts)
        if hasattr(self.task, "evaluate"):  # whole-model evaluations (zero-shot, retrieval)
            metrics.update(self.task.evaluate(self.model))
        return metrics

    def fit(self, resume: bool = False) -> dict:
        """Train for ``max_steps`` or ``epochs`` (or ``max_minutes``); returns the last train and validation
        metrics, with ``val_label`` (what the validation figures cover) and ``stopped_by`` (an early stop, or
        None). Ctrl-C or SIGTERM ends training after the current step (:meth:`_stop_on_signal`)."""
        self._announce()
        resumed = self._resume() if resume else None
        start, elapsed = (resumed["step"], resumed["elapsed"]) if resumed else (0, 0.0)
        self.schedule.set(start, elapsed)
        if self.dist.is_main:
            self.log = MetricsLog(self.run_dir / "metrics.jsonl", start if resume else None,
                                  start_wandb(self.cfg, self.run_dir))
        self.bar = tqdm(total=self.schedule.stop_step, initial=start, dynamic_ncols=True, desc="train",
                        disable=not (self.dist.is_main and self.tcfg.progress))
        self.clock = Clock(self.dist, start, elapsed)
        self.window.start(self.clock.t_start)
        self.saved_at, self.saved_step = time.monotonic(), start if resumed else None
        train_metrics, val_metrics = {}, {}
        step, last = start, self.schedule.spent(start, elapsed)
        with StopRequests() as stop:
            while not last:
                self.window.add(self.train_step(step))
                step += 1
                self.bar.update(1)
                last = step == self.schedule.stop_step
                logs = step % self.tcfg.log_every == 0 or last
                if logs:
                    train_metrics, last = self._log_train(step, last)
                self._stop_on_signal(stop, step, logs)
                t_pause = self.clock.now()  # evaluation and checkpointing do not count against throughput
                if step % self.eval_every == 0 or last:
                    val_metrics = self._log_val(step)
                if step % self.save_every == 0 or last:
                    self._save(step)
                self.window.pause(self.clock.now() - t_pause)
        self._close()
        stopped_by = self.schedule.early_stop(step, self.clock.local()) if step > start else None
        if stopped_by and self.dist.is_main:
            print(stopped_by)
        if self.fsdp:  # tasks' final reports may run the model on rank 0 only
            unshard_model(self.model)
        return {"step": step, "train": train_metrics, "val": val_metrics, "val_label": self.val_label(),
                "stopped_by": stopped_by}

    def _announce(self) -> None:
        """The run's first line: its budget (and a warning when warmup outlasts it, or the batch ramp cannot
        happen)."""
        if not self.dist.is_main:
            return
        print(describe_budget(self.tcfg, self.total_steps, self.steps_per_epoch))
        for warning in (warmup_warning(self.tcfg, self.total_steps), ramp_warning(self.tcfg, self.total_steps)):
            if warning:
                print(warning, file=sys.stderr)

    def val_label(self) -> str:
        """What the validation figures of :meth:`evaluate` cover: ``val (first N batches)`` or ``val (all N
        examples)``."""
        data = self.task.val_data
        n = 0 if data is None else len(data)
        batches = math.ceil(n / self.batches.size)
        if self.tcfg.eval_batches is not None and self.tcfg.eval_batches < batches:
            first = self.tcfg.eval_batches
            return f"val (first {first} batches, {first * self.batches.size:,} examples)"
        return f"val (all {n:,} examples)"

    def _save(self, step: int) -> None:
        """Checkpoint after ``step`` (never after a diverged or exploded step)."""
        self._stop_if_diverged()
        if self.window.steps:  # steps since the last log: their loss was not checked yet
            self._stop_if_exploded(step, self.task.metrics(self.window.sums()).get("loss"))
        self.checkpointer.save(step, {"micro_batches": self.micro_done, "elapsed": self.clock.local()})
        self.saved_at, self.saved_step = time.monotonic(), step

    def _stop_on_signal(self, stop: StopRequests, step: int, logs: bool) -> None:
        """After ``step``: when Ctrl-C or SIGTERM came, write a checkpoint if the last one is older than
        ``train.save_on_signal_after`` seconds, and raise :class:`Stopped` saying what is kept. With several
        processes they agree at log steps (one collective there), so all stop at the same step."""
        if self.dist.world_size > 1:
            if not logs:
                return
            flag = torch.tensor(float(stop.signum is not None), device=self.dist.device)
            if not distributed.all_reduce_sums({"signal": flag})["signal"]:
                return
        elif stop.signum is None:
            return
        age = time.monotonic() - self.saved_at
        if age > self.tcfg.save_on_signal_after and self.saved_step != step:
            self._save(step)
            kept = f"wrote checkpoint step_{step}"
        else:
            latest = self.checkpointer.latest()
            kept = (f"kept {latest.name} from {age:.0f}s ago (train.save_on_signal_after="
                    f"{self.tcfg.save_on_signal_after:g}), steps after it are dropped" if latest
                    else "no checkpoint was written yet: the steps done are dropped")
        self._close()
        signum = stop.signum or signal.SIGTERM  # another process's signal: SLURM's is SIGTERM
        raise Stopped(f"{signal_name(signum)}: training stopped at step {step}; {kept}; continue with --resume",
                      signum)

    def _resume(self) -> dict | None:
        """Load the newest checkpoint, if any, and say when its budget is already spent."""
        resumed = self.checkpointer.load()
        if resumed is None:
            return None
        self.micro_done = resumed["micro_batches"]
        step, ckpt, is_main = resumed["step"], resumed["path"], self.dist.is_main
        if self.schedule.time_budget:
            if self.schedule.spent(step, resumed["elapsed"]) and is_main:
                print(f"{self.run_dir}: already trained for all {self.tcfg.max_minutes} minutes ({ckpt.name})")
        elif step > self.total_steps:
            raise XformerError(f"--resume: {ckpt} is at step {step}, beyond the {self.total_steps} steps "
                               f"train.max_steps / train.epochs ask for; raise them to continue")
        elif step == self.total_steps and is_main:
            print(f"{self.run_dir}: already trained for all {self.total_steps} steps ({ckpt.name})")
        if is_main:
            print(f"resumed from step {step} ({ckpt})")
        return resumed

    def _log_train(self, step: int, last: bool) -> tuple[dict, bool]:
        """Log the window's training metrics after ``step``; under ``max_minutes``, share rank 0's time (every
        process stops at the same step and holds the same LR). Returns the metrics and whether to stop."""
        now = self.clock.now()
        sums, window = self.window.close(now)
        if self.schedule.budget_s is not None:
            elapsed = self.clock.sync(step)
            last = last or self.schedule.out_of_time(elapsed)
            if self.schedule.time_budget:  # the LR and batch of the next step, and the pace until the next log
                self.schedule.set(step, elapsed)
        metrics = {**self.task.metrics(sums), "lr": self.lr, **window}
        if sums.get("nonfinite"):
            self._stop_if_diverged()
        self._stop_if_exploded(step, metrics.get("loss"))
        if self.dist.is_main:
            self.log.write({"step": step, "split": "train", **metrics, "elapsed_s": self.clock.local()})
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k == "loss" or "_per_s" in k})
        return metrics, last

    def _log_val(self, step: int) -> dict[str, float]:
        """Evaluate after ``step`` and log the metrics."""
        metrics = self.evaluate()
        if hasattr(self.task, "snapshot"):  # every process runs the model (it may be sharded); the main one writes
            with self.autocast():  # the precision the backend was chosen for (varlen / flash need bf16 / fp16)
                self.task.snapshot(self.model, step, self.run_dir if self.dist.is_main else None)
        if self.dist.is_main:
            self.log.write({"step": step, "split": "val", **metrics})
            untargeted = bool(no_targets(self.val_counts))  # its NaN metrics were not measured: say so
            shown = " | ".join(f"{k} no targets" if untargeted and math.isnan(v) else f"{k} {v:.4f}"
                               for k, v in metrics.items())
            self.bar.write(f"step {step} | {self.val_label()} {shown}")
            if warning := validation_warning(step, self.val_counts, metrics, self.val_label()):
                print(warning, file=sys.stderr)
        return metrics

    def _close(self) -> None:
        self.bar.close()
        if self.log is not None:
            self.log.close()
        self.batches.close()

    def _stop_if_exploded(self, step: int, loss: float | None) -> None:
        """Stop (XformerError) once the training loss logged after ``step`` is many times its start."""
        reason = None if loss is None else self.explosion.check(step, loss, self.task.metrics)
        if reason is None:
            return
        self._close()
        raise XformerError(
            f"{reason} (lr {self.lr:.3g}); training stopped and nothing was saved after it; the last good "
            f"checkpoint is {self.checkpointer.latest() or 'none'}; lower train.lr or raise train.warmup_steps")

    def _stop_if_diverged(self) -> None:
        """Stop (XformerError) once a step had a non-finite loss or gradient: nothing more is saved."""
        first_bad = self.divergence.first()
        if first_bad is None:
            return
        self._close()
        raise XformerError(
            f"step {first_bad}: the training loss or gradient is not finite (diverged at lr "
            f"{self.lr:.3g}); training stopped and nothing was saved after it; "
            f"the last good checkpoint is {self.checkpointer.latest() or 'none'}; lower train.lr or raise "
            f"train.warmup_steps")
