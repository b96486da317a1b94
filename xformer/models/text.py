"""The token encoder that BERT and the CLIP text tower share: its config and its embeddings + encoder."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from xformer.config import EncoderConfig
from xformer.layers.block import Encoder
from xformer.layers.embeddings import TokenEmbeddings


class TokenEncoderConfig(EncoderConfig):
    """The shared encoder over tokens: word (+ position, + segment) embeddings, then the encoder blocks.

    ``init`` starts it from a BERT (``hf:<dir or hub id>``, a run dir or a checkpoint); the architecture
    then comes from there (see :mod:`xformer.trained.init`).
    """

    vocab_size: int | None = Field(None, gt=0, description="None: taken from the tokenizer")
    max_position: int = Field(512, gt=0, description="the longest sequence (the position table's size if absolute)")
    type_vocab_size: int = Field(2, ge=0, description="0: no segment embeddings")
    embed_norm: bool | None = Field(None, description="a LayerNorm on the embeddings; None: with post-LN only")
    pad_token_id: int = 0
    init_std: float = 0.02
    init: str | None = Field(None, description="a BERT: hf:<dir or hub id>, a run dir or a checkpoint")

    runtime_keys: ClassVar[frozenset[str]] = EncoderConfig.runtime_keys | {"init"}
    # the architecture whose checkpoints ``init`` may name (see :mod:`xformer.models.registry`)
    starts_from: ClassVar[str] = "bert"


def init_weights(module: nn.Module, std: float) -> None:
    """BERT initialisation: N(0, std) for linear and embedding weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class TokenEncoder(nn.Module):
    """:class:`TokenEmbeddings` (``embeddings``) and the shared :class:`Encoder` (``encoder``).

    Subclasses add their pooling and call :func:`init_weights` over the whole module once it is built
    (BERT's pooler included), so that parameters draw from the random stream in construction order.
    """

    def __init__(self, cfg: TokenEncoderConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError(f"{type(cfg).__name__}.vocab_size must be set (it is taken from the tokenizer)")
        self.config = cfg
        embed_norm = not cfg.norm_first if cfg.embed_norm is None else cfg.embed_norm
        self.embeddings = TokenEmbeddings(
            cfg.vocab_size, cfg.dim, cfg.max_position, cfg.type_vocab_size, cfg.pad_token_id,
            dropout=cfg.dropout, norm_eps=cfg.norm_eps if embed_norm else None,
            absolute=cfg.position == "absolute", norm_bias=cfg.bias,
        )
        self.encoder = Encoder(cfg)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, causal: bool = False,
               segments: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, attention_mask, token_type_ids: (B, T) -> hidden states (B, T, D); ``segments`` (B, T)
        keeps documents packed in a row apart (see :class:`Encoder`)."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        return self.encoder(x, attention_mask, causal=causal, segments=segments)
