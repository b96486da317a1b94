"""Rotary position embeddings (RoFormer, Su et al. 2021): queries and keys are rotated by an angle that
grows with the token's position, so attention scores depend on relative positions only.

The rotation pairs channel ``i`` with channel ``i + hd/2`` of each head (the "rotate half" layout of
GPT-NeoX, Llama and ModernBERT), and is computed in float32 whatever the activation dtype.
"""

from __future__ import annotations

import torch


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles: positions (...,) int -> two (..., 1, head_dim) float32 tables
    (the 1 broadcasts over heads)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions[..., None].float() * inv_freq  # (..., hd/2)
    angles = torch.cat([angles, angles], dim=-1)[..., None, :]  # (..., 1, hd)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k, each (..., H, hd) -- (B, T, H, hd) padded or (N, H, hd) unpadded -- by tables that
    broadcast against them; returns them in their own dtype."""
    def rotate(x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)

    return rotate(q), rotate(k)
