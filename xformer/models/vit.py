"""Vision transformer: its config, patch embeddings + the shared pre-LN encoder, and a linear classification head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from xformer.config import EncoderConfig
from xformer.layers.block import Encoder
from xformer.layers.embeddings import PatchEmbeddings


class ViTConfig(EncoderConfig):
    """Vision transformer: patch embedding + [CLS] + learned positions + pre-LN encoder + head."""

    arch: Literal["vit"] = "vit"
    image_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    in_channels: int = Field(3, gt=0)
    num_classes: int | None = Field(None, gt=0, description="None: taken from the data")
    pool: Literal["cls", "mean"] = Field("cls", description="classify the [CLS] token, or the mean of the patch "
                                         "tokens (MAE's global pooling)")
    head_norm: Literal["none", "layer", "batch"] = Field(
        "none", description="a norm on the pooled token before the linear head: layer (MAE fine-tuning's fc_norm) "
        "or batch (BatchNorm without affine, MAE's linear probe)")
    pre_norm: bool = Field(False, description="LayerNorm on the embedded tokens before the encoder (CLIP)")
    patch_bias: bool = True
    norm_first: bool = True
    norm_eps: float = 1e-6
    dropout: float = Field(0.0, ge=0, lt=1)
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = 0.02
    init: str | None = Field(None, description="hf:<dir or hub id>, a run dir or a checkpoint")

    runtime_keys: ClassVar[frozenset[str]] = EncoderConfig.runtime_keys | {"init", "num_classes", "pool",
                                                                        "head_norm"}
    starts_from: ClassVar[str] = "vit"  # the architecture whose checkpoints ``init`` may name
    has_head: ClassVar[bool] = True  # False: a ViT inside another model (MAE, CLIP), where the head keys mean nothing

    @model_validator(mode="after")
    def _head_keys_need_a_head(self):
        if not self.has_head:
            for key in ("pool", "head_norm"):
                if key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(f"model.{key}={getattr(self, key)}: {type(self).__name__} has no "
                                     f"classification head (set it in the classifier that starts from it)")
        return self

    @model_validator(mode="after")
    def _learned_patch_positions(self):
        if self.position != "absolute":
            raise ValueError(f"model.position={self.position} is for token encoders; a ViT keeps learned patch positions")
        return self


@dataclass
class ViTOutput:
    last_hidden_state: torch.Tensor  # (B, 1+N, D), [CLS] first, after the final norm
    pooler_output: torch.Tensor  # (B, D): the [CLS] token, or the mean of the patch tokens


@dataclass
class ImageClassifierOutput:
    """What every image classifier returns (ViT, CNN, HF image models)."""

    logits: torch.Tensor  # (B, K)
    last_hidden_state: torch.Tensor | None = None  # (B, T, D) for transformers; None otherwise


def init_weights(module: nn.Module, std: float) -> None:
    """HF ViT initialisation: truncated N(0, std) for linear and conv weights, zero biases, unit norms.

    The [CLS] token and positions are initialised by :class:`ViTModel` (same distribution).
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTModel(nn.Module):
    """The ViT backbone: :class:`PatchEmbeddings`, then the shared encoder (pre-LN, with its final norm).
    With ``cfg.pre_norm`` a LayerNorm sits between the two (``norm_pre``, as CLIP's image tower).

    ``pooler_output`` is the [CLS] token (``cfg.pool="cls"``) or the mean of the patch tokens
    (``"mean"``); there is no pooler layer, as in HF ``ViTForImageClassification``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = PatchEmbeddings(cfg.image_size, cfg.patch_size, cfg.in_channels, cfg.dim, cfg.dropout,
                                          bias=cfg.patch_bias)
        self.norm_pre = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.encoder = Encoder(cfg)
        self.apply(lambda m: init_weights(m, cfg.init_std))
        nn.init.trunc_normal_(self.embeddings.cls_token, std=cfg.init_std)
        nn.init.trunc_normal_(self.embeddings.position, std=cfg.init_std)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None) -> ViTOutput:
        """pixel_values: (B, C, H, W). Another image size than ``cfg.image_size`` has its positions
        interpolated, unless ``interpolate_pos_encoding=False`` (then it is an error)."""
        x = self.embeddings(pixel_values, interpolate=interpolate_pos_encoding is not False)  # (B, 1+N, D)
        x = self.encoder(self.norm_pre(x))
        pooled = x[:, 0] if self.config.pool == "cls" else x[:, 1:].mean(dim=1)  # (B, D)
        return ViTOutput(last_hidden_state=x, pooler_output=pooled)


def head_norm(cfg: ViTConfig) -> nn.Module:
    """The norm between the pooled token and the linear head that ``cfg.head_norm`` names.

    MAE's recipes: fine-tuning pools the patch tokens and normalises them with a LayerNorm (its
    ``fc_norm``); the linear probe puts a BatchNorm without affine (eps 1e-6) before the linear head.
    MAE's fine-tuning also drops the encoder's final norm when it pools; ours keeps it (the encoder is the
    pretrained one whole, and exports as such), so ``pool: mean`` + ``head_norm: layer`` normalises twice.
    """
    if cfg.head_norm == "layer":
        return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
    if cfg.head_norm == "batch":
        return nn.BatchNorm1d(cfg.dim, affine=False, eps=1e-6)
    return nn.Identity()


class ViTForImageClassification(nn.Module):
    """ViT with a linear head on the pooled token (after ``head_norm``, when the config asks for one).

    Parameter names follow layers: ``vit.embeddings.*`` (layer 0), ``vit.encoder.blocks.{i}.*``
    (layer i+1), then ``vit.encoder.norm.*``, ``head_norm.*`` and ``head.*`` (layer depth+1), which is
    what layer-wise learning-rate decay and freezing key on.
    """

    backbone_prefix = "vit."  # where an init finds the backbone (see xformer.trained.init)
    head_prefixes = ("head_norm.", "head.")  # what may start fresh when the backbone comes from a checkpoint

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.num_classes is None:
            raise ValueError("ViTConfig.num_classes must be set (it is taken from the data)")
        self.config = cfg
        self.vit = ViTModel(cfg)
        self.head_norm = head_norm(cfg)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        init_weights(self.head, cfg.init_std)

    def backbone_stages(self) -> list[nn.Module]:
        """The encoder blocks, first to last (for freezing all but the last N)."""
        return list(self.vit.encoder.blocks)

    def forward(self, pixel_values: torch.Tensor,
                interpolate_pos_encoding: bool | None = None) -> ImageClassifierOutput:
        out = self.vit(pixel_values, interpolate_pos_encoding)
        logits = self.head(self.head_norm(out.pooler_output))  # (B, D) -> (B, K)
        return ImageClassifierOutput(logits=logits, last_hidden_state=out.last_hidden_state)
