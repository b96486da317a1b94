"""The optimizer of a run: what to train with which weight decay, and the optimizer over it."""

from __future__ import annotations

import torch

from xformer.config import TrainConfig


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


def optimizer_for(model: torch.nn.Module, task, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer over the task's ``param_groups(model)`` where it has them, else :func:`param_groups`."""
    groups = task.param_groups(model) if hasattr(task, "param_groups") else param_groups(model, cfg.weight_decay)
    return build_optimizer(groups, cfg, device)
