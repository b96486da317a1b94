"""Recipes: defaults, then a YAML file, then ``--set a.b=c`` overrides, validated by the task's config;
and ``xformer train`` / ``pretrain`` / ``finetune``, which train one.

The task's config class comes from the task registry (:func:`xformer.tasks.parse_config`); the
schemas are in :mod:`xformer.config`, the model files (:mod:`xformer.models.registry`),
:mod:`xformer.data.configs` and the task modules.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from xformer import tasks
from xformer.config import RunConfig, load_yaml
from xformer.errors import XformerError
from xformer.tasks import parse_config

PRETRAINING_TASKS = ("bert_pretraining", "mae")  # what ``xformer pretrain`` runs
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise XformerError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
        value = float(value)
    return key.strip().split("."), value


def set_path(tree: dict, path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating sections on the way."""
    for i, part in enumerate(path[:-1]):
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise XformerError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        tree = node
    tree[path[-1]] = value


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Defaults, then the recipe file (if any), then ``key=value`` overrides, validated."""
    tree = load_yaml(path) if path is not None else {}
    origin = str(path) if path is not None else "config"
    if tree and path is not None:
        parse_config(tree, origin)  # blame the file before the overrides
    for text in overrides:
        keys, value = parse_override(text)
        set_path(tree, keys, value)
    cfg = parse_config(tree, origin if not overrides else f"{origin} with --set")
    if cfg.out_dir is None and path is not None:
        cfg.out_dir = str(Path("runs") / Path(path).stem)
    return cfg


def cmd_train(args: argparse.Namespace) -> None:
    """``xformer train`` / ``pretrain`` / ``finetune``: train the recipe into its run directory."""
    cfg = load_recipe(args.recipe, args.set)
    if args.out:
        cfg.out_dir = args.out
    if args.command == "pretrain" and cfg.task not in PRETRAINING_TASKS:
        raise XformerError(f"{args.recipe}: task {cfg.task} is not pretraining; use xformer train")
    if args.command == "finetune" and not _has_init(cfg.model):
        raise XformerError(f"{args.recipe}: finetune needs model.init (hf:<dir or hub id>, a run dir or a checkpoint)")
    result = tasks.run(cfg, resume=args.resume)
    val = " ".join(f"{k}={v:.4f}" for k, v in result["val"].items() if isinstance(v, (int, float)))
    print(f"done: step {result['step']}, run dir {cfg.out_dir}; {result.get('val_label', 'val')} {val}")


def _has_init(model_cfg) -> bool:
    """Whether the model, or one of its towers, starts from a checkpoint."""
    towers = [getattr(model_cfg, t, None) for t in ("vision", "text")]
    return any(getattr(m, "init", None) is not None for m in (model_cfg, *towers))
