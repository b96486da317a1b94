"""What a task is, and the one scaffold that runs any of them.

A task module defines its run config (model + data sections), a trainer-side :class:`Task` and a
:class:`TaskSpec` named ``TASK``. :func:`run_task` does everything else for every task: the process
group, the run directory (lock, overwrite and resume checks, data pinning), data loading on rank 0
first, the model, the saved config / tokenizer / class names, training and teardown.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from xformer import distributed
from xformer.train.checkpoint import atomic_write_text, latest_checkpoint
from xformer.config import RunConfig, Section, config_text
from xformer.train.run_dir import RunLock, check_start, pin_data, prepare_dir
from xformer.train.loop import Trainer


class Dataset(Protocol):
    """Rows the trainer batches: ``len()`` and ``batch(indices) -> {name: CPU tensor (B, ...)}``."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]: ...


class Task(Protocol):
    """The trainer's contract with a task (see :mod:`xformer.train.loop`).

    Optional, used when present: ``param_groups(model) -> list[dict]`` (what to train, with which weight
    decay and LR scale), ``evaluate(model) -> dict`` (metrics that need the whole validation set at once,
    e.g. retrieval), and ``local_rows = True`` when ``prepare`` also takes ``rows=(offset, total)`` (random
    draws made for a whole micro-batch of ``total`` rows, sliced from ``offset``) and the training data has
    ``seq_len(indices)`` and ``batch(indices, seq_len=...)``: each process then reads only its own rows.
    """

    train_data: Dataset
    val_data: Dataset | None

    def prepare(self, batch: dict, generator: torch.Generator, train: bool) -> dict:
        """On-device random work for a global micro-batch (masking, augmentation)."""

    def normalizers(self, batch: dict) -> dict[str, torch.Tensor]:
        """0-d counts the loss divides by (rows, masked tokens); the trainer sums them over the micro-batch."""

    def loss(self, model: nn.Module, local: dict, norms: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of this process's rows ``local``, normalised by the micro-batch's ``norms``, and summed counts."""

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        """Summed counts -> named metrics."""


@dataclass
class Built:
    """What a task builds from its config and data."""

    model: nn.Module
    model_config: Section  # resolved: architecture from an init, sizes from the data
    task: Task
    tokenizer: Any = None  # saved to RUN/tokenizer
    class_names: list[str] | None = None  # saved to RUN/classes.json
    summary: str = ""  # one line on what was built, printed at the start


@dataclass(frozen=True)
class TaskSpec:
    """A task's entry in the registry (:data:`xformer.tasks.TASKS`).

    Args:
        name: the ``task`` value of its recipes.
        config: its run config class.
        primary_metric: the validation metric that ranks runs (higher is better).
        load_data: ``(cfg, tokenizer) -> data``; ``tokenizer`` is a tokenizer directory (or hub id) the
            run must use (its own on resume, or its init's), or None. Runs on rank 0 first.
        build: ``(cfg, data) -> Built``.
        finish: ``(cfg, data, built, trainer, result)`` after training (final reports), on every rank.
        evaluate: ``(run_dir, source, split, limit) -> metrics`` for ``xformer eval``: the run's model on
            the first ``limit`` (None: all) documents / images of ``source``; the CLI prints and saves them.
        export: ``(run_dir, out_dir) -> description`` for ``xformer export``, if the task has one.
    """

    name: str
    config: type[RunConfig]
    primary_metric: str
    load_data: Callable[[RunConfig, str | None], Any]
    build: Callable[[RunConfig, Any], Built]
    finish: Callable[..., None] | None = None
    evaluate: Callable[..., dict] | None = None
    export: Callable[[Path, Path], str] | None = None


def _vocabulary_init(model_cfg: Section) -> str | None:
    """The checkpoint whose tokenizer the text side must use: the model's ``init``, or a text tower's."""
    if getattr(model_cfg, "init", None):
        return model_cfg.init
    for name in type(model_cfg).model_fields:
        sub = getattr(model_cfg, name)
        if isinstance(sub, Section) and "vocab_size" in type(sub).model_fields and getattr(sub, "init", None):
            return sub.init
    return None


def run_tokenizer(cfg: RunConfig, run_dir: Path, resuming: bool) -> str | None:
    """The tokenizer a run must use, as a directory or hub id: on resume always the run's own; else
    ``data.tokenizer.path``, else the tokenizer of the checkpoint the text side starts from; None: the
    task trains one (or has no text)."""
    from xformer.trained.loading import tokenizer_dir

    tok_cfg = getattr(getattr(cfg, "data", None), "tokenizer", None)
    if tok_cfg is None:
        return None
    if resuming and (run_dir / "tokenizer").is_dir():
        return str(run_dir / "tokenizer")
    if tok_cfg.path is not None:
        return tok_cfg.path
    init = _vocabulary_init(cfg.model)
    return tokenizer_dir(init) if init else None


def run_task(cfg: RunConfig, resume: bool = False) -> dict:
    """Train ``cfg`` into its run directory (``cfg.out_dir``, default ``runs/<task>``); returns the final
    train and validation metrics. ``cfg`` itself is not changed; the resolved config is saved with the run."""
    from xformer.tasks import get_task

    spec = get_task(cfg.task)
    cfg = cfg.model_copy(deep=True)
    run_dir = Path(cfg.out_dir or Path("runs") / cfg.task)
    dist = distributed.setup(cfg.train.device)
    try:
        if dist.is_main:
            prepare_dir(run_dir)
        with RunLock(run_dir) if dist.is_main else contextlib.nullcontext():
            has_checkpoint = latest_checkpoint(run_dir) is not None
            resuming = resume and has_checkpoint
            check_start(run_dir, cfg, resume, has_checkpoint)
            if resume and not resuming and dist.is_main:
                print(f"warning: --resume: {run_dir} has no checkpoint yet; starting from step 0", file=sys.stderr)
            if dist.is_main:
                pin_data(run_dir, cfg, resuming)
            tokenizer = run_tokenizer(cfg, run_dir, resuming)
            with distributed.main_first(dist):
                data = spec.load_data(cfg, tokenizer)
            torch.manual_seed(cfg.train.seed)
            built = spec.build(cfg, data)
            cfg = cfg.model_copy(update={"model": built.model_config})
            if dist.is_main:
                _save_run_files(run_dir, cfg, built)
            trainer = Trainer(cfg, built.model, built.task, run_dir, dist)
            result = trainer.fit(resume=resuming)
            if spec.finish is not None:
                spec.finish(cfg, data, built, trainer, result)
            return result
    finally:
        distributed.teardown()


def _save_run_files(run_dir: Path, cfg: RunConfig, built: Built) -> None:
    """The resolved config, the tokenizer (never replaced once written) and the class names."""
    atomic_write_text(run_dir / "config.yaml", config_text(cfg))
    if built.tokenizer is not None and not (run_dir / "tokenizer").is_dir():
        built.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    if built.class_names is not None:
        atomic_write_text(run_dir / "classes.json", json.dumps(built.class_names))
    n_params = sum(p.numel() for p in built.model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; {built.summary}; run dir: {run_dir}")
