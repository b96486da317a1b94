"""The one transformer block and encoder used by every model (BERT, ViT, both CLIP towers)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from xformer.config import EncoderConfig
from xformer.layers.attention import KERNELS, UNPADDED, Attention, AttnContext, check_backend_name, resolve_backend
from xformer.layers.mlp import MLP
from xformer.layers.padding import pad, unpad


class Block(nn.Module):
    """Attention + MLP, each with a residual connection, post-LN (BERT) or pre-LN (ViT, CLIP)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attn = Attention(cfg)
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


def activation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention will see for input ``x``: autocast's when it is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class Encoder(nn.Module):
    """A stack of :class:`Block`; pre-LN encoders end with a final LayerNorm.

    ``cfg.attn_backend`` is only checked here; it is resolved to a kernel once the device and the
    activation dtype are known: by :func:`configure_attention`, or else on the first forward from the
    input's device and (autocast) dtype. ``backend`` is the resolved name, None until then. With the
    ``flash`` backend the encoder removes padding before the first block and restores it after the last.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        check_backend_name(cfg.attn_backend)
        self.requested_backend = cfg.attn_backend
        self.backend: str | None = None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.checkpointing = False  # recompute each block's activations in the backward pass
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()

    def configure(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Resolve the requested backend for ``device`` and ``dtype`` activations (raises if impossible)."""
        self.backend = resolve_backend(self.requested_backend, device, dtype)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """x: (B, T, D); attention_mask: (B, T), 1 for real tokens, 0 for padding. Returns (B, T, D)."""
        if self.backend is None:
            self.configure(x.device, activation_dtype(x))
        kernel = KERNELS[self.backend]
        B, T, _ = x.shape
        if self.backend in UNPADDED:
            x, indices, cu_seqlens, max_seqlen = unpad(x, attention_mask)  # (N, D)
            ctx = AttnContext(kernel, causal=causal, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
            for block in self.blocks:
                x = self._run(block, x, ctx)
            return pad(self.norm(x), indices, B, T)  # (B, T, D)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        if causal:
            tril = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
            mask = tril if mask is None else mask & tril  # (B, 1, T, T)
        ctx = AttnContext(kernel, mask=mask, causal=causal)
        for block in self.blocks:
            x = self._run(block, x, ctx)
        return self.norm(x)

    def _run(self, block: Block, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # the same RNG state in the recomputation: dropout masks, hence gradients, are unchanged
            return checkpoint(block, x, ctx, use_reentrant=False)
        return block(x, ctx)


def configure_attention(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> None:
    """Resolve the attention backend of every :class:`Encoder` in ``model`` (CLIP has two) for
    ``device`` and ``dtype`` activations (bf16 when training under bf16 autocast, else fp32).

    Raises XformerError naming the blocker when a requested backend cannot run there. Models without
    an encoder (the CNN) are left as they are.
    """
    for module in model.modules():
        if isinstance(module, Encoder):
            module.configure(device, dtype)


def blocks_of(model: nn.Module) -> list[Block]:
    """Every transformer :class:`Block` in ``model`` (both CLIP towers); [] for models without (the CNN)."""
    return [m for m in model.modules() if isinstance(m, Block)]


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (every Encoder)."""
    for module in model.modules():
        if isinstance(module, Encoder):
            module.checkpointing = enabled
