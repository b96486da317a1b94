"""Input embeddings: tokens (word + position + segment)."""

from __future__ import annotations

import torch
from torch import nn


class TokenEmbeddings(nn.Module):
    """Word + learned absolute position + segment (token type) embeddings.

    Args:
        vocab_size, dim, max_position, type_vocab_size: table sizes.
        pad_token_id: row of the word table kept at zero gradient (as in BERT).
        dropout: applied to the summed embeddings.
        norm_eps: if not None, a LayerNorm follows the sum (post-LN BERT); None for pre-LN models.
    """

    def __init__(self, vocab_size: int, dim: int, max_position: int, type_vocab_size: int = 0,
                 pad_token_id: int | None = 0, dropout: float = 0.0, norm_eps: float | None = 1e-12):
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position = nn.Embedding(max_position, dim)
        self.token_type = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm_eps is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.size(1)
        if T > self.position.num_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position {self.position.num_embeddings}")
        x = self.word(input_ids) + self.position.weight[:T]  # (B, T, D)
        if self.token_type is not None:
            if token_type_ids is None:
                x = x + self.token_type.weight[0]
            else:
                x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))
