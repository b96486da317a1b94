"""The position-wise feed-forward network of every block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xformer.config import EncoderConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """The sigmoid approximation of GELU used by the original CLIP."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Linear(dim -> mlp_dim), activation, Linear(mlp_dim -> dim); gated (``cfg.glu``, GLU variants of
    Shazeer 2020): the first linear gives 2 * mlp_dim, act(first half) * second half goes on (GeGLU with
    ``act: gelu``, SwiGLU with ``act: silu``)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.glu = cfg.glu
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim * (2 if cfg.glu else 1), bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.act]
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (..., mlp_dim), or (..., 2 * mlp_dim) gated
        if self.glu:
            h, gate = h.chunk(2, dim=-1)  # (..., mlp_dim) each
            return self.fc2(self.act(h) * gate)
        return self.fc2(self.act(h))
