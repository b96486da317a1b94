"""Remove and restore padding, so varlen kernels spend no compute on pad tokens; documents packed in a row."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unpad(x: torch.Tensor, attention_mask: torch.Tensor | None, segments: torch.Tensor | None = None):
    """(B, T, D) padded activations -> (N, D) real tokens, with what is needed to undo it.

    Each row is one sequence, or with ``segments`` (B, T) each document packed in a row is one.
    Returns ``(tokens, indices, cu_seqlens, max_seqlen)``: ``indices`` (N,) are the flat positions of
    real tokens, ``cu_seqlens`` (S+1,) int32 the cumulative lengths of the S sequences.
    """
    B, T, D = x.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
    indices = attention_mask.flatten().nonzero().flatten()  # (N,)
    if segments is None:
        seqlens = attention_mask.sum(dim=1, dtype=torch.int32)  # (B,)
    else:  # one sequence per (row, document): ids non-decreasing along the flat real tokens
        ids = (torch.arange(B, device=x.device)[:, None] * (int(segments.max()) + 1) + segments).flatten()[indices]
        seqlens = torch.unique_consecutive(ids, return_counts=True)[1].int()  # (S,)
    cu_seqlens = F.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))  # (S+1,)
    max_seqlen = int(seqlens.max())  # one host sync per forward, not per layer
    return x.reshape(B * T, D).index_select(0, indices), indices, cu_seqlens, max_seqlen


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) document numbers, non-decreasing along each row -> (B, T) each token's position in its document."""
    B, T = segments.shape
    index = torch.arange(T, device=segments.device).expand(B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return index - torch.where(starts, index, 0).cummax(dim=1).values


def pad(tokens: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """(N, D) real tokens -> (B, T, D), zeros at padding; inverse of :func:`unpad`."""
    out = tokens.new_zeros(batch * seqlen, tokens.size(-1))
    return out.index_put((indices,), tokens).view(batch, seqlen, -1)
