"""Masked autoencoder (MAE, He et al. 2022): a ViT encoder over the visible patches, a light decoder that
reconstructs the pixels of the hidden ones. Its config, the fixed 2-D sin-cos positions, masking and the model.

The encoder is a :class:`ViTModel` under ``vit.`` (the backbone a ViT classifier starts from); the decoder is
the shared :class:`Encoder` of :class:`Block` at its own width, depth and heads. Everything follows HF
``ViTMAEForPreTraining`` (masking from ``noise``, positions, loss), which the tests use as the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from xformer.config import EncoderConfig
from xformer.layers.block import Encoder
from xformer.models.vit import ViTConfig, ViTModel, init_weights


class ViTMAEConfig(ViTConfig):
    """A ViT encoder (the :class:`ViTConfig` keys) plus MAE's masking, decoder and loss."""

    arch: Literal["vit_mae"] = "vit_mae"
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="fraction of the patches hidden from the encoder")
    decoder_dim: int = Field(512, gt=0)
    decoder_depth: int = Field(8, gt=0)
    decoder_num_heads: int = Field(16, gt=0)
    decoder_mlp_ratio: float = Field(4.0, gt=0)
    norm_pix_loss: bool = Field(False, description="reconstruct each patch's pixels normalised to mean 0, var 1")

    runtime_keys: ClassVar[frozenset[str]] = ViTConfig.runtime_keys | {"mask_ratio", "norm_pix_loss"}
    starts_from: ClassVar[str] = "vit_mae"
    has_head: ClassVar[bool] = False

    @model_validator(mode="after")
    def _mae_shapes(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size={self.image_size} is not divisible by "
                             f"model.patch_size={self.patch_size}")
        if self.decoder_dim > self.dim:  # the decoder is the light half of an MAE
            raise ValueError(f"model.decoder_dim={self.decoder_dim} is wider than the encoder (model.dim={self.dim})")
        for key in ("dim", "decoder_dim"):  # sin-cos positions: sin and cos of rows and of columns
            if getattr(self, key) % 4:
                raise ValueError(f"model.{key}={getattr(self, key)} is not divisible by 4 (2-D sin-cos positions)")
        if self.decoder_dim % self.decoder_num_heads:
            raise ValueError(f"model.decoder_dim={self.decoder_dim} is not divisible by "
                             f"model.decoder_num_heads={self.decoder_num_heads}")
        if self.num_kept < 1:
            raise ValueError(f"model.mask_ratio={self.mask_ratio:g} hides all {self.num_patches} patches")
        return self

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_kept(self) -> int:
        """Patches the encoder sees per image (HF: ``int(N * (1 - mask_ratio))``)."""
        return int(self.num_patches * (1 - self.mask_ratio))

    def encoder_config(self) -> ViTConfig:
        """The ViT config of the encoder alone (what a classifier started from this MAE has)."""
        return ViTConfig(**{k: getattr(self, k) for k in ViTConfig.model_fields if k != "arch"})

    def decoder_config(self) -> EncoderConfig:
        """The decoder's blocks: pre-LN with a final norm, the encoder's activation and eps at its own size."""
        return EncoderConfig(dim=self.decoder_dim, depth=self.decoder_depth, num_heads=self.decoder_num_heads,
                             mlp_ratio=self.decoder_mlp_ratio, dropout=self.dropout, attn_dropout=self.attn_dropout,
                             norm_first=True, norm_eps=self.norm_eps, qkv_bias=self.qkv_bias, act=self.act,
                             attn_backend=self.attn_backend)


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (1, 1 + grid^2, dim), a zero row for [CLS] first, as HF ViTMAE's.

    Row-major patches; each vector is ``[sin_w | cos_w | sin_h | cos_h]`` (the original MAE code swapped
    h and w, and its checkpoints rely on it). Frequencies in float64, as HF, so they match to the bit.
    """
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    h, w = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                          indexing="ij")
    emb_h, emb_w = h.flatten().outer(omega), w.flatten().outer(omega)  # (N, D/4) each
    table = torch.cat([emb_w.sin(), emb_w.cos(), emb_h.sin(), emb_h.cos()], dim=1)  # (N, D)
    return torch.cat([table.new_zeros(1, dim), table]).float().unsqueeze(0)  # (1, 1+N, D)


def random_masking(x: torch.Tensor, noise: torch.Tensor, num_kept: int):
    """Keep, per image, the ``num_kept`` patches of lowest ``noise`` (HF's argsort masking).

    x: (B, N, D); noise: (B, N). Returns the kept tokens (B, num_kept, D) in ascending-noise order, the mask
    (B, N; 1 = hidden, 0 = kept, in patch order) and ids_restore (B, N), which puts shuffled tokens back.
    """
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, N)
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N)
    ids_keep = ids_shuffle[:, :num_kept]  # (B, K)
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.size(-1)))  # (B, K, D)
    mask = torch.ones_like(noise, dtype=x.dtype)
    mask[:, :num_kept] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C): each patch's pixels, row-major patches, (row, column, channel) inside."""
    B, C, H, W = pixel_values.shape
    x = pixel_values.reshape(B, C, H // patch_size, patch_size, W // patch_size, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch_size) * (W // patch_size), patch_size ** 2 * C)


@dataclass
class MAEOutput:
    loss: torch.Tensor  # (): mean squared error over the hidden patches
    logits: torch.Tensor  # (B, N, p*p*C): every patch's predicted pixels
    mask: torch.Tensor  # (B, N): 1 where the patch was hidden
    ids_restore: torch.Tensor  # (B, N)
    last_hidden_state: torch.Tensor  # (B, 1+K, D): the encoder's output, [CLS] first


class MAEDecoder(nn.Module):
    """Latent -> pixels: a projection to the decoder width, mask tokens put where patches were hidden,
    fixed sin-cos positions, the shared encoder of blocks (with its final norm), a per-patch pixel head."""

    def __init__(self, cfg: ViTMAEConfig):
        super().__init__()
        self.embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        # fixed, not learned (requires_grad False), but saved with the weights, as HF's
        self.position = nn.Parameter(sincos_positions(cfg.image_size // cfg.patch_size, cfg.decoder_dim),
                                     requires_grad=False)
        self.encoder = Encoder(cfg.decoder_config())
        self.pred = nn.Linear(cfg.decoder_dim, cfg.patch_size ** 2 * cfg.in_channels)
        self.apply(lambda m: init_weights(m, cfg.init_std))
        nn.init.normal_(self.mask_token, std=cfg.init_std)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: (B, 1+K, D) with [CLS] first; ids_restore: (B, N). Returns (B, N, p*p*C)."""
        x = self.embed(latent)  # (B, 1+K, Dd)
        B, N = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(B, N - x.size(1) + 1, -1)], dim=1)  # (B, N, Dd)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.size(-1)))  # patch order
        x = torch.cat([x[:, :1], tokens], dim=1) + self.position  # (B, 1+N, Dd)
        return self.pred(self.encoder(x))[:, 1:]  # (B, N, p*p*C), [CLS] dropped


class ViTMAEForPreTraining(nn.Module):
    """MAE: the ViT encoder (``vit.``, positions fixed to sin-cos) over the kept patches and [CLS], then
    :class:`MAEDecoder`; the loss is the mean squared error of the hidden patches' pixels."""

    backbone_prefix = "vit."  # a ViT classifier's init takes the encoder from here
    head_prefixes = ("decoder.",)  # what a classifier leaves behind

    def __init__(self, cfg: ViTMAEConfig):
        super().__init__()
        self.config = cfg
        self.vit = ViTModel(cfg.encoder_config())
        position = self.vit.embeddings.position
        position.data.copy_(sincos_positions(cfg.image_size // cfg.patch_size, cfg.dim))
        position.requires_grad_(False)
        self.decoder = MAEDecoder(cfg)

    def backbone_stages(self) -> list[nn.Module]:
        """The encoder blocks, first to last (for freezing all but the last N)."""
        return list(self.vit.encoder.blocks)

    def encode(self, pixel_values: torch.Tensor, noise: torch.Tensor):
        """Embed, mask and encode: returns (latent (B, 1+K, D), mask (B, N), ids_restore (B, N))."""
        emb = self.vit.embeddings
        patches = emb.proj(pixel_values).flatten(2).transpose(1, 2)  # (B, N, D)
        if patches.size(1) != self.config.num_patches:
            raise ValueError(f"image size {tuple(pixel_values.shape[-2:])} is not the configured "
                             f"{self.config.image_size}x{self.config.image_size}")
        # positions before masking, so each kept patch keeps its place
        kept, mask, ids_restore = random_masking(patches + emb.position[:, 1:], noise, self.config.num_kept)
        cls = (emb.cls_token + emb.position[:, :1]).expand(kept.size(0), -1, -1)  # (B, 1, D)
        x = emb.dropout(torch.cat([cls, kept], dim=1))  # (B, 1+K, D)
        return self.vit.encoder(self.vit.norm_pre(x)), mask, ids_restore

    def forward(self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        """pixel_values: (B, C, H, W); noise: (B, N), the masking (lowest kept); None: uniform random."""
        B = pixel_values.size(0)
        if noise is None:
            noise = torch.rand(B, self.config.num_patches, device=pixel_values.device)
        latent, mask, ids_restore = self.encode(pixel_values, noise)
        logits = self.decoder(latent, ids_restore)  # (B, N, p*p*C)
        target = patchify(pixel_values, self.config.patch_size)
        if self.config.norm_pix_loss:  # unbiased variance and eps 1e-6, as MAE
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((logits - target) ** 2).mean(-1)  # (B, N)
        loss = (per_patch * mask).sum() / mask.sum()
        return MAEOutput(loss=loss, logits=logits, mask=mask, ids_restore=ids_restore, last_hidden_state=latent)
