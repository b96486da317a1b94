"""The one transformer block and encoder used by every model (BERT, ViT, both CLIP towers)."""

from __future__ import annotations

import torch
from torch import nn

from xformer.config import EncoderConfig
from xformer.layers.attention import Attention, AttnContext, resolve_backend
from xformer.layers.mlp import MLP
from xformer.layers.padding import pad, unpad


class Block(nn.Module):
    """Attention + MLP, each with a residual connection, post-LN (BERT) or pre-LN (ViT, CLIP)."""

    def __init__(self, cfg: EncoderConfig, backend: str):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attn = Attention(cfg, backend)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attn(self.norm1(x), ctx))
            return x + self.dropout(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attn(x, ctx)))
        return self.norm2(x + self.dropout(self.mlp(x)))


class Encoder(nn.Module):
    """A stack of :class:`Block`; pre-LN encoders end with a final LayerNorm.

    The attention backend is resolved here, once, for all blocks. With the ``flash`` backend the
    encoder removes padding before the first block and restores it after the last.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.backend = resolve_backend(cfg.attn_backend)
        self.blocks = nn.ModuleList(Block(cfg, self.backend) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """x: (B, T, D); attention_mask: (B, T), 1 for real tokens, 0 for padding. Returns (B, T, D)."""
        if self.backend == "flash":
            B, T, _ = x.shape
            x, indices, cu_seqlens, max_seqlen = unpad(x, attention_mask)  # (N, D)
            ctx = AttnContext(causal=causal, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
            for block in self.blocks:
                x = block(x, ctx)
            return pad(self.norm(x), indices, B, T)
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        ctx = AttnContext(causal=causal, key_mask=key_mask)
        for block in self.blocks:
            x = block(x, ctx)
        return self.norm(x)
