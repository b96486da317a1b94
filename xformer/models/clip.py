"""CLIP-style dual encoder: its configs, the ViT image tower and a text tower (the shared token encoder),
with linear projections into one embedding space and a learnable temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xformer.config import Section
from xformer.models.text import TokenEncoder, TokenEncoderConfig, init_weights
from xformer.models.vit import ViTConfig, ViTModel


class TextConfig(TokenEncoderConfig):
    """A text encoder for CLIP: the token encoder pooled at the last real token (``pool="eot"``, with
    ``causal=True`` as in CLIP) or at the first one (``pool="cls"``, bidirectional, as BERT). ``init``
    starts it from a BERT (our run or ``hf:``); the architecture then comes from there."""

    max_position: int = Field(77, gt=0)
    type_vocab_size: int = Field(0, ge=0, description="0: no segment embeddings (CLIP); BERT has 2")
    causal: bool = True
    pool: Literal["eot", "cls"] = "eot"
    norm_first: bool = True
    norm_eps: float = 1e-5
    dropout: float = Field(0.0, ge=0, lt=1)
    attn_dropout: float = Field(0.0, ge=0, lt=1)

    runtime_keys: ClassVar[frozenset[str]] = TokenEncoderConfig.runtime_keys | {"causal", "pool"}


class ClipVisionConfig(ViTConfig):
    """CLIP's image tower: a ViT with a LayerNorm before the encoder and no bias in the patch projection."""

    image_size: int = Field(64, gt=0)
    patch_size: int = Field(8, gt=0)
    dim: int = Field(256, gt=0)
    depth: int = Field(6, gt=0)
    num_heads: int = Field(4, gt=0)
    pre_norm: bool = True
    patch_bias: bool = False
    norm_eps: float = 1e-5
    has_head: ClassVar[bool] = False


class ClipConfig(Section):
    """CLIP-style dual encoder: a ViT image tower and a text tower, each with a linear projection into a
    joint ``embed_dim`` space, and a learnable temperature. ``init`` loads a whole CLIP (``hf:`` or a run);
    ``vision.init`` / ``text.init`` load one tower each."""

    arch: Literal["clip"] = "clip"
    vision: ClipVisionConfig = ClipVisionConfig()
    text: TextConfig = TextConfig(dim=256, depth=4, num_heads=4)
    embed_dim: int = Field(256, gt=0)
    logit_scale_init: float = Field(math.log(1 / 0.07), description="log of the initial inverse temperature")
    logit_scale_max: float = Field(math.log(100), description="the log scale is clamped here")
    lock_image: bool = Field(False, description="freeze the image tower, projection included (LiT)")
    init: str | None = Field(None, description="a CLIP: hf:<dir or hub id>, a run dir or a checkpoint")

    # the towers are sections of their own: their runtime keys come from the recipe as well
    runtime_keys: ClassVar[frozenset[str]] = frozenset({"init", "lock_image", "logit_scale_max"})
    starts_from: ClassVar[str] = "clip"  # the architecture whose checkpoints ``init`` may name


@dataclass
class ClipOutput:
    image_embeds: torch.Tensor  # (B_img, E), unit length
    text_embeds: torch.Tensor  # (B_txt, E), unit length
    logit_scale: torch.Tensor  # (1,) the clamped inverse temperature, exp(log scale)
    logits_per_image: torch.Tensor  # (B_img, B_txt) = scale * image_embeds @ text_embeds.T
    logits_per_text: torch.Tensor  # (B_txt, B_img)


class TextTransformer(TokenEncoder):
    """The token encoder, pooled at one token.

    ``pool="eot"`` takes the last real token of each sequence (where CLIP's tokenizer puts end-of-text, and
    ours ``[SEP]``), normally with ``causal=True``; ``pool="cls"`` takes the first token. Module names match
    :class:`~xformer.models.bert.BertModel` (``embeddings``, ``encoder``), so a BERT's weights load as they are.
    """

    def __init__(self, cfg: TextConfig):
        super().__init__(cfg)
        self.apply(lambda m: init_weights(m, cfg.init_std))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> pooled (B, D)."""
        x = self.encode(input_ids, attention_mask, causal=self.config.causal)  # (B, T, D)
        if self.config.pool == "cls":
            return x[:, 0]
        if attention_mask is None:
            return x[:, -1]
        last = attention_mask.sum(dim=1).long() - 1  # (B,) index of the last real token
        return x[torch.arange(x.size(0), device=x.device), last]


class CLIPModel(nn.Module):
    """Image tower (``vision``: :class:`ViTModel`, its [CLS] / mean-pooled token), text tower (``text``),
    bias-free projections into ``embed_dim``, and ``logit_scale`` (log inverse temperature, initialised to
    ``cfg.logit_scale_init`` and clamped at ``cfg.logit_scale_max`` in the forward pass).

    ``logit_scale`` is a (1,) tensor, not 0-d as in HF's CLIP and in checkpoints written before, because
    FSDP shards along a dimension; a 0-d one still loads. ``encode_image`` and ``encode_text`` run the
    model outside ``forward`` (``forward_methods``: FSDP gathers the parameters for them too), so
    ``forward`` does not call them.
    """

    forward_methods = ("encode_image", "encode_text")

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.config = cfg
        self.vision = ViTModel(cfg.vision)
        self.text = TextTransformer(cfg.text)
        self.visual_projection = nn.Linear(cfg.vision.dim, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text.dim, cfg.embed_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=cfg.vision.dim ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=cfg.text.dim ** -0.5)
        self.logit_scale = nn.Parameter(torch.full((1,), float(cfg.logit_scale_init)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "logit_scale"
        if key in state_dict and state_dict[key].ndim == 0:  # saved as 0-d (HF, older checkpoints)
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual_projection(self.vision(pixel_values).pooler_output), dim=-1)

    def _text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text(input_ids, attention_mask)), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> unit-length embeddings (B, E)."""
        return self._image_embeds(pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> unit-length embeddings (B, E)."""
        return self._text_embeds(input_ids, attention_mask)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.config.logit_scale_max).exp()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> ClipOutput:
        image, text = self._image_embeds(pixel_values), self._text_embeds(input_ids, attention_mask)
        scale = self.scale()
        logits_per_image = scale * image @ text.t()  # (B_img, B_txt)
        return ClipOutput(image, text, scale, logits_per_image, logits_per_image.t())
