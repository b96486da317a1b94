"""The task registry: a task's name -> the module that defines it (its ``TASK`` :class:`~xformer.tasks.base.TaskSpec`).

Adding a task is one new module in this package (a config class, the trainer-side task and a
``TaskSpec``) plus one line in :data:`TASKS`. Modules are imported on first use (by name, through
:mod:`importlib`), so reading a recipe imports only its own task, and no task module is imported by this
one at import time.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from xformer.config import RunConfig, load_yaml, validate
from xformer.errors import XformerError, did_you_mean

if TYPE_CHECKING:
    from xformer.tasks.base import TaskSpec

TASKS: dict[str, str] = {
    "bert_pretraining": "xformer.tasks.bert_pretraining",
    "image_classification": "xformer.tasks.image_classification",
    "contrastive": "xformer.tasks.contrastive",
    "text_classification": "xformer.tasks.text_classification",
    "mae": "xformer.tasks.mae",
}
DEFAULT_TASK = "bert_pretraining"


def get_task(name: str, origin: str = "config") -> TaskSpec:
    """The spec of task ``name``; XformerError naming the closest valid task otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        hint = did_you_mean(name, TASKS)
        raise XformerError(f"{origin}: unknown task {name!r}{hint} (valid tasks: {', '.join(TASKS)})")
    return importlib.import_module(TASKS[name]).TASK


def parse_config(tree: dict, origin: str) -> RunConfig:
    """Validate a config tree with the config class of its ``task`` (default ``bert_pretraining``)."""
    return validate(get_task(tree.get("task", DEFAULT_TASK), origin).config, tree, origin)


def read_run_config(path: str | Path) -> RunConfig:
    """The resolved config of a run directory or a checkpoint directory (its ``config.yaml``)."""
    path = Path(path)
    if not path.exists():
        raise XformerError(f"{path}: no such run directory")
    file = path / "config.yaml" if path.is_dir() else path
    if not file.is_file():
        raise XformerError(f"{path}: not a run directory (no config.yaml)")
    return parse_config(load_yaml(file, "run config"), str(file))
