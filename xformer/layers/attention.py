"""Multi-head self-attention with fused QKV, optional rotary positions, and interchangeable kernels.

The kernel is chosen once per model, when the device and the activation dtype are known, by
:func:`resolve_backend` (see :func:`xformer.layers.configure_attention`):

- ``math``:   explicit softmax(QK^T/sqrt(d))V in plain torch; the reference the others are tested against.
- ``sdpa``:   ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
- ``flash``:  flash-attn's varlen kernel on unpadded tokens (no compute spent on padding).
- ``varlen``: ``torch.nn.attention.varlen.varlen_attn``, torch's own kernel on unpadded tokens (CUDA).

``math`` and ``sdpa`` take padded ``(B, T, H, hd)`` heads with a boolean mask; ``flash`` and ``varlen``
take the unpadded ``(N, H, hd)`` heads of the whole batch with ``cu_seqlens`` (see
:mod:`xformer.layers.padding`). A kernel returns its output in the layout it was given.
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
from xformer.layers.rotary import apply_rotary

# A kernel maps q, k, v -- each (B, T, H, hd) padded or (N, H, hd) unpadded -- to an output of that shape.
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "AttnContext", float], torch.Tensor]


@dataclass
class AttnContext:
    """What a kernel needs besides q, k, v; built once per forward by the encoder (one per block kind:
    global, and local when the encoder has sliding-window blocks).

    ``kernel``: the resolved kernel, the same for every block.
    ``rope``: the rotary (cos, sin) tables broadcastable against q and k, or None without rotary positions.
    Padded layout: ``mask`` bool, True where a query may attend to a key, broadcastable to (B, H, T, T)
    (padding, causality, documents and the local window folded in); None when every key is visible.
    Unpadded layout: ``cu_seqlens`` (S+1,) int32 over the S sequences, ``max_seqlen``, ``causal`` and
    ``window``, the number of positions a local block sees on either side (None: global).
    """

    kernel: Kernel
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    mask: torch.Tensor | None = None
    causal: bool = False
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    window: int | None = None


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext,
                   dropout_p: float) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, T, H, hd) -> (B, H, T, hd)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
    if ctx.mask is not None:
        scores = scores.masked_fill(~ctx.mask, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return (probs @ v).transpose(1, 2)  # (B, T, H, hd)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext,
                   dropout_p: float) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, dropout_p=dropout_p).transpose(1, 2)


def _window_size(ctx: AttnContext) -> tuple[int, int]:
    """(left, right) positions visible around each query, -1 for unbounded, as both varlen kernels take it."""
    left = -1 if ctx.window is None else ctx.window
    return left, 0 if ctx.causal else left


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext,
                    dropout_p: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(  # (N, H, hd)
        q, k, v, ctx.cu_seqlens, ctx.cu_seqlens, ctx.max_seqlen, ctx.max_seqlen,
        dropout_p=dropout_p, causal=ctx.causal, window_size=_window_size(ctx),
    )


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext,
                     dropout_p: float) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    # no dropout here: resolve_backend refuses this kernel for a model with attention dropout
    return varlen_attn(q, k, v, ctx.cu_seqlens, ctx.cu_seqlens, ctx.max_seqlen, ctx.max_seqlen,
                       window_size=_window_size(ctx))  # (N, H, hd)


KERNELS: dict[str, Kernel] = {"math": math_attention, "sdpa": sdpa_attention, "flash": flash_attention,
                              "varlen": varlen_attention}
BACKENDS = ("auto", *KERNELS)
UNPADDED = {"flash", "varlen"}  # backends whose kernel takes the unpadded (N, H, hd) layout


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
    return _cuda_reason(device, dtype, "flash-attn")


def _cuda_reason(device: torch.device | str | None, dtype: torch.dtype | None, what: str) -> str | None:
    """Why a CUDA-only fp16/bf16 kernel (``what``) cannot run on ``device`` with ``dtype``, or None."""
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda":
        return f"the model runs on {device.type}, and {what} needs a CUDA GPU (train.device=cuda)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible here"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"{what} needs an Ampere or newer GPU (compute capability 8.0+), found {major}.{minor}"
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        return f"{what} needs fp16/bf16 activations, got {dtype}: set train.precision=bf16"
    return None


def varlen_unavailable_reason(device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                              attn_dropout: float = 0.0) -> str | None:
    """Why torch's ``varlen_attn`` cannot run on ``device`` with ``dtype`` activations and ``attn_dropout``,
    or None when it can (``device=None``: this machine's default CUDA GPU; ``dtype=None``: unchecked)."""
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return f"this torch ({torch.__version__}) has no torch.nn.attention.varlen (it came in torch 2.9)"
    if attn_dropout > 0:
        return f"varlen_attn has no attention dropout, and model.attn_dropout={attn_dropout}"
    return _cuda_reason(device, dtype, "varlen_attn")


def resolve_backend(requested: str, device: torch.device | str, dtype: torch.dtype, attn_dropout: float = 0.0) -> str:
    """The backend that runs ``requested`` on ``device`` with ``dtype`` activations and ``attn_dropout``.

    ``auto`` picks an unpadded kernel where one can run -- ``flash`` when flash-attn is installed, else
    torch's ``varlen`` (which has no attention dropout) -- and ``sdpa`` otherwise. An explicit ``flash``
    or ``varlen`` that cannot run raises XformerError naming the blocker; ``math`` and ``sdpa`` always run.
    """
    check_backend_name(requested)
    reasons = {"flash": lambda: flash_unavailable_reason(device, dtype),
               "varlen": lambda: varlen_unavailable_reason(device, dtype, attn_dropout)}
    if requested == "auto":
        return next((name for name, reason in reasons.items() if reason() is None), "sdpa")
    if requested in reasons and (reason := reasons[requested]()) is not None:
        raise XformerError(f"attention backend {requested!r} cannot run: {reason} (model.attn_backend=sdpa runs anywhere)")
    return requested


class Attention(nn.Module):
    """Multi-head self-attention: fused QKV projection, rotary positions when the context has them, the
    context's kernel, output projection.

    Args:
        cfg: encoder config (``dim``, ``num_heads``, ``attn_dropout``, ``qkv_bias``, ``bias``).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.dim % cfg.num_heads:
            raise XformerError(f"model.dim={cfg.dim} is not divisible by model.num_heads={cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.attn_dropout = cfg.attn_dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias and cfg.bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """x: (B, T, D) padded or (N, D) unpadded, as the context's kernel expects; returns the same shape."""
        dropout_p = self.attn_dropout if self.training else 0.0
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).unbind(-3)  # each (B, T, H, hd) or (N, H, hd)
        if ctx.rope is not None:
            q, k = apply_rotary(q, k, *ctx.rope)
        return self.proj(ctx.kernel(q, k, v, ctx, dropout_p).flatten(-2))  # (..., H, hd) -> (..., D)
