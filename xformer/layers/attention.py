"""Multi-head self-attention with fused QKV and three interchangeable kernels.

The kernel is chosen once, at construction, by :func:`resolve_backend`:

- ``math``:  explicit softmax(QK^T/sqrt(d))V in plain torch; the reference the others are tested against.
- ``sdpa``:  ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
- ``flash``: flash-attn's varlen kernel on unpadded tokens (no compute spent on padding).

``math`` and ``sdpa`` take padded ``(B, T, D)`` activations with a key-padding mask; ``flash`` takes
the unpadded ``(N, D)`` tokens of the whole batch with ``cu_seqlens`` (see :mod:`xformer.layers.padding`).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from xformer.config import EncoderConfig
from xformer.errors import XformerError


@dataclass
class AttnContext:
    """What a kernel needs besides q/k/v; built once per forward by the encoder.

    Padded layout: ``key_mask`` (B, 1, 1, T) bool, True where a key is a real token (or None).
    Unpadded layout: ``cu_seqlens`` (B+1,) int32 and ``max_seqlen``.
    """

    causal: bool = False
    key_mask: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0


# A kernel maps q, k, v (B, H, T, hd) -- or (N, H, hd) unpadded -- to the same shape.
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttnContext, float], torch.Tensor]


def math_attention(q, k, v, ctx: AttnContext, dropout_p: float) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
    if ctx.key_mask is not None:
        scores = scores.masked_fill(~ctx.key_mask, torch.finfo(scores.dtype).min)
    if ctx.causal:
        T = q.size(-2)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return probs @ v  # (B, H, T, hd)


def sdpa_attention(q, k, v, ctx: AttnContext, dropout_p: float) -> torch.Tensor:
    if ctx.causal and ctx.key_mask is not None:
        T = q.size(-2)
        mask = ctx.key_mask & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=ctx.key_mask, dropout_p=dropout_p, is_causal=ctx.causal
    )


def flash_attention(q, k, v, ctx: AttnContext, dropout_p: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    if q.dtype not in (torch.float16, torch.bfloat16):
        raise XformerError(
            f"attention backend 'flash' needs fp16/bf16 activations, got {q.dtype}: "
            "train with train.precision=bf16 or use model.attn_backend=sdpa"
        )
    return flash_attn_varlen_func(
        q, k, v, ctx.cu_seqlens, ctx.cu_seqlens, ctx.max_seqlen, ctx.max_seqlen,
        dropout_p=dropout_p, causal=ctx.causal,
    )  # (N, H, hd)


KERNELS: dict[str, Kernel] = {"math": math_attention, "sdpa": sdpa_attention, "flash": flash_attention}


def flash_unavailable_reason() -> str | None:
    """Why flash-attn cannot run here, or None when it can."""
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install 'xformer[flash]')"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"flash-attn needs an Ampere or newer GPU (compute capability 8.0+), found {major}.x"
    return None


def resolve_backend(requested: str) -> str:
    """The attention backend to use for ``requested`` (auto/math/sdpa/flash); raises if impossible.

    ``auto`` picks ``flash`` when flash-attn and a suitable GPU are present, else ``sdpa``.
    """
    if requested == "auto":
        return "flash" if flash_unavailable_reason() is None else "sdpa"
    if requested == "flash":
        reason = flash_unavailable_reason()
        if reason is not None:
            raise XformerError(f"attention backend 'flash' cannot run: {reason}; use 'sdpa' or 'auto'")
    if requested not in KERNELS:
        raise XformerError(f"unknown attention backend {requested!r}; choose from auto, {', '.join(KERNELS)}")
    return requested


class Attention(nn.Module):
    """Multi-head self-attention: fused QKV projection, one kernel, output projection.

    Args:
        cfg: encoder config (``dim``, ``num_heads``, ``attn_dropout``, ``qkv_bias``).
        backend: a resolved backend name (see :func:`resolve_backend`).
    """

    def __init__(self, cfg: EncoderConfig, backend: str):
        super().__init__()
        if cfg.dim % cfg.num_heads:
            raise XformerError(f"model.dim={cfg.dim} is not divisible by model.num_heads={cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.dim // cfg.num_heads
        self.attn_dropout = cfg.attn_dropout
        self.unpadded = backend == "flash"
        self.kernel = KERNELS[backend]
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        dropout_p = self.attn_dropout if self.training else 0.0
        qkv = self.qkv(x)
        if self.unpadded:  # x: (N, D) -> q, k, v: (N, H, hd)
            q, k, v = qkv.view(-1, 3, self.num_heads, self.head_dim).unbind(1)
            out = self.kernel(q, k, v, ctx, dropout_p).reshape(x.shape)
        else:  # x: (B, T, D) -> q, k, v: (B, H, T, hd)
            B, T, D = x.shape
            q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            out = self.kernel(q, k, v, ctx, dropout_p).transpose(1, 2).reshape(B, T, D)
        return self.proj(out)
