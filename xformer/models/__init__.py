"""Models: each is embeddings + the shared encoder + a head. ``build_model`` maps a config to one."""

from __future__ import annotations

from torch import nn

from xformer.models.bert import BertForPreTraining, BertForSequenceClassification, BertModel
from xformer.models.clip import CLIPModel, TextTransformer
from xformer.models.cnn import CNN
from xformer.models.vit import (
    ImageClassifierOutput,
    ViTForImageClassification,
    ViTModel,
)


def build_model(cfg) -> nn.Module:
    """The model for a model config (selected by ``cfg.arch``): BERT for pretraining or classification, an image classifier,
    or a CLIP dual encoder."""
    if cfg.arch == "hf_image":
        # imported here: it imports transformers, which the other models do not need
        from xformer.models.hf_image import HFImageClassifier

        return HFImageClassifier(cfg)
    builders = {"bert": BertForPreTraining, "bert_classifier": BertForSequenceClassification,
                "vit": ViTForImageClassification, "cnn": CNN, "clip": CLIPModel}
    if cfg.arch not in builders:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; choose from {', '.join(builders)}, hf_image")
    return builders[cfg.arch](cfg)


__all__ = [
    "CNN",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertModel",
    "CLIPModel",
    "ImageClassifierOutput",
    "TextTransformer",
    "ViTForImageClassification",
    "ViTModel",
    "build_model",
]
