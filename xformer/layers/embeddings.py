"""Input embeddings: tokens (word + position + segment) and image patches ([CLS] + patches + position)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TokenEmbeddings(nn.Module):
    """Word + learned absolute position + segment (token type) embeddings.

    Args:
        vocab_size, dim, max_position, type_vocab_size: table sizes (``type_vocab_size=0``: no segments).
        pad_token_id: row of the word table kept at zero gradient (as in BERT).
        dropout: applied to the summed embeddings.
        norm_eps: if not None, a LayerNorm follows the sum (post-LN BERT, ModernBERT); None for no norm.
        absolute: a learned position table; False when positions are rotary (given in attention).
        norm_bias: whether the LayerNorm has a bias.
    """

    def __init__(self, vocab_size: int, dim: int, max_position: int, type_vocab_size: int = 0,
                 pad_token_id: int | None = 0, dropout: float = 0.0, norm_eps: float | None = 1e-12,
                 absolute: bool = True, norm_bias: bool = True):
        super().__init__()
        self.max_position = max_position
        self.word = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position = nn.Embedding(max_position, dim) if absolute else None
        self.token_type = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps, bias=norm_bias) if norm_eps is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.size(1)
        if T > self.max_position:
            raise ValueError(f"sequence length {T} exceeds max_position {self.max_position}")
        x = self.word(input_ids)  # (B, T, D)
        if self.position is not None:
            x = x + self.position.weight[:T]
        if self.token_type is not None:
            if token_type_ids is None:
                x = x + self.token_type.weight[0]
            else:
                x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


def interpolate_pos_embed(pos: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize learned position embeddings to another patch grid, keeping the [CLS] position.

    ``pos`` (1, 1+N, D) holds the [CLS] position then a square grid of N patch positions (row-major);
    the grid is resized by 2-D bicubic interpolation (``align_corners=False``, no antialiasing, as
    HF ``ViTEmbeddings.interpolate_pos_encoding``). Returns (1, 1 + H'*W', D) for ``new_grid`` (H', W').
    """
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]  # (1, 1, D), (1, N, D)
    side = math.isqrt(patch_pos.size(1))
    if side * side != patch_pos.size(1):
        raise ValueError(f"{patch_pos.size(1)} patch positions do not form a square grid")
    if (side, side) == tuple(new_grid):
        return pos
    dim = pos.size(-1)
    grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, side, side)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)  # (1, D, H', W')
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


class PatchEmbeddings(nn.Module):
    """Image -> tokens: non-overlapping patches projected to ``dim``, a learned [CLS] token in front,
    learned absolute positions added, then dropout.

    Positions are learned for the configured ``(image_size / patch_size)^2`` grid; an image with
    another grid gets them interpolated (:func:`interpolate_pos_embed`) unless ``interpolate=False``.

    Args:
        image_size, patch_size: square sizes in pixels; the grid is ``image_size // patch_size`` a side.
        in_channels: image channels.
        dim: token width.
        dropout: applied to the embedded tokens.
        bias: whether the patch projection has a bias (CLIP's has none).
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        if patch_size > image_size:
            raise ValueError(f"patch_size={patch_size} is larger than image_size={image_size}")
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, pixel_values: torch.Tensor, interpolate: bool = True) -> torch.Tensor:
        """pixel_values: (B, C, H, W) -> tokens (B, 1 + (H // p) * (W // p), D), [CLS] first."""
        patches = self.proj(pixel_values)  # (B, D, H/p, W/p)
        grid = tuple(patches.shape[-2:])
        x = patches.flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)  # (B, 1+N, D)
        if grid == self.grid:
            position = self.position
        elif interpolate:
            position = interpolate_pos_embed(self.position, grid)
        else:
            raise ValueError(f"image size {tuple(pixel_values.shape[-2:])} gives a {grid[0]}x{grid[1]} patch grid, "
                             f"not the configured {self.grid[0]}x{self.grid[1]}; allow position interpolation")
        return self.dropout(x + position)
