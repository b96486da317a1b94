"""The one transformer block and encoder used by every model (BERT, ViT, both CLIP towers)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from xformer.config import EncoderConfig
from xformer.layers.attention import KERNELS, UNPADDED, Attention, AttnContext, check_backend_name, resolve_backend
from xformer.layers.mlp import MLP
from xformer.layers.padding import pad, segment_positions, unpad
from xformer.layers.rotary import rotary_tables


class Block(nn.Module):
    """Attention + MLP, each with a residual connection, post-LN (BERT) or pre-LN (ViT, CLIP, ModernBERT).

    ``index`` is the block's place in the encoder: with ``cfg.first_block_norm`` False the first pre-LN
    block takes its input as it is (it comes from a normalised embedding), as ModernBERT's does.
    """

    def __init__(self, cfg: EncoderConfig, index: int = 0):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attn = Attention(cfg)
        skip = index == 0 and not cfg.first_block_norm
        self.norm1 = nn.Identity() if skip else nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=cfg.bias)
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
    """A stack of :class:`Block`, with a final LayerNorm when ``cfg.final_norm`` says so (by default for
    pre-LN encoders).

    Positions: with ``cfg.position == "rotary"`` queries and keys are rotated in every block (the
    embeddings then have no position table). Local attention: with ``cfg.local_window`` the blocks that
    are not global (:meth:`EncoderConfig.is_global`) see ``local_window // 2`` positions on either side,
    with their own rotary base. Documents: ``segments`` (B, T) numbers the documents packed in each row;
    a token then attends only within its own document, where rotary positions restart.

    ``cfg.attn_backend`` is only checked here; it is resolved to a kernel once the device and the
    activation dtype are known: by :func:`configure_attention`, or else on the first forward from the
    input's device and (autocast) dtype. ``backend`` is the resolved name, None until then. With an
    unpadded backend the encoder removes padding before the first block and restores it after the last.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        check_backend_name(cfg.attn_backend)
        self.requested_backend, self.attn_dropout = cfg.attn_backend, cfg.attn_dropout
        self.backend: str | None = None
        self.head_dim = cfg.dim // cfg.num_heads
        self.rope_theta = {True: cfg.rope_theta, False: cfg.local_rope_theta or cfg.rope_theta}
        self.rotary = cfg.position == "rotary"
        self.local_window = cfg.local_window
        self.is_global = [cfg.is_global(i) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.checkpointing = False  # recompute each block's activations in the backward pass
        final_norm = cfg.norm_first if cfg.final_norm is None else cfg.final_norm
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=cfg.bias) if final_norm else nn.Identity()

    def configure(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Resolve the requested backend for ``device`` and ``dtype`` activations (raises if impossible)."""
        self.backend = resolve_backend(self.requested_backend, device, dtype, self.attn_dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, causal: bool = False,
                segments: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); attention_mask: (B, T), 1 for real tokens, 0 for padding; segments: (B, T) document
        number of each token, non-decreasing along a row, or None. Returns (B, T, D)."""
        if self.backend is None:
            self.configure(x.device, activation_dtype(x))
        B, T, _ = x.shape
        positions = None if segments is None else segment_positions(segments)  # (B, T)
        if self.backend in UNPADDED:
            x, indices, cu_seqlens, max_seqlen = unpad(x, attention_mask, segments)  # (N, D)
            if self.rotary:  # (N,) each token's position in its sequence
                positions = (torch.arange(T, device=x.device).repeat(B) if positions is None else positions.flatten())[indices]

            def context(is_global: bool) -> AttnContext:
                return AttnContext(KERNELS[self.backend], self._rope(positions, is_global), causal=causal,
                                   cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                                   window=None if is_global else self.local_window // 2)
        else:
            mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            if causal:
                mask = _and(mask, torch.ones(T, T, dtype=torch.bool, device=x.device).tril())  # (B, 1, T, T)
            if segments is not None:
                mask = _and(mask, (segments[:, :, None] == segments[:, None, :])[:, None])  # (B, 1, T, T)
            if self.rotary and positions is None:
                positions = torch.arange(T, device=x.device)  # (T,)

            def context(is_global: bool) -> AttnContext:
                local_mask = mask
                if not is_global:
                    offsets = torch.arange(T, device=x.device)
                    band = (offsets[:, None] - offsets[None, :]).abs() <= self.local_window // 2  # (T, T)
                    local_mask = _and(mask, band)
                return AttnContext(KERNELS[self.backend], self._rope(positions, is_global), mask=local_mask,
                                   causal=causal)

        contexts = {kind: context(kind) for kind in set(self.is_global)}  # built once per forward
        for block, is_global in zip(self.blocks, self.is_global):
            x = self._run(block, x, contexts[is_global])
        x = self.norm(x)
        return pad(x, indices, B, T) if self.backend in UNPADDED else x  # (B, T, D)

    def _rope(self, positions: torch.Tensor | None, is_global: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        return rotary_tables(positions, self.head_dim, self.rope_theta[is_global]) if self.rotary else None

    def _run(self, block: Block, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # the same RNG state in the recomputation: dropout masks, hence gradients, are unchanged
            return checkpoint(block, x, ctx, use_reentrant=False)
        return block(x, ctx)


def _and(mask: torch.Tensor | None, other: torch.Tensor) -> torch.Tensor:
    return other if mask is None else mask & other


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
