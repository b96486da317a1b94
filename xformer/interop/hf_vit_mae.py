"""Convert the MAE between xformer and Hugging Face ``ViTMAEForPreTraining``: configs, state dicts, load, export.

HF names its decoder blocks three ways: the original hub checkpoints (``decoder.decoder_layers.{i}.attention
.attention.query``), transformers 5 in memory (``decoder.decoder_layers.{i}.attention.q_proj``) and what
its ``save_pretrained`` writes (``decoder.decoder_encoder.layer.{i}.attention.attention.query``); the encoder
as HF ViT. All are read; the ``save_pretrained`` naming is written. Our q/k/v are fused (rows ``[q; k; v]``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import transformers

from xformer.errors import XformerError
from xformer.interop.common import (PRE_LN_OPTIONS, encoder_fields_from_hf, encoder_fields_to_hf, fuse_qkv,
                                    hf_model_dir, param_pairs, read_weights, refuse_options, split_qkv, take_keys,
                                    warn_unused, write_hf_dir)
from xformer.interop.hf_vit import HUB_NAMES, square_sizes
from xformer.models.vit_mae import ViTMAEConfig, ViTMAEForPreTraining

# Other namings -> the one written: ViT's, and the decoder's layer list.
_HUB_NAMES = ((r"^decoder\.decoder_layers\.(\d+)\.", r"decoder.decoder_encoder.layer.\1."), *HUB_NAMES)
# (our prefix, HF prefix) of the encoder's and the decoder's blocks
_STACKS = {"encoder": ("vit.encoder.blocks", "vit.encoder.layer"),
           "decoder": ("decoder.encoder.blocks", "decoder.decoder_encoder.layer")}


def config_from_hf(hf_config: transformers.PretrainedConfig) -> ViTMAEConfig:
    """Our :class:`ViTMAEConfig` for an HF ViTMAE config; XformerError for what we cannot reproduce."""
    if getattr(hf_config, "model_type", None) != "vit_mae":
        raise XformerError(f"expected an HF ViTMAE config (model_type 'vit_mae'), got {hf_config.model_type!r}")
    image, patch = square_sizes(hf_config, "ViTMAE")
    return ViTMAEConfig(
        **encoder_fields_from_hf(hf_config, "ViTMAE"), norm_first=True, qkv_bias=hf_config.qkv_bias,
        image_size=image, patch_size=patch, in_channels=hf_config.num_channels,
        mask_ratio=hf_config.mask_ratio, norm_pix_loss=hf_config.norm_pix_loss,
        decoder_dim=hf_config.decoder_hidden_size, decoder_depth=hf_config.decoder_num_hidden_layers,
        decoder_num_heads=hf_config.decoder_num_attention_heads,
        decoder_mlp_ratio=hf_config.decoder_intermediate_size / hf_config.decoder_hidden_size,
    )


def config_to_hf(cfg: ViTMAEConfig) -> transformers.ViTMAEConfig:
    """The HF ``ViTMAEConfig`` (architecture ``ViTMAEForPreTraining``) for ours; XformerError for post-LN
    blocks or the modern encoder options, which HF ViTMAE cannot express."""
    if not cfg.norm_first:
        raise XformerError("a post-LN MAE (model.norm_first=false) has no HF transformers equivalent")
    refuse_options({"model": cfg}, PRE_LN_OPTIONS, "ViTMAE")
    if cfg.pre_norm:
        raise XformerError("HF ViTMAE cannot express model.pre_norm=true (it has false)")
    return transformers.ViTMAEConfig(
        **encoder_fields_to_hf(cfg), image_size=cfg.image_size, patch_size=cfg.patch_size,
        num_channels=cfg.in_channels, qkv_bias=cfg.qkv_bias, mask_ratio=cfg.mask_ratio,
        norm_pix_loss=cfg.norm_pix_loss, decoder_hidden_size=cfg.decoder_dim,
        decoder_num_hidden_layers=cfg.decoder_depth, decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_intermediate_size=cfg.decoder_config().mlp_dim, architectures=["ViTMAEForPreTraining"],
    )


def _block_keys(ours: str, hf: str) -> list[tuple[str, str]]:
    return (param_pairs(f"{ours}.norm1", f"{hf}.layernorm_before")
            + param_pairs(f"{ours}.attn.proj", f"{hf}.attention.output.dense")
            + param_pairs(f"{ours}.norm2", f"{hf}.layernorm_after")
            + param_pairs(f"{ours}.mlp.fc1", f"{hf}.intermediate.dense")
            + param_pairs(f"{ours}.mlp.fc2", f"{hf}.output.dense"))


def _keys(cfg: ViTMAEConfig) -> list[tuple[str, str]]:
    """(our key, HF key) for everything but the fused q/k/v; every one is required."""
    keys = [
        ("vit.embeddings.cls_token", "vit.embeddings.cls_token"),
        ("vit.embeddings.position", "vit.embeddings.position_embeddings"),
        *param_pairs("vit.embeddings.proj", "vit.embeddings.patch_embeddings.projection"),
        *param_pairs("vit.encoder.norm", "vit.layernorm"),
        ("decoder.mask_token", "decoder.mask_token"),
        ("decoder.position", "decoder.decoder_pos_embed"),
        *param_pairs("decoder.embed", "decoder.decoder_embed"),
        *param_pairs("decoder.encoder.norm", "decoder.decoder_norm"),
        *param_pairs("decoder.pred", "decoder.decoder_pred"),
    ]
    for stack, depth in (("encoder", cfg.depth), ("decoder", cfg.decoder_depth)):
        ours, hf = _STACKS[stack]
        for i in range(depth):
            keys += _block_keys(f"{ours}.{i}", f"{hf}.{i}")
    return keys


def _qkv_keys(stack: str):
    ours, hf = _STACKS[stack]

    def keys(i: int, param: str) -> tuple[str, list[str]]:
        parts = [f"{hf}.{i}.attention.attention.{n}.{param}" for n in ("query", "key", "value")]
        return f"{ours}.{i}.attn.qkv.{param}", parts
    return keys


def _normalise_hf_key(key: str) -> str:
    for pattern, replacement in _HUB_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ViTMAEConfig) -> dict[str, torch.Tensor]:
    """An HF ViTMAEForPreTraining state dict (any naming) as ours; XformerError naming missing keys."""
    src = {_normalise_hf_key(k): v for k, v in hf_state.items()}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing = take_keys(src, _keys(cfg), out, used)
    missing += fuse_qkv(src, cfg, _qkv_keys("encoder"), out, used)
    missing += fuse_qkv(src, cfg.decoder_config(), _qkv_keys("decoder"), out, used)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise XformerError(f"not a ViTMAE checkpoint for this config: it lacks {', '.join(missing[:3])}{more}")
    warn_unused(src, used, "ViTMAE pretraining")
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: ViTMAEConfig) -> dict[str, torch.Tensor]:
    """Our state dict as HF keys (``save_pretrained`` naming), which load strictly into ViTMAEForPreTraining."""
    out = {hf: state[ours] for ours, hf in _keys(cfg)}
    split_qkv(state, cfg, _qkv_keys("encoder"), out, zero_bias=False)
    split_qkv(state, cfg.decoder_config(), _qkv_keys("decoder"), out, zero_bias=False)
    return out


def load_hf_vit_mae(path_or_id: str, attn_backend: str = "auto") -> ViTMAEForPreTraining:
    """Load an HF ViTMAE directory or hub id as our :class:`ViTMAEForPreTraining`, in eval mode."""
    folder = hf_model_dir(path_or_id, "ViTMAE")
    cfg = config_from_hf(transformers.AutoConfig.from_pretrained(folder))
    cfg.attn_backend = attn_backend
    model = ViTMAEForPreTraining(cfg)
    model.load_state_dict(state_dict_from_hf(read_weights(folder), cfg))
    return model.eval()


def export_vit_mae(model: ViTMAEForPreTraining, out_dir: str | Path, class_names: list[str] | None = None) -> Path:
    """Write ``model`` as an HF ``ViTMAEForPreTraining`` directory (``class_names`` unused: no head); its path.

    Written to a temporary directory next to ``out_dir`` and renamed into place; XformerError when
    ``out_dir`` exists and is not an empty directory.
    """
    if not isinstance(model, ViTMAEForPreTraining):
        raise XformerError(f"export_vit_mae expects an xformer ViTMAEForPreTraining, got {type(model).__name__}")
    return write_hf_dir(out_dir, config_to_hf(model.config), state_dict_to_hf(model.state_dict(), model.config))
