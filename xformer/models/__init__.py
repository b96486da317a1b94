"""Models: each is embeddings + the shared encoder + a head. ``build_model`` maps a config to one."""

from __future__ import annotations

from torch import nn

from xformer.models.bert import BertForPreTraining, BertModel


def build_model(cfg) -> nn.Module:
    """The pretraining model for a model config (selected by ``cfg.arch``)."""
    builders = {"bert": BertForPreTraining}
    if cfg.arch not in builders:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; choose from {', '.join(builders)}")
    return builders[cfg.arch](cfg)


__all__ = ["BertForPreTraining", "BertModel", "build_model"]
