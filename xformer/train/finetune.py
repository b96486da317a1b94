"""Fine-tuning an image classifier: what to freeze, and layer-wise learning-rate decay."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field
from torch import nn

from xformer.config import Section
from xformer.errors import XformerError


class FinetuneConfig(Section):
    """What to train when starting from a checkpoint."""

    freeze: Literal["none", "backbone", "all_but_last"] = "none"
    unfreeze_last: int = Field(0, ge=0, description="with freeze=all_but_last: blocks left trainable")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise LR decay factor")
    head_lr_scale: float = Field(1.0, gt=0)


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's depth for layer-wise LR decay and freezing: 0 for the input embeddings, i + 1 for
    block i (or backbone stage i), ``L + 1`` for what follows (final norm, pooler, head); returns (ids, L).

    A transformer is read through its backbone (``backbone_prefix``: ``vit.``, ``bert.``) and the blocks of
    its encoder (``encoder.blocks.{i}``), so ViT, MAE and BERT models are numbered alike: what the backbone
    holds outside its encoder and heads (embeddings, ViT's ``norm_pre``) is 0.
    """
    names = [n for n, _ in model.named_parameters()]
    prefix = getattr(type(model), "backbone_prefix", "")
    blocks = f"{prefix}encoder.blocks"
    backbone = model.get_submodule(prefix.rstrip(".")) if prefix else model
    if isinstance(getattr(backbone, "encoder", None), nn.Module):
        depth = len(model.get_submodule(blocks))
        after = (f"{prefix}encoder.", *head_prefixes(model))  # the final norm, a pooler: with the head
        ids = {}
        for n in names:
            if block := re.match(re.escape(blocks) + r"\.(\d+)\.", n):
                ids[n] = int(block[1]) + 1
            elif n.startswith(prefix) and not n.startswith(after):
                ids[n] = 0
            else:
                ids[n] = depth + 1
        return ids, depth
    if hasattr(model, "backbone_stages"):  # the CNN, an HF image classifier: stages of the backbone
        stages = model.backbone_stages()
        by_param = {id(p): i + 1 for i, stage in enumerate(stages) for p in stage.parameters()}
        head = {id(p) for p in head_parameters(model)}
        params = dict(model.named_parameters())
        ids = {n: len(stages) + 1 if id(params[n]) in head else by_param.get(id(params[n]), 0) for n in names}
        return ids, len(stages)
    raise XformerError(f"finetune.freeze=all_but_last and finetune.layer_decay need a model made of blocks "
                       f"or stages, not {type(model).__name__}")


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Where the model keeps its head (``head_prefixes``: ``head.``, and ViT's ``head_norm.``)."""
    return tuple(getattr(model, "head_prefixes", ()))


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classification head's parameters: those under the model's ``head_prefixes`` (a ViT's head norm
    and linear head), else its ``head`` module's (every image model has one)."""
    if prefixes := head_prefixes(model):
        return [p for n, p in model.named_parameters() if n.startswith(prefixes)]
    return list(model.head.parameters())


def finetune_param_groups(model: nn.Module, cfg: FinetuneConfig, weight_decay: float) -> list[dict]:
    """Freeze what ``cfg.freeze`` says; split the rest by layer (LR scale) and by decay / no decay."""
    head = {id(p) for p in head_parameters(model)}
    ids, depth = layer_ids(model) if (cfg.freeze == "all_but_last" or cfg.layer_decay) else ({}, 0)
    for name, p in model.named_parameters():
        if cfg.freeze == "backbone":
            p.requires_grad_(id(p) in head)
        elif cfg.freeze == "all_but_last":
            p.requires_grad_(ids[name] > depth - cfg.unfreeze_last)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = cfg.layer_decay ** (depth + 1 - ids[name]) if cfg.layer_decay else 1.0
        if id(p) in head:
            scale *= cfg.head_lr_scale
        # no decay on biases, norms, and ViT's [CLS] token and position embeddings (as timm)
        decay = weight_decay if p.ndim >= 2 and not name.endswith(("cls_token", "embeddings.position")) else 0.0
        group = groups.setdefault((scale, decay), {"params": [], "weight_decay": decay, "lr_scale": scale})
        group["params"].append(p)
    if not groups:
        raise XformerError("finetune settings leave no trainable parameters")
    return list(groups.values())
