"""Multi-head self-attention with fused QKV and three interchangeable kernels.

The kernel is chosen once per model, when the device and the activation dtype are known, by
:func:`resolve_backend` (see :func:`xformer.layers.configure_attention`):

- ``math``:  explicit softmax(QK^T/sqrt(d))V in plain torch; the reference the others are tested against.
- ``sdpa``:  ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
- ``flash``: flash-attn's varlen kernel on unpadded tokens (no compute spent on padding).

``math`` and ``sdpa`` take padded ``(B, T, 3D)`` projections with a boolean mask; ``flash`` takes
the unpadded ``(N, 3D)`` projections of the whole batch with ``cu_seqlens`` (see :mod:`xformer.layers.padding`).
Each kernel splits and merges heads in its own layout, so :class:`Attention` never asks which one it has.
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

# A kernel maps the fused projection qkv -- (B, T, 3D) padded or (N, 3D) unpadded -- to (B, T, D) or (N, D).
Kernel = Callable[[torch.Tensor, "AttnContext", int, float], torch.Tensor]


@dataclass
class AttnContext:
    """What a kernel needs besides qkv; built once per forward by the encoder.

    ``kernel``: the resolved kernel, the same for every block.
    Padded layout: ``mask`` bool, True where a query may attend to a key, broadcastable to (B, H, T, T):
    (B, 1, 1, T) padding only, (T, T) causal only, (B, 1, T, T) both; None when every key is visible.
    Unpadded layout: ``cu_seqlens`` (B+1,) int32, ``max_seqlen`` and ``causal``.
    """

    kernel: Kernel
    mask: torch.Tensor | None = None
    causal: bool = False
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0


def _split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, 3D) -> q, k, v each (B, H, T, hd)."""
    B, T, _ = qkv.shape
    return qkv.view(B, T, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(B, H, T, hd) -> (B, T, D)."""
    B, H, T, hd = out.shape
    return out.transpose(1, 2).reshape(B, T, H * hd)


def math_attention(qkv: torch.Tensor, ctx: AttnContext, num_heads: int, dropout_p: float) -> torch.Tensor:
    q, k, v = _split_heads(qkv, num_heads)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
    if ctx.mask is not None:
        scores = scores.masked_fill(~ctx.mask, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return _merge_heads(probs @ v)


def sdpa_attention(qkv: torch.Tensor, ctx: AttnContext, num_heads: int, dropout_p: float) -> torch.Tensor:
    q, k, v = _split_heads(qkv, num_heads)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, dropout_p=dropout_p))


def flash_attention(qkv: torch.Tensor, ctx: AttnContext, num_heads: int, dropout_p: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    N, D3 = qkv.shape
    q, k, v = qkv.view(N, 3, num_heads, -1).unbind(1)  # (N, H, hd) each
    out = flash_attn_varlen_func(
        q, k, v, ctx.cu_seqlens, ctx.cu_seqlens, ctx.max_seqlen, ctx.max_seqlen,
        dropout_p=dropout_p, causal=ctx.causal,
    )  # (N, H, hd)
    return out.reshape(N, D3 // 3)


KERNELS: dict[str, Kernel] = {"math": math_attention, "sdpa": sdpa_attention, "flash": flash_attention}
BACKENDS = ("auto", *KERNELS)
UNPADDED = {"flash"}  # backends whose kernel takes the unpadded (N, 3D) layout


def check_backend_name(name: str) -> None:
    """Raise XformerError unless ``name`` is a known backend (resolution happens later, on a device)."""
    if name not in BACKENDS:
        raise XformerError(f"unknown attention backend model.attn_backend={name!r}; choose from {', '.join(BACKENDS)}")


def flash_unavailable_reason(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> str | None:
    """Why flash-attn cannot run on ``device`` with ``dtype`` activations, or None when it can.

    ``device=None`` asks about this machine's default CUDA GPU; ``dtype=None`` leaves the dtype unchecked.
    """
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install 'xformer[flash]')"
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda":
        return f"the model runs on {device.type}, and flash-attn needs a CUDA GPU (train.device=cuda)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible here"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"flash-attn needs an Ampere or newer GPU (compute capability 8.0+), found {major}.{minor}"
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs fp16/bf16 activations, got {dtype}: set train.precision=bf16"
    return None


def resolve_backend(requested: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The backend that runs ``requested`` (auto/math/sdpa/flash) on ``device`` with ``dtype`` activations.

    ``auto`` picks ``flash`` when flash-attn is installed, the device is a CUDA GPU of compute capability
    8.0+ and activations are fp16/bf16; else ``sdpa``. An explicit ``flash`` that cannot run raises
    XformerError naming the blocker; ``math`` and ``sdpa`` always run.
    """
    check_backend_name(requested)
    if requested == "auto":
        return "flash" if flash_unavailable_reason(device, dtype) is None else "sdpa"
    if requested == "flash" and (reason := flash_unavailable_reason(device, dtype)) is not None:
        raise XformerError(f"attention backend 'flash' cannot run: {reason} (model.attn_backend=sdpa runs anywhere)")
    return requested


class Attention(nn.Module):
    """Multi-head self-attention: fused QKV projection, the context's kernel, output projection.

    Args:
        cfg: encoder config (``dim``, ``num_heads``, ``attn_dropout``, ``qkv_bias``).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.dim % cfg.num_heads:
            raise XformerError(f"model.dim={cfg.dim} is not divisible by model.num_heads={cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.attn_dropout = cfg.attn_dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """x: (B, T, D) padded or (N, D) unpadded, as the context's kernel expects; returns the same shape."""
        dropout_p = self.attn_dropout if self.training else 0.0
        return self.proj(ctx.kernel(self.qkv(x), ctx, self.num_heads, dropout_p))
