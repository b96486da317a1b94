"""The training state of a run, saved and restored behind one interface, full or sharded.

A full checkpoint (one process, or DDP) is written by rank 0 alone: ``model.safetensors`` and the optimizer
state in ``train_state.pt`` (:mod:`xformer.train.checkpoint`). An FSDP run writes sharded ones, every
process its DCP shards (:mod:`xformer.train.sharded_checkpoint`); DCP reshards on load, so either kind
resumes on any number of processes, FSDP or not.

Checkpoints written by earlier versions resume too; the shims for them live here: a 0-d parameter saved
before it became a 1-element one (CLIP's ``logit_scale``), no micro-batch count (before the batch ramp),
and a LambdaLR's state under ``scheduler`` (the LR now follows from the step or the elapsed time).
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import torch

from xformer import distributed
from xformer.config import RunConfig
from xformer.errors import XformerError
from xformer.train.checkpoint import (
    OPTIMIZER_IN_DCP,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from xformer.train.sharded_checkpoint import is_sharded, load_sharded_checkpoint, save_sharded_checkpoint


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer holding NaN or Inf (in this process's shard of an FSDP
    model), or None."""
    from torch.distributed.tensor import DTensor

    for name, t in chain(model.named_parameters(), model.named_buffers()):
        t = t.to_local() if isinstance(t, DTensor) else t
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def match_state_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Give saved optimizer moments their parameter's shape where only the shape changed (a 0-d CLIP
    ``logit_scale`` saved before it became a 1-element parameter); the step counts stay as they are."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if key != "step" and torch.is_tensor(value) and value.shape != param.shape \
                        and value.numel() == param.numel():
                    optimizer.state[param][key] = value.reshape(param.shape)


def upgrade_state(state: dict, grad_accum: int) -> dict:
    """The loop's part of a saved training state, ``step``, ``elapsed`` and ``micro_batches``, whatever
    version wrote it: checkpoints from before the batch ramp read ``grad_accum`` micro-batches per step, and
    an old ``scheduler`` entry is not needed."""
    step = state["step"]
    return {"step": step, "elapsed": state["elapsed"], "micro_batches": state.get("micro_batches", step * grad_accum)}


class Checkpointer:
    """Saves ``model``, ``optimizer``, the RNG states and the loop's state into ``run_dir``, and loads the
    newest intact checkpoint back; ``sharded`` (an FSDP run) writes DCP shards from every process."""

    def __init__(self, run_dir: Path, cfg: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 dist: distributed.DistInfo, sharded: bool):
        self.run_dir, self.cfg, self.model, self.optimizer = Path(run_dir), cfg, model, optimizer
        self.dist, self.sharded = dist, sharded

    def latest(self) -> Path | None:
        """The newest intact checkpoint of the run, or None."""
        return latest_checkpoint(self.run_dir)

    def save(self, step: int, state: dict) -> None:
        """Write ``checkpoints/step_<step>`` with the loop's ``state`` (``micro_batches``, ``elapsed``).
        Every process calls this; they return once it is in place."""
        tcfg = self.cfg.train
        if self.sharded:  # every process writes its shards
            full = {"step": step, "optimizer": OPTIMIZER_IN_DCP, "micro_batches": state["micro_batches"],
                    "rng": rng_state(), "elapsed": state["elapsed"]}
            save_sharded_checkpoint(self.run_dir, step, self.model, self.optimizer, self.cfg, full,
                                    tcfg.keep_last, self.dist.is_main)
        elif self.dist.is_main:
            full = {"step": step, "optimizer": self.optimizer.state_dict(), "micro_batches": state["micro_batches"],
                    "rng": rng_state(), "elapsed": state["elapsed"]}
            save_checkpoint(self.run_dir, step, self.model, self.cfg, full, tcfg.keep_last)
        distributed.barrier()

    def load(self) -> dict | None:
        """Load the newest intact checkpoint into the model, the optimizer and the RNGs, and return the loop's
        state (:func:`upgrade_state`) with its ``path``; None when the run has no checkpoint."""
        ckpt = self.latest()
        if ckpt is None:
            return None
        if self.sharded or is_sharded(ckpt):  # DCP reshards; a full checkpoint is sharded on load
            state = load_sharded_checkpoint(ckpt, self.model, self.optimizer)
        else:
            state = load_checkpoint(ckpt, self.model)
            self.optimizer.load_state_dict(state["optimizer"])
            match_state_shapes(self.optimizer)
        self._refuse_non_finite(ckpt)
        set_rng_state(state["rng"])
        return {**upgrade_state(state, self.cfg.train.grad_accum), "path": ckpt}

    def _refuse_non_finite(self, ckpt: Path) -> None:
        """XformerError on every process when the weights just loaded from ``ckpt`` hold NaN or Inf in any
        process's shard (training never saves such weights: the checkpoint was altered after it was written)."""
        bad = first_non_finite(self.model)
        flag = torch.tensor(float(bad is not None), device=self.dist.device)
        if distributed.all_reduce_sums({"bad": flag})["bad"]:
            where = f" (first: {bad})" if bad else ""
            raise XformerError(f"--resume: the weights of {ckpt} are not finite{where}; the checkpoint was altered "
                               f"after training wrote it: restore it from a copy, or delete it to resume from an "
                               f"older one")
