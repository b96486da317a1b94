"""CLIP-style dual encoder: the ViT image tower and a text tower, both on the shared encoder, with linear
projections into one embedding space and a learnable temperature."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xformer.config import ClipConfig, TextConfig
from xformer.layers.block import Encoder
from xformer.layers.embeddings import TokenEmbeddings
from xformer.models.bert import init_weights
from xformer.models.vit import ViTModel


@dataclass
class ClipOutput:
    image_embeds: torch.Tensor  # (B_img, E), unit length
    text_embeds: torch.Tensor  # (B_txt, E), unit length
    logit_scale: torch.Tensor  # (1,) the clamped inverse temperature, exp(log scale)
    logits_per_image: torch.Tensor  # (B_img, B_txt) = scale * image_embeds @ text_embeds.T
    logits_per_text: torch.Tensor  # (B_txt, B_img)


class TextTransformer(nn.Module):
    """Token embeddings + the shared encoder, pooled at one token.

    ``pool="eot"`` takes the last real token of each sequence (where CLIP's tokenizer puts end-of-text, and
    ours ``[SEP]``), normally with ``causal=True``; ``pool="cls"`` takes the first token. Module names match
    :class:`~xformer.models.bert.BertModel` (``embeddings``, ``encoder``), so a BERT's weights load as they are.
    """

    def __init__(self, cfg: TextConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("TextConfig.vocab_size must be set (it is taken from the tokenizer)")
        self.config = cfg
        embed_norm = not cfg.norm_first if cfg.embed_norm is None else cfg.embed_norm
        self.embeddings = TokenEmbeddings(
            cfg.vocab_size, cfg.dim, cfg.max_position, cfg.type_vocab_size, cfg.pad_token_id,
            dropout=cfg.dropout, norm_eps=cfg.norm_eps if embed_norm else None,
            absolute=cfg.position == "absolute", norm_bias=cfg.bias,
        )
        self.encoder = Encoder(cfg)
        self.apply(lambda m: init_weights(m, cfg.init_std))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> pooled (B, D)."""
        x = self.encoder(self.embeddings(input_ids), attention_mask, causal=self.config.causal)  # (B, T, D)
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
