"""Any Hugging Face image classifier (ResNet, ConvNeXt, Swin, ViT, ...) as an xformer model, and its config."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from xformer.config import Section
from xformer.errors import XformerError
from xformer.hub import fetch_from_hub
from xformer.models.vit import ImageClassifierOutput

# Where HF image classifiers keep their classification head, and (under the base model) their
# main stages, first to last: ResNet/ConvNeXt ``encoder.stages``, Swin ``encoder.layers``, ViT/DeiT
# ``layers`` (transformers 5) or ``encoder.layer`` (transformers 4).
_HEAD_NAMES = ("classifier", "head", "fc")
_STAGE_PATHS = ("encoder.stages", "encoder.layers", "encoder.layer", "layers", "stages", "blocks")


class HFImageConfig(Section):
    """Any HF image classifier (e.g. ResNetForImageClassification), loaded from ``init`` with a new head."""

    arch: Literal["hf_image"] = "hf_image"
    init: str = Field(..., description="hf:<dir or hub id>")
    image_size: int = Field(224, gt=0)
    num_classes: int | None = Field(None, gt=0)

    runtime_keys: ClassVar[frozenset[str]] = frozenset({"init", "image_size", "num_classes"})


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            return None
    return module


class HFImageClassifier(nn.Module):
    """``transformers.AutoModelForImageClassification`` from ``cfg.init`` (``hf:<dir or hub id>``) with a
    ``cfg.num_classes``-way head (the checkpoint's when it has that many classes, else a new one).

    The HF model is ``self.hf``; :attr:`head` is its classification head and :meth:`backbone_stages`
    its main stages, so that freezing the backbone, or all but its last N stages, works for any
    architecture. Built in train mode, like every other model.
    """

    def __init__(self, cfg: HFImageConfig):
        import transformers  # here: the rest of xformer.models does not need it

        super().__init__()
        self.config = cfg
        if not cfg.init.startswith("hf:"):
            raise XformerError(f"model.init={cfg.init!r}: an hf_image model needs hf:<dir or hub id>")
        source = cfg.init.removeprefix("hf:")
        folder = Path(source) if Path(source).exists() else fetch_from_hub(source)
        if not (folder / "config.json").is_file():
            raise XformerError(f"{folder}: no config.json; expected an HF image classification directory")
        kwargs = {} if cfg.num_classes is None else {"num_labels": cfg.num_classes, "ignore_mismatched_sizes": True}
        try:
            self.hf = transformers.AutoModelForImageClassification.from_pretrained(folder, **kwargs)
        except ValueError as err:  # e.g. a config whose model type has no image classification head
            raise XformerError(f"{folder}: cannot load as an HF image classifier: {err}") from None
        self.hf.train()
        self.head_name = next((n for n in _HEAD_NAMES if isinstance(getattr(self.hf, n, None), nn.Module)), None)
        if self.head_name is None:
            raise XformerError(f"{type(self.hf).__name__}: no classification head found "
                               f"(looked for {', '.join(_HEAD_NAMES)})")

    @property
    def head(self) -> nn.Module:
        """The classification head (e.g. ``classifier``; for ResNet a Sequential(Flatten, Linear))."""
        return getattr(self.hf, self.head_name)

    def backbone_stages(self) -> list[nn.Module]:
        """The backbone's main stages, first to last (ResNet: ``resnet.encoder.stages``)."""
        base = self.hf.base_model
        for path in _STAGE_PATHS:
            stages = _submodule(base, path)
            if isinstance(stages, (nn.ModuleList, nn.Sequential)) and len(stages):
                return list(stages)
        raise XformerError(f"{type(self.hf).__name__}: backbone stages not found "
                           f"(looked for {', '.join(_STAGE_PATHS)} in {type(base).__name__})")

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
        """pixel_values: (B, C, H, W) -> logits (B, K)."""
        return ImageClassifierOutput(logits=self.hf(pixel_values=pixel_values).logits)
