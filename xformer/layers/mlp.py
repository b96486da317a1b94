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
}


class MLP(nn.Module):
    """Linear(dim -> mlp_dim), activation, Linear(mlp_dim -> dim)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.act = ACTIVATIONS[cfg.act]
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
