"""Models: each is embeddings + the shared encoder + a head, with its config. The registry
(:mod:`xformer.models.registry`) lists them; ``build_model`` maps a config to its model."""

from __future__ import annotations

from xformer.models.bert import BertForPreTraining, BertForSequenceClassification, BertModel
from xformer.models.clip import CLIPModel, TextTransformer
from xformer.models.cnn import CNN
from xformer.models.registry import build_model
from xformer.models.vit import ImageClassifierOutput, ViTForImageClassification, ViTModel

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
