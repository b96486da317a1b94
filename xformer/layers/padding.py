"""Remove and restore padding, so varlen kernels spend no compute on pad tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unpad(x: torch.Tensor, attention_mask: torch.Tensor | None):
    """(B, T, D) padded activations -> (N, D) real tokens, with what is needed to undo it.

    Returns ``(tokens, indices, cu_seqlens, max_seqlen)``: ``indices`` (N,) are the flat positions of
    real tokens, ``cu_seqlens`` (B+1,) int32 the cumulative sequence lengths.
    """
    B, T, D = x.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
    seqlens = attention_mask.sum(dim=1, dtype=torch.int32)  # (B,)
    indices = attention_mask.flatten().nonzero().flatten()  # (N,)
    cu_seqlens = F.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))  # (B+1,)
    max_seqlen = int(seqlens.max())  # one host sync per forward, not per layer
    return x.reshape(B * T, D).index_select(0, indices), indices, cu_seqlens, max_seqlen


def pad(tokens: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """(N, D) real tokens -> (B, T, D), zeros at padding; inverse of :func:`unpad`."""
    out = tokens.new_zeros(batch * seqlen, tokens.size(-1))
    return out.index_put((indices,), tokens).view(batch, seqlen, -1)
