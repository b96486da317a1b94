"""A trained run opened for work: the one place that reads a run's config, picks the device, loads the
model and finds the tokenizer and class names saved with it.

Every task's ``evaluate`` (``xformer eval``, and ``xformer zeroshot`` / ``retrieval`` through the
contrastive task's) and ``export`` start with :func:`load_run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xformer.config import RunConfig
from xformer.distributed import pick_device
from xformer.errors import XformerError
from xformer.trained.loading import load, load_tokenizer
from xformer.tasks.registry import read_run_config


@dataclass
class TrainedRun:
    """A run (or one of its checkpoints) with its model loaded.

    Args:
        path: the run or checkpoint directory given.
        root: the run directory (a checkpoint's is two levels up), where the tokenizer and class names are.
        cfg: the resolved run config, read with its task's config class.
        device: where ``model`` is.
        model: the latest (or the given) checkpoint's model, in eval mode.
        tokenizer: the run's tokenizer (``RUN/tokenizer``), None for a run without text.
        class_names: the classes the run trained on (``RUN/classes.json``), None for a run without classes.
    """

    path: Path
    root: Path
    cfg: RunConfig
    device: torch.device
    model: nn.Module
    tokenizer: Any = None
    class_names: list[str] | None = None

    @property
    def tokenizer_dir(self) -> str:
        """The run's tokenizer directory (XformerError when the run has none)."""
        if self.tokenizer is None:
            raise XformerError(f"{self.path}: no tokenizer found (looked for {self.root / 'tokenizer'})")
        return str(self.root / "tokenizer")


def run_root(path: str | Path) -> Path:
    """The run directory of a run or checkpoint directory (``RUN/checkpoints/step_N`` -> ``RUN``)."""
    path = Path(path)
    is_checkpoint = path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file()
    return path.parent.parent if is_checkpoint else path


def load_run(path: str | Path, task: str | None = None, device: str = "auto") -> TrainedRun:
    """Open the run or checkpoint at ``path``: its model on ``device`` (``auto``: the GPU if any, else the
    CPU), config, tokenizer and class names. With ``task``, XformerError unless the run is of that task."""
    path = Path(path)
    model = load(path)  # first: its errors name what the path is and what was expected
    cfg = read_run_config(path)
    if task is not None and cfg.task != task:
        raise XformerError(f"{path}: a {cfg.task} run ({type(model).__name__}), not a {task} run")
    root = run_root(path)
    tokenizer = load_tokenizer(root) if (root / "tokenizer").is_dir() else None
    classes = root / "classes.json"
    class_names = json.loads(classes.read_text()) if classes.is_file() else None
    target = pick_device(device)
    return TrainedRun(path, root, cfg, target, model.to(target), tokenizer, class_names)
