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
- optionally ``param_groups(model)`` (what to train, with which decay) and ``evaluate(model)`` (metrics
  that need the whole validation set at once, e.g. retrieval, added to each evaluation).

Every micro-batch follows from its index alone (a seeded permutation per epoch, a seeded generator per
micro-batch), the count of micro-batches the steps before it read, so resuming needs only the step, that
count and the RNG state, and data-parallel runs reproduce single-process ones.

The schedule runs over a budget (``train.budget``): ``max_steps`` / ``epochs`` steps, where the LR and
the micro-batches per step (``grad_accum``, ramped up over ``batch_ramp``) are functions of the step, or
``max_minutes`` of wall time, where they are functions of the elapsed time, read before every step. With
several processes that time is rank 0's, broadcast at each log (every ``log_every`` steps) and carried
forward between logs at the pace of the last log window (broadcast every step before the first log),
so processes never disagree and need no collective per step. A task whose data has ``seq_len(indices)`` and whose ``prepare`` takes
``rows`` (``local_rows = True``: the token tasks) has each process read only its own rows, padded to the
micro-batch's length, with random draws made for the whole micro-batch and sliced, and the normalisers
summed over processes; otherwise every process builds the global micro-batch and keeps its rows.

With ``train.parallel=fsdp`` and several processes, the model is sharded per transformer block (FSDP2)
instead of replicated (DDP); gradients are averaged over processes alike, so losses match, and
checkpoints are sharded (DCP) and resume on any number of processes (see :mod:`xformer.train.sharded_checkpoint`).

A step whose loss or gradient norm is not finite stops training at the next log or save (one host
sync there, none per step) with an error naming the step; no checkpoint is written after it.
"""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from xformer import distributed
from xformer.train.checkpoint import (
    OPTIMIZER_IN_DCP,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from xformer.config import RunConfig, TrainConfig
from xformer.errors import XformerError
from xformer.layers import blocks_of, configure_attention, set_activation_checkpointing
from xformer.train.metrics import MetricsLog, start_wandb
from xformer.train.sharded_checkpoint import is_sharded, load_sharded_checkpoint, save_sharded_checkpoint


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: decayed weights, and biases/norms (fewer than 2 dims) without."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_optimizer(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD over ``groups``; a group's ``lr_scale`` multiplies ``cfg.lr`` (layer-wise decay)."""
    groups = [{**g, "lr": cfg.lr * g.pop("lr_scale", 1.0)} for g in (dict(g) for g in groups) if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=device.type == "cuda")


def warmup_share(cfg: TrainConfig) -> float:
    """The share of the budget spent warming up, unless ``warmup_steps`` counts it in steps."""
    if cfg.warmup_ratio is not None:
        return cfg.warmup_ratio
    return 0.5 if cfg.schedule == "triangle" and not cfg.warmup_steps else 0.0


def _decay(cfg: TrainConfig, progress: float) -> float:
    """The LR factor after warmup, ``progress`` (0..1) through the decay."""
    if cfg.schedule == "constant":
        return 1.0
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Under a step budget, the LR factor of (0-based) step: linear warmup to ``lr``, then linear or cosine
    decay to ``lr * min_lr_ratio`` at ``total_steps`` (or constant; triangle decays linearly)."""
    warmup = cfg.warmup_steps or math.ceil(warmup_share(cfg) * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return _decay(cfg, min(1.0, (step - warmup) / max(1, total_steps - warmup)))

    return factor


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Under a time budget, the LR factor once ``progress`` (0..1) of the time is spent; the same shapes."""
    warmup = warmup_share(cfg)
    if progress < warmup:
        return progress / warmup
    return _decay(cfg, min(1.0, (progress - warmup) / (1 - warmup)))


def micro_batches(cfg: TrainConfig, progress: float) -> int:
    """Micro-batches in the optimizer step taken once ``progress`` (0..1) of the budget is spent: from 1
    up to ``grad_accum`` linearly over the first ``batch_ramp`` of it (the batch-size ramp)."""
    if progress >= cfg.batch_ramp:
        return cfg.grad_accum
    return 1 + int((cfg.grad_accum - 1) * progress / cfg.batch_ramp)


def _match_state_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Give saved optimizer moments their parameter's shape where only the shape changed (a 0-d CLIP
    ``logit_scale`` saved before it became a 1-element parameter); the step counts stay as they are."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if key != "step" and torch.is_tensor(value) and value.shape != param.shape \
                        and value.numel() == param.numel():
                    optimizer.state[param][key] = value.reshape(param.shape)


def _matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters outside embedding tables (each is used in one multiply-add per token)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


class Trainer:
    """Runs ``cfg.train`` on ``model`` for ``task``; checkpoints and metrics go to ``run_dir``."""

    clock = staticmethod(time.perf_counter)  # seconds; the wall-clock budget's (tests set a fake one)

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, task, run_dir: str | Path,
                 dist: distributed.DistInfo):
        self.cfg, self.tcfg, self.task, self.dist = cfg, cfg.train, task, dist
        self.run_dir = Path(run_dir)
        self.model = model.to(dist.device)
        bf16 = self.tcfg.precision == "bf16" or (self.tcfg.precision == "auto" and dist.device.type == "cuda")
        self.autocast = lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16)
        configure_attention(self.model, dist.device, torch.bfloat16 if bf16 else torch.float32)
        set_activation_checkpointing(self.model, self.tcfg.activation_checkpointing)
        if self.tcfg.compile:  # regional: each block once (they share one compiled graph)
            for block in blocks_of(self.model):
                block.compile()
        # FSDP shards before the optimizer is built: its parameters become DTensors. One process: plain.
        self.fsdp = self.tcfg.parallel == "fsdp" and dist.world_size > 1
        if self.fsdp:
            distributed.shard_model(self.model, blocks_of(self.model), dist, bf16, self.tcfg.reshard_after_forward)
        groups = task.param_groups(self.model) if hasattr(task, "param_groups") else \
            param_groups(self.model, self.tcfg.weight_decay)
        self.optimizer = build_optimizer(groups, self.tcfg, dist.device)
        self.micro_batch = self.tcfg.batch_size * dist.world_size  # rows of one global micro-batch
        if len(task.train_data) < self.micro_batch:
            raise XformerError(f"the training data has {len(task.train_data)} examples, fewer than one batch "
                               f"(train.batch_size={self.tcfg.batch_size} x {dist.world_size} processes)")
        self.epoch_batches = len(task.train_data) // self.micro_batch
        steps_per_epoch = max(1, self.epoch_batches // self.tcfg.grad_accum)
        epochs = self.tcfg.epochs
        # a time budget has no step count: it ends when the time is spent
        self.time_budget = self.tcfg.budget == "time"
        self.total_steps = None if self.time_budget else \
            self.tcfg.max_steps if epochs is None else max(1, round(epochs * steps_per_epoch))
        self.eval_every = steps_per_epoch if self.tcfg.eval_every == "epoch" else self.tcfg.eval_every
        self.save_every = steps_per_epoch if self.tcfg.save_every == "epoch" else self.tcfg.save_every
        # No LRScheduler: _schedule sets each group's LR (and the micro-batches per step) from the step, or
        # from the elapsed time, so a resume needs only the step, the elapsed time and the micro-batch count.
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._step_lr = None if self.time_budget else lr_lambda(self.tcfg, self.total_steps)
        self._accum = self.tcfg.grad_accum  # micro-batches in the next optimizer step
        self._micro_done = 0  # micro-batches read since the start of training: the next step reads on from here
        step_model = self.model
        if self.tcfg.compile and not blocks_of(self.model):  # no blocks (the CNN): the whole model
            step_model = torch.compile(self.model)
        if dist.world_size > 1 and not self.fsdp:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            step_model = DistributedDataParallel(step_model, device_ids=ids)
        self.step_model = step_model
        self._first_bad = torch.tensor(-1, device=dist.device)
        self._norm_sum = torch.zeros((), dtype=torch.float64, device=dist.device)  # since the last log
        # model FLOPs per token for MFU: 6 x the parameters outside embedding tables (the attention
        # scores' own FLOPs are left out), for tasks that count tokens
        self._peak = distributed.peak_tflops(dist.device, self.tcfg.peak_tflops)
        self._flops_per_token = 6 * _matmul_parameters(model)
        self._local_rows = dist.world_size > 1 and getattr(task, "local_rows", False)
        self._perms: dict[int, np.ndarray] = {}
        # one background thread reads (and pins) the next micro-batch while the current step runs
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if self.tcfg.prefetch else None
        self._pending = None

    # ------------------------------------------------------------------ data
    def _generator(self, seed: int) -> torch.Generator:
        g = torch.Generator(device=self.dist.device)
        g.manual_seed(seed)
        return g

    def _permutation(self, epoch: int) -> np.ndarray:
        """The seeded order of the training rows in ``epoch`` (the two latest epochs are kept)."""
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.tcfg.seed, epoch]).permutation(len(self.task.train_data))
        return self._perms[epoch]

    def _read(self, k: int) -> dict[str, torch.Tensor]:
        """The CPU tensors of micro-batch k that this process needs: its own rows (padded as the whole
        micro-batch would be) for a ``local_rows`` task, else the whole micro-batch."""
        epoch, pos = divmod(k, self.epoch_batches)
        idx = self._permutation(epoch)[pos * self.micro_batch:(pos + 1) * self.micro_batch]
        B, r, data = self.tcfg.batch_size, self.dist.rank, self.task.train_data
        if not self._local_rows:
            batch = data.batch(idx)
        elif hasattr(data, "seq_len"):  # token rows padded as the whole micro-batch would be
            batch = data.batch(idx[r * B:(r + 1) * B], seq_len=data.seq_len(idx))
        else:
            batch = data.batch(idx[r * B:(r + 1) * B])
        if self.dist.device.type == "cuda":
            batch = {n: t.pin_memory() for n, t in batch.items()}  # copied to the GPU without blocking
        return batch

    def _cpu_batch(self, k: int) -> dict[str, torch.Tensor]:
        """Micro-batch k as read by the background thread while the previous step ran (or now), and the
        read of k + 1 started."""
        pending, self._pending = self._pending, None
        batch = pending[1].result() if pending is not None and pending[0] == k else self._read(k)
        if self._prefetcher is not None:
            self._pending = (k + 1, self._prefetcher.submit(self._read, k + 1))
        return batch

    def _micro_batch(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """This process's rows of the k-th micro-batch since the start of training, prepared on the device,
        and the normalisers of the whole micro-batch."""
        batch = self._to_device(self._cpu_batch(k))
        generator = self._generator(self.tcfg.seed * 1_000_003 + k)
        if self._local_rows:  # this process's rows only; random draws for the whole micro-batch, sliced
            B, r = self.tcfg.batch_size, self.dist.rank
            local = self.task.prepare(batch, generator, train=True, rows=(r * B, self.micro_batch))
            norms = {n: v.double() for n, v in self.task.normalizers(local).items()}
            return local, distributed.all_reduce_tensors(norms)
        full = self.task.prepare(batch, generator, train=True)
        return self._local(full), self.task.normalizers(full)

    def _local(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        B, r = self.tcfg.batch_size, self.dist.rank
        return {n: t[r * B:(r + 1) * B] for n, t in batch.items()}

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: t.to(self.dist.device, non_blocking=True) for n, t in batch.items()}

    # ------------------------------------------------------------------ loop
    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        self.step_model.train()
        counts: dict[str, torch.Tensor] = {}
        accum = self._accum
        for micro in range(accum):
            local, norms = self._micro_batch(self._micro_done + micro)
            sync = micro == accum - 1 or self.dist.world_size == 1
            if self.fsdp:  # FSDP reduces gradients on the last micro-step only; no context manager
                self.model.set_requires_gradient_sync(sync)
            no_sync = contextlib.nullcontext() if sync or self.fsdp else self.step_model.no_sync()
            with no_sync, self.autocast():
                loss, c = self.task.loss(self.step_model, local, norms)
            # DDP and FSDP average gradients over processes; losses are already shares of the global batch,
            # and the step's mean over its own micro-batches (their number changes during a batch ramp).
            (loss * self.dist.world_size / accum).backward()
            c["nonfinite"] = (~torch.isfinite(loss.detach())).sum()
            for n, v in c.items():
                counts[n] = counts[n] + v if n in counts else v
        # the gradient norm before clipping (with no clipping, an infinite limit only measures it)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.clip_grad or math.inf)
        if isinstance(norm, DTensor):  # FSDP: the norm over all shards
            norm = norm.full_tensor()
        counts["nonfinite"] = counts["nonfinite"] + (~torch.isfinite(norm)).sum()
        self._norm_sum = self._norm_sum + norm.detach().double()
        # the first step with a non-finite loss or gradient, kept on the device (no host sync per step)
        self._first_bad = torch.where((self._first_bad < 0) & (counts["nonfinite"] > 0), step + 1, self._first_bad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._micro_done += accum
        self._schedule(step + 1, self._elapsed(step + 1) if self.time_budget else 0.0)
        return counts

    def _elapsed(self, step: int) -> float:
        """Seconds of the time budget spent before ``step``, the same on every process: this process's clock
        alone, or rank 0's at the last log carried forward at that window's pace per step (broadcast now
        until the first log gives a pace)."""
        step0, elapsed0, pace = self._synced
        elapsed = self._elapsed_before + self.clock() - self._t_start
        if self.dist.world_size == 1:
            return elapsed
        if pace is None:
            return distributed.broadcast_float(elapsed, self.dist.device)
        return elapsed0 + (step - step0) * pace

    def _schedule(self, step: int, elapsed: float = 0.0) -> None:
        """Set the LR and the micro-batches of the next optimizer step, ``step``: a function of ``step``
        under a step budget, of ``elapsed`` seconds (rank 0's, so the same on every process) under a time budget."""
        if self.time_budget:
            progress = min(1.0, elapsed / (60 * self.tcfg.max_minutes))
            factor = lr_at(self.tcfg, progress)
        else:
            progress, factor = step / self.total_steps, self._step_lr(step)
        self._accum = micro_batches(self.tcfg, progress)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * factor

    @property
    def lr(self) -> float:
        """The LR of the next step (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics over the first ``eval_batches`` global batches of the validation data (fixed masks)."""
        data = self.task.val_data
        if data is None or len(data) == 0:
            return {}
        self.step_model.eval()
        counts: dict[str, torch.Tensor] = {}
        n_batches = math.ceil(len(data) / self.micro_batch)
        if self.tcfg.eval_batches is not None:
            n_batches = min(n_batches, self.tcfg.eval_batches)
        for i in range(n_batches):
            idx = np.arange(i * self.micro_batch, min(len(data), (i + 1) * self.micro_batch))
            full = {n: t.to(self.dist.device) for n, t in data.batch(idx).items()}
            full = self.task.prepare(full, self._generator(2**31 + i), train=False)
            local = {n: t[self.dist.rank::self.dist.world_size] for n, t in full.items()}
            with self.autocast():
                _, c = self.task.loss(self.model, local, self.task.normalizers(full))
            for n, v in c.items():
                counts[n] = counts[n] + v if n in counts else v
        metrics = self.task.metrics(distributed.all_reduce_sums(counts))
        if hasattr(self.task, "evaluate"):  # whole-model evaluations (zero-shot, retrieval)
            metrics.update(self.task.evaluate(self.model))
        return metrics

    def fit(self, resume: bool = False) -> dict:
        """Train for ``max_steps`` or ``epochs`` (or ``max_minutes``); returns the last train and validation metrics."""
        tcfg, is_main = self.tcfg, self.dist.is_main
        start_step, elapsed_before = 0, 0.0
        budget_s = None if tcfg.max_minutes is None else 60 * tcfg.max_minutes
        if resume and (ckpt := latest_checkpoint(self.run_dir)) is not None:
            if self.fsdp or is_sharded(ckpt):  # DCP reshards; a full checkpoint is sharded on load
                state = load_sharded_checkpoint(ckpt, self.model, self.optimizer)
            else:
                state = load_checkpoint(ckpt, self.model)
                self.optimizer.load_state_dict(state["optimizer"])
                _match_state_shapes(self.optimizer)
            # the LR follows from the step or the elapsed time: an old checkpoint's "scheduler" is not needed
            set_rng_state(state["rng"])
            start_step, elapsed_before = state["step"], state["elapsed"]
            # checkpoints from before the batch ramp read grad_accum micro-batches per step
            self._micro_done = state.get("micro_batches", start_step * tcfg.grad_accum)
            if self.time_budget:
                if elapsed_before >= budget_s and is_main:
                    print(f"{self.run_dir}: already trained for all {tcfg.max_minutes} minutes ({ckpt.name})")
            elif start_step > self.total_steps:
                raise XformerError(f"--resume: {ckpt} is at step {start_step}, beyond the {self.total_steps} steps "
                                   f"train.max_steps / train.epochs ask for; raise them to continue")
            elif start_step == self.total_steps and is_main:
                print(f"{self.run_dir}: already trained for all {self.total_steps} steps ({ckpt.name})")
        self._schedule(start_step, elapsed_before)
        log = MetricsLog(self.run_dir / "metrics.jsonl", start_step if resume else None,
                         start_wandb(self.cfg, self.run_dir)) if is_main else None
        bar = tqdm(total=self.total_steps, initial=start_step, disable=not (is_main and tcfg.progress),
                   dynamic_ncols=True, desc="train")
        t_start = t_log = self.clock()
        self._t_start, self._elapsed_before = t_start, elapsed_before
        self._synced: tuple[int, float, float | None] = (start_step, elapsed_before, None)  # step, seconds, pace
        window: dict[str, torch.Tensor] = {}
        train_metrics: dict = {}
        val_metrics: dict = {}
        step = logged_step = start_step
        done = elapsed_before >= budget_s if self.time_budget else step >= self.total_steps
        while not done:
            for n, v in self.train_step(step).items():
                window[n] = window[n] + v if n in window else v
            step += 1
            bar.update(1)
            last = step == self.total_steps
            if step % tcfg.log_every == 0 or last:
                sums = distributed.all_reduce_sums(window)
                now = self.clock()
                if budget_s is not None:
                    # rank 0's clock for every process: they stop at the same step and hold the same LR
                    elapsed = distributed.broadcast_float(elapsed_before + now - t_start, self.dist.device)
                    last = last or elapsed >= budget_s
                    if self.time_budget:  # the LR and batch of the next step, and the pace until the next log
                        self._schedule(step, elapsed)
                        step0, elapsed0, _ = self._synced
                        self._synced = (step, elapsed, (elapsed - elapsed0) / (step - step0))
                train_metrics = self.task.metrics(sums)
                train_metrics["lr"] = self.lr
                train_metrics["grad_norm"] = float(self._norm_sum) / (step - logged_step)  # mean since the last log
                self._norm_sum.zero_()
                logged_step = step
                for unit in ("tokens", "images"):  # throughput in whatever the task counts
                    if unit in sums:
                        train_metrics[f"{unit}_per_s"] = sums[unit] / (now - t_log)
                if self._peak and "tokens" in sums:  # model FLOPs utilisation of each device
                    achieved = self._flops_per_token * train_metrics["tokens_per_s"] / self.dist.world_size
                    train_metrics["mfu"] = achieved / (self._peak * 1e12)
                window, t_log = {}, now
                if sums.get("nonfinite"):
                    self._stop_if_diverged(bar, log)
                if is_main:
                    log.write({"step": step, "split": "train", **train_metrics,
                               "elapsed_s": elapsed_before + now - t_start})
                    bar.set_postfix({k: f"{v:.3g}" for k, v in train_metrics.items() if k == "loss" or "_per_s" in k})
            t_pause = self.clock()  # evaluation and checkpointing do not count against throughput
            if step % self.eval_every == 0 or last:
                val_metrics = self.evaluate()
                if is_main:
                    log.write({"step": step, "split": "val", **val_metrics})
                    bar.write(f"step {step} | val " + " | ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
            if step % self.save_every == 0 or last:
                self._stop_if_diverged(bar, log)
                if self.fsdp:  # every process writes its shards
                    state = {"step": step, "optimizer": OPTIMIZER_IN_DCP, "micro_batches": self._micro_done,
                             "rng": rng_state(), "elapsed": elapsed_before + self.clock() - t_start}
                    save_sharded_checkpoint(self.run_dir, step, self.model, self.optimizer, self.cfg, state,
                                            tcfg.keep_last, is_main)
                elif is_main:
                    state = {"step": step, "optimizer": self.optimizer.state_dict(),
                             "micro_batches": self._micro_done, "rng": rng_state(),
                             "elapsed": elapsed_before + self.clock() - t_start}
                    save_checkpoint(self.run_dir, step, self.model, self.cfg, state, tcfg.keep_last)
                distributed.barrier()
            t_log += self.clock() - t_pause
            if last:
                break
        self._close(bar, log)
        if self.fsdp:  # tasks' final reports may run the model on rank 0 only
            distributed.unshard_model(self.model)
        return {"step": step, "train": train_metrics, "val": val_metrics}

    def _close(self, bar, log) -> None:
        bar.close()
        if log is not None:
            log.close()
        if self._prefetcher is not None:
            self._prefetcher.shutdown(cancel_futures=True)

    def _stop_if_diverged(self, bar, log) -> None:
        """Stop (XformerError) once a step had a non-finite loss or gradient: nothing more is saved."""
        first_bad = int(self._first_bad)
        if first_bad < 0:
            return
        self._close(bar, log)
        last_good = latest_checkpoint(self.run_dir)
        raise XformerError(
            f"step {first_bad}: the training loss or gradient is not finite (diverged at lr "
            f"{self.lr:.3g}); training stopped and nothing was saved after it; "
            f"the last good checkpoint is {last_good or 'none'}; lower train.lr or raise train.warmup_steps")
