"""The one scaffold that trains any task: :func:`run_task`.

For every task it sets up the process group and the run directory (lock, overwrite and resume checks,
data pinning), loads the data on rank 0 first, builds the model, saves the resolved config, the
tokenizer and the class names, trains, runs the task's ``finish`` and tears down. A run directory this
call created is removed again when the run fails before training wrote anything into it.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path

import torch

from xformer import distributed
from xformer.config import RunConfig, Section, config_text
from xformer.errors import XformerError
from xformer.train.checkpoint import atomic_write_text, latest_checkpoint, list_checkpoints, write_dir_whole
from xformer.train.loop import Trainer
from xformer.train.run_dir import (RunLock, check_resolved, check_start, pin_data, prepare_dir, remove_unstarted,
                                   save_user_config)
from xformer.trained.loading import tokenizer_dir
from xformer.tasks.base import Built
from xformer.tasks.registry import get_task


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
    tok_cfg = getattr(getattr(cfg, "data", None), "tokenizer", None)
    if tok_cfg is None:
        return None
    if resuming and (run_dir / "tokenizer").is_dir():
        return str(run_dir / "tokenizer")
    if tok_cfg.path is not None:
        return tok_cfg.path
    init = _vocabulary_init(cfg.model)
    return tokenizer_dir(init) if init else None


def _has_intact_checkpoint(run_dir: Path) -> bool:
    """Whether the run has an intact checkpoint to resume from; XformerError when it has checkpoints and
    every one is damaged (starting over would prune them and lose what a copy could still restore)."""
    if latest_checkpoint(run_dir) is not None:
        return True
    if found := list_checkpoints(run_dir):
        raise XformerError(f"{run_dir}: every checkpoint is damaged ({len(found)}, the newest {found[-1].name}; see "
                           f"the warnings above): restore one from a copy, or delete {run_dir / 'checkpoints'} to "
                           f"start over")
    return False


def run_task(cfg: RunConfig, resume: bool = False) -> dict:
    """Train ``cfg`` into its run directory (``cfg.out_dir``, default ``runs/<task>``); returns the final
    train and validation metrics. ``cfg`` itself is not changed; the resolved config is saved with the run."""
    spec = get_task(cfg.task)
    cfg = cfg.model_copy(deep=True)
    run_dir = Path(cfg.out_dir or Path("runs") / cfg.task)
    dist = distributed.setup(cfg.train.device)
    created = not run_dir.exists()
    try:
        return _train(cfg, spec, run_dir, dist, resume)
    except BaseException:
        if dist.is_main and created:
            remove_unstarted(run_dir)
        raise
    finally:
        distributed.teardown()


def _train(cfg: RunConfig, spec, run_dir: Path, dist, resume: bool) -> dict:
    """The body of :func:`run_task`: its own frame, so that the model (and DDP's hold on the process group)
    is released when it returns, before the process group is torn down."""
    if dist.is_main:
        prepare_dir(run_dir)
    with RunLock(run_dir) if dist.is_main else contextlib.nullcontext():
        has_checkpoint = _has_intact_checkpoint(run_dir)
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
        requested, cfg = cfg, cfg.model_copy(update={"model": built.model_config})
        if resuming:
            check_resolved(run_dir, cfg)
        if dist.is_main:
            save_user_config(run_dir, requested)  # what --resume compares: not the values derived above
            _save_run_files(run_dir, cfg, built, latest_checkpoint(run_dir) if resuming else None)
        trainer = Trainer(cfg, built.model, built.task, run_dir, dist)
        result = trainer.fit(resume=resuming)
        if spec.finish is not None:
            spec.finish(cfg, data, built, trainer, result)
        return result


def _save_run_files(run_dir: Path, cfg: RunConfig, built: Built, resumed: Path | None) -> None:
    """The resolved config, the tokenizer (never replaced once written) and the class names; the model line
    says where the weights come from (a resumed run's from its checkpoint ``resumed``, not its init)."""
    atomic_write_text(run_dir / "config.yaml", config_text(cfg))
    if built.tokenizer is not None and not (run_dir / "tokenizer").is_dir():  # whole or not at all: never replaced
        write_dir_whole(run_dir / "tokenizer", lambda work: built.tokenizer.save_pretrained(str(work)))
    if built.class_names is not None:
        atomic_write_text(run_dir / "classes.json", json.dumps(built.class_names))
    n_params = sum(p.numel() for p in built.model.parameters())
    summary = built.summary if resumed is None else re.sub(r"\binit [^;]*", f"weights from {resumed.name}",
                                                           built.summary)
    print(f"model: {n_params / 1e6:.2f}M parameters; {summary}; run dir: {run_dir}")
