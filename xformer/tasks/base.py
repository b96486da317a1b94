"""What a task is: the contracts between a task module and the scaffold that runs it.

A task module defines its run config (model + data sections), a trainer-side :class:`Task` and a
:class:`TaskSpec` named ``TASK``; :func:`xformer.tasks.runner.run_task` does everything else for every
task, and :func:`xformer.tasks.trained_run.load_run` opens a trained run for its ``evaluate`` and
``export``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from xformer.config import RunConfig, Section


class Dataset(Protocol):
    """Rows the trainer batches: ``len()`` and ``batch(indices) -> {name: CPU tensor (B, ...)}``."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]: ...


class Task(Protocol):
    """The trainer's contract with a task (see :mod:`xformer.train.loop`).

    Optional, used when present: ``param_groups(model) -> list[dict]`` (what to train, with which weight
    decay and LR scale), ``evaluate(model) -> dict`` (metrics that need the whole validation set at once,
    e.g. retrieval), ``snapshot(model, step, out_dir)`` (after each evaluation, on every process; ``out_dir``
    is the run directory on the main process, None on the others: pictures of the model's work), and
    ``local_rows = True`` when ``prepare`` also takes ``rows=(offset, total)`` (random draws made for a whole
    micro-batch of ``total`` rows, sliced from ``offset``) and the training data has ``seq_len(indices)`` and
    ``batch(indices, seq_len=...)``: each process then reads only its own rows.
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
