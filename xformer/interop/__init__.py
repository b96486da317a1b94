"""Interoperability with Hugging Face transformers checkpoints: BERT, ModernBERT, ViT and CLIP.

Each submodule converts one family (``hf_bert``, ``hf_modernbert``, ``hf_vit``, ``hf_clip``); the model
registry (:mod:`xformer.models.registry`) names them per architecture as :class:`HFFormat` entries, and
:func:`hf_function` imports the one needed (with transformers) only when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from xformer.config import Section
from xformer.errors import XformerError
from xformer.models.registry import HFFormat, architecture


def hf_function(fmt: HFFormat, name: str) -> Callable:
    """The function ``name`` of the interop module of ``fmt`` (e.g. its ``load`` or ``config_from_hf``)."""
    return getattr(importlib.import_module(fmt.module), name)


def export_format(cfg: Section) -> HFFormat:
    """The HF format that exports a model of config ``cfg``: the first of its architecture's formats that
    claims it; XformerError when the architecture has none."""
    arch = architecture(getattr(cfg, "arch", None), type(cfg).__name__)
    for fmt in arch.hf:
        if fmt.exports is None or hf_function(fmt, fmt.exports)(cfg):
            return fmt
    raise XformerError(f"model.arch {cfg.arch!r} has no Hugging Face format to export to")
