"""BERT: its configs, the token encoder + pooler, the MLM + NSP pretraining heads, and a sequence
classification head (BERT's, or ModernBERT's for rotary models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from xformer.layers.mlp import ACTIVATIONS
from xformer.models.text import TokenEncoder, TokenEncoderConfig, init_weights


class BertConfig(TokenEncoderConfig):
    """BERT: token embeddings + encoder + pooler, with MLM and NSP heads for pretraining."""

    arch: Literal["bert"] = "bert"
    init: str | None = Field(None, description="hf:<dir or hub id>, a run dir or a checkpoint")
    nsp: bool = Field(True, description="the pooler and next-sentence head; pretraining sets it from data.objective")

    runtime_keys: ClassVar[frozenset[str]] = TokenEncoderConfig.runtime_keys | {"nsp"}


class BertClassifierConfig(BertConfig):
    """BERT with a classification (or regression) head on the pooled sequence (e.g. SST-2 sentiment, STS-B).

    A classic BERT pools with its tanh pooler on [CLS] (HF ``BertForSequenceClassification``); a rotary
    (ModernBERT-family) one with ModernBERT's head: [CLS] or the mean of the real tokens
    (``classifier_pooling``), then dense, activation, LayerNorm (HF ``ModernBertForSequenceClassification``).
    """

    arch: Literal["bert_classifier"] = "bert_classifier"
    num_classes: int | None = Field(None, gt=0, description="None: taken from the data; 1: regression (one score)")
    nsp: Literal[True] = Field(True, description="the classifier reads the pooled [CLS] token (classic BERT)")
    classifier_pooling: Literal["cls", "mean"] = Field(
        "cls", description="rotary (ModernBERT) models: pool the [CLS] token or the mean of the real tokens; "
        "a classic BERT always reads [CLS] through its tanh pooler")

    runtime_keys: ClassVar[frozenset[str]] = BertConfig.runtime_keys | {"num_classes"}


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # (B, T, D)
    pooler_output: torch.Tensor | None  # (B, D); None without a pooler


@dataclass
class BertPreTrainingOutput:
    mlm_logits: torch.Tensor  # (B, T, V), or (M, V) at the M masked positions when labels are given
    nsp_logits: torch.Tensor | None  # (B, 2); class 0 = B follows A, 1 = B is random; None for MLM only
    last_hidden_state: torch.Tensor  # (B, T, D)


class BertModel(TokenEncoder):
    """The BERT encoder: :class:`TokenEncoder`, post-LN (or pre-LN), and the tanh pooler on [CLS] (none when
    ``cfg.nsp`` is False: MLM-only pretraining has no use for it; ``pooler_output`` is then None)."""

    def __init__(self, cfg: BertConfig, pooler: bool | None = None):
        """``pooler``: whether to build the tanh pooler (None: with ``cfg.nsp``)."""
        super().__init__(cfg)
        self.pooler = nn.Linear(cfg.dim, cfg.dim) if (cfg.nsp if pooler is None else pooler) else None
        self.apply(lambda m: init_weights(m, cfg.init_std))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, segments: torch.Tensor | None = None) -> BertOutput:
        """input_ids, attention_mask, token_type_ids: (B, T); segments: (B, T) the document of each token
        when documents packed in a row must not see each other (see :class:`Encoder`)."""
        x = self.encode(input_ids, attention_mask, token_type_ids, segments=segments)  # (B, T, D)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, D)
        return BertOutput(last_hidden_state=x, pooler_output=pooled)


class MLMHead(nn.Module):
    """Transform (dense, activation, LayerNorm) then a decoder tied to the word embeddings, with bias."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.act]
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=cfg.bias)
        self.decoder = nn.Linear(cfg.dim, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))  # (..., D) -> (..., V)


class BertForPreTraining(nn.Module):
    """BERT with masked-LM and next-sentence-prediction heads (MLM only, without pooler, when ``cfg.nsp``
    is False).

    ``forward(..., labels=labels)`` computes MLM logits only where ``labels != -100`` (the sparse head:
    about 15% of the vocabulary projections); without labels it returns logits at every position.
    """

    backbone_prefix = "bert."  # where an init finds the encoder (see xformer.trained.init)
    head_prefixes = ("mlm.", "nsp.", "bert.pooler.")  # what may start fresh when the encoder comes from a checkpoint

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        self.mlm = MLMHead(cfg, self.bert.embeddings.word)
        self.nsp = nn.Linear(cfg.dim, 2) if cfg.nsp else None
        for module in (self.mlm.dense, self.mlm.norm, self.nsp):  # the decoder weight is tied, already set
            if module is not None:
                init_weights(module, cfg.init_std)
        nn.init.zeros_(self.mlm.decoder.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> BertPreTrainingOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, segments)
        hidden = out.last_hidden_state
        if labels is not None:
            hidden = hidden[labels != -100]  # (B, T, D) -> (M, D)
        return BertPreTrainingOutput(
            mlm_logits=self.mlm(hidden), nsp_logits=self.nsp(out.pooler_output) if self.nsp is not None else None,
            last_hidden_state=out.last_hidden_state,
        )


@dataclass
class SequenceClassifierOutput:
    logits: torch.Tensor  # (B, K); K = 1 for regression


def uses_modern_head(cfg: BertConfig) -> bool:
    """Whether a classifier of ``cfg`` has ModernBERT's head (rotary positions) rather than BERT's pooler."""
    return cfg.position == "rotary"


class PredictionHead(nn.Module):
    """ModernBERT's head on the pooled sequence: dense D -> D, activation, LayerNorm (biases per ``cfg.bias``)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.act]
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))  # (B, D) -> (B, D)


def mean_pool(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of the hidden states ``x`` (B, T, D) over the real tokens of ``attention_mask`` (B, T) -> (B, D)."""
    if attention_mask is None:
        return x.mean(dim=1)
    mask = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * mask).sum(dim=1) / mask.sum(dim=1)


class BertForSequenceClassification(nn.Module):
    """A BERT classifier, as HF's: the tanh pooler's output on [CLS], dropout and a linear head (classic
    BERT); or, for rotary models, ModernBERT's: [CLS] or mean pooling (``classifier_pooling``), the
    :class:`PredictionHead` (``transform``), dropout and a linear head. ``num_classes`` = 1 is regression:
    ``logits[:, 0]`` is the predicted score."""

    backbone_prefix = "bert."
    # what may start fresh from a checkpoint without them: an MLM-only checkpoint has no pooler
    head_prefixes = ("head.", "transform.", "bert.pooler.")

    def __init__(self, cfg: BertClassifierConfig):
        super().__init__()
        if cfg.num_classes is None:
            raise ValueError("BertClassifierConfig.num_classes must be set (it is taken from the data)")
        self.config = cfg
        modern = uses_modern_head(cfg)
        self.bert = BertModel(cfg, pooler=not modern)
        self.transform = PredictionHead(cfg) if modern else None
        if self.transform is not None:
            self.transform.apply(lambda m: init_weights(m, cfg.init_std))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        init_weights(self.head, cfg.init_std)

    def pool(self, out: BertOutput, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The sequence summary the linear head reads: (B, T, D) hidden states -> (B, D)."""
        if self.transform is None:
            return out.pooler_output
        x = out.last_hidden_state
        pooled = x[:, 0] if self.config.classifier_pooling == "cls" else mean_pool(x, attention_mask)
        return self.transform(pooled)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """input_ids, attention_mask, token_type_ids (segment 0 for ``[CLS] a [SEP]``, 1 for ``b [SEP]``;
        ignored without segment embeddings): (B, T) -> logits (B, K)."""
        out = self.bert(input_ids, attention_mask, token_type_ids)
        pooled = self.pool(out, attention_mask)  # (B, D)
        return SequenceClassifierOutput(logits=self.head(self.dropout(pooled)))  # (B, K)
