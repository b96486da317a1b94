"""Convert CLIP between xformer and Hugging Face transformers: configs, state dicts, load and export.

Our layout fuses each tower's query, key and value projections into one ``attn.qkv`` linear (rows
``[q; k; v]``), keeps the [CLS] token as (1, 1, D) and the image positions as (1, 1+N, D) (HF: (D,) and an
``nn.Embedding``), and applies the image tower's final norm (HF ``post_layernorm``) to every token
before taking [CLS]: the same pooled output. HF checkpoints (``save_pretrained`` and the in-memory
naming of transformers 5 are the same) load as they are.

The text tower is pooled differently: ours at the last token of each sequence that ``attention_mask``
marks, HF's at the first ``eos_token_id`` (or, for the legacy ``eos_token_id == 2``, at the largest
token id). Both are the end-of-text token of tokenizer-made batches; without an ``attention_mask`` ours
pools at the last position. HF does not clamp ``logit_scale``: loading raises ``logit_scale_max`` to
the checkpoint's value where needed, and export writes the clamped value.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers

from xformer.errors import XformerError
from xformer.interop.common import (PRE_LN_OPTIONS, encoder_fields_from_hf, encoder_fields_to_hf, fuse_qkv,
                                    hf_model_dir, param_pairs, read_weights, refuse_options, split_qkv, take_keys,
                                    write_hf_dir)
from xformer.models.clip import ClipConfig, CLIPModel, ClipVisionConfig, TextConfig

logger = logging.getLogger(__name__)

_CLS = "vision_model.embeddings.class_embedding"  # (D,); ours (1, 1, D)
_POSITIONS = "vision_model.embeddings.position_embedding.weight"  # (1+N, D); ours (1, 1+N, D)
# Non-persistent buffers that older checkpoints saved.
_HF_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
# HF pools the text at the largest token id when eos_token_id is this (configs from before transformers#24773).
_LEGACY_EOS = 2


# ----------------------------------------------------------------------------- configs


def _encoder_fields(tower, family: str) -> dict:
    """:func:`encoder_fields_from_hf` for a CLIP tower config, which has only an attention dropout."""
    bert_names = SimpleNamespace(**{**tower.to_dict(), "hidden_dropout_prob": 0.0,
                                    "attention_probs_dropout_prob": tower.attention_dropout})
    return encoder_fields_from_hf(bert_names, family)


def _square(value, name: str) -> int:
    sizes = (value, value) if isinstance(value, int) else tuple(value)
    if sizes[0] != sizes[1]:
        raise XformerError(f"HF CLIP vision {name}={value}: only square images and patches are supported")
    return sizes[0]


def config_from_hf(hf_config: transformers.PretrainedConfig) -> ClipConfig:
    """Our :class:`ClipConfig` for an HF CLIP config; XformerError for settings we cannot reproduce
    (another model type, non-square images or patches, other activations)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "clip":
        raise XformerError(f"expected an HF CLIP config (model_type 'clip'), got model_type {model_type!r}")
    vision, text = hf_config.vision_config, hf_config.text_config
    pad = text.pad_token_id
    return ClipConfig(
        vision=ClipVisionConfig(
            **_encoder_fields(vision, "CLIP vision"),
            image_size=_square(vision.image_size, "image_size"),
            patch_size=_square(vision.patch_size, "patch_size"),
            in_channels=vision.num_channels,
            pool="cls", pre_norm=True, patch_bias=False, norm_first=True, qkv_bias=True,
        ),
        text=TextConfig(
            **_encoder_fields(text, "CLIP text"),
            vocab_size=text.vocab_size,
            max_position=text.max_position_embeddings,
            type_vocab_size=0,
            pad_token_id=pad if isinstance(pad, int) and 0 <= pad < text.vocab_size else 0,
            causal=True, pool="eot", norm_first=True, qkv_bias=True,
        ),
        embed_dim=hf_config.projection_dim,
        logit_scale_init=hf_config.logit_scale_init_value,
    )


def _tower_to_hf(cfg) -> dict:
    """HF CLIP tower config keys: the shared ones, with CLIP's only dropout (ours has no HF equivalent)."""
    fields = encoder_fields_to_hf(cfg)
    del fields["hidden_dropout_prob"]
    fields["attention_dropout"] = fields.pop("attention_probs_dropout_prob")
    return fields


def config_to_hf(cfg: ClipConfig, eos_token_id: int) -> transformers.CLIPConfig:
    """The HF ``CLIPConfig`` (architecture ``CLIPModel``) for our config.

    ``eos_token_id`` is the end-of-text token, where HF pools the text (ours pools at the last real
    token). Raises XformerError for what HF CLIP cannot express: a post-LN or mean-pooled image tower,
    one without the pre-encoder norm or with a patch bias, a bidirectional, [CLS]-pooled, post-LN or
    segment-embedding text tower, an unset vocabulary, or an end-of-text id HF would misread.
    """
    vision, text = cfg.vision, cfg.text
    refuse_options({"model.vision": vision, "model.text": text}, PRE_LN_OPTIONS, "CLIPModel")
    problems = [
        (not vision.norm_first or not text.norm_first, "a post-LN tower (norm_first=false)"),
        (vision.pool != "cls", f"model.vision.pool={vision.pool!r} (HF pools the [CLS] token)"),
        (not vision.pre_norm, "an image tower without pre_norm (HF always has pre_layrnorm)"),
        (vision.patch_bias, "model.vision.patch_bias=true (HF's patch embedding has no bias)"),
        (not text.causal or text.pool != "eot", "a text tower not causal and pooled at end-of-text"),
        (text.type_vocab_size > 0, "segment embeddings (model.text.type_vocab_size > 0)"),
        (text.vocab_size is None, "an unset model.text.vocab_size"),
    ]
    for bad, what in problems:
        if bad:
            raise XformerError(f"HF CLIPModel cannot express {what}")
    if eos_token_id == _LEGACY_EOS or not 0 <= eos_token_id < text.vocab_size:
        raise XformerError(f"eos_token_id={eos_token_id}: HF CLIP pools the text at this token; it must be a "
                           f"token id below {text.vocab_size} other than {_LEGACY_EOS} (HF's legacy argmax pooling)")
    return transformers.CLIPConfig(
        vision_config=transformers.CLIPVisionConfig(
            **_tower_to_hf(vision), image_size=vision.image_size, patch_size=vision.patch_size,
            num_channels=vision.in_channels, projection_dim=cfg.embed_dim,
        ),
        text_config=transformers.CLIPTextConfig(
            **_tower_to_hf(text), vocab_size=text.vocab_size, max_position_embeddings=text.max_position,
            pad_token_id=text.pad_token_id, bos_token_id=None, eos_token_id=eos_token_id,
            projection_dim=cfg.embed_dim,
        ),
        projection_dim=cfg.embed_dim,
        logit_scale_init_value=cfg.logit_scale_init,
        architectures=["CLIPModel"],
    )


# ----------------------------------------------------------------------------- state dicts


def _blocks(cfg, ours: str, hf: str) -> list[tuple[str, str]]:
    keys = []
    for i in range(cfg.depth):
        o, h = f"{ours}.encoder.blocks.{i}", f"{hf}.encoder.layers.{i}"
        keys += (param_pairs(f"{o}.norm1", f"{h}.layer_norm1") + param_pairs(f"{o}.attn.proj", f"{h}.self_attn.out_proj")
                 + param_pairs(f"{o}.norm2", f"{h}.layer_norm2") + param_pairs(f"{o}.mlp.fc1", f"{h}.mlp.fc1")
                 + param_pairs(f"{o}.mlp.fc2", f"{h}.mlp.fc2"))
    return keys


def _keys(cfg: ClipConfig) -> list[tuple[str, str]]:
    """(our key, HF key) for everything but the fused q/k/v; every one is required."""
    return [
        ("logit_scale", "logit_scale"),
        ("vision.embeddings.cls_token", _CLS),
        ("vision.embeddings.position", _POSITIONS),
        *param_pairs("vision.embeddings.proj", "vision_model.embeddings.patch_embedding", ("weight",)),
        *param_pairs("vision.norm_pre", "vision_model.pre_layrnorm"),
        *_blocks(cfg.vision, "vision", "vision_model"),
        *param_pairs("vision.encoder.norm", "vision_model.post_layernorm"),
        *param_pairs("text.embeddings.word", "text_model.embeddings.token_embedding", ("weight",)),
        *param_pairs("text.embeddings.position", "text_model.embeddings.position_embedding", ("weight",)),
        *_blocks(cfg.text, "text", "text_model"),
        *param_pairs("text.encoder.norm", "text_model.final_layer_norm"),
        *param_pairs("visual_projection", "visual_projection", ("weight",)),
        *param_pairs("text_projection", "text_projection", ("weight",)),
    ]


def _qkv_keys(tower: str):
    """``qkv_keys`` for :func:`fuse_qkv`: the fused q/k/v of ``tower`` ("vision" or "text")."""
    def keys(i: int, param: str) -> tuple[str, list[str]]:
        hf = f"{tower}_model.encoder.layers.{i}.self_attn"
        return f"{tower}.encoder.blocks.{i}.attn.qkv.{param}", [f"{hf}.{n}_proj.{param}" for n in "qkv"]
    return keys


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ClipConfig) -> dict[str, torch.Tensor]:
    """Convert an HF ``CLIPModel`` state dict to our :class:`CLIPModel` keys and shapes.

    Every tensor is required (XformerError naming the first missing keys otherwise); checkpoint tensors
    that CLIP does not use are logged.
    """
    used = set(_HF_BUFFERS)
    out: dict[str, torch.Tensor] = {}
    missing = take_keys(hf_state, _keys(cfg), out, used)
    for tower in ("vision", "text"):
        missing += fuse_qkv(hf_state, getattr(cfg, tower), _qkv_keys(tower), out, used)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise XformerError(f"not a CLIP checkpoint for this config: it lacks {', '.join(missing[:3])}{more}")
    for key in ("vision.embeddings.cls_token", "vision.embeddings.position"):
        out[key] = out[key].reshape(1, -1, cfg.vision.dim)
    out["logit_scale"] = out["logit_scale"].reshape(1)  # HF's is 0-d; ours (1,), for FSDP

    ignored = sorted(set(hf_state) - used)
    if ignored:
        logger.warning("ignoring %d checkpoint tensors that CLIP does not use: %s", len(ignored), ", ".join(ignored))
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: ClipConfig) -> dict[str, torch.Tensor]:
    """Convert our :class:`CLIPModel` state dict to HF keys, which load strictly into
    ``transformers.CLIPModel``. ``logit_scale`` is clamped at ``cfg.logit_scale_max`` (HF does not clamp);
    without ``qkv_bias`` the query/key/value biases are zeros (the same function)."""
    out = {hf: state[ours] for ours, hf in _keys(cfg)}
    out["logit_scale"] = out["logit_scale"].clamp(max=cfg.logit_scale_max).reshape(())  # HF's is 0-d
    out[_CLS] = out[_CLS].reshape(-1)
    out[_POSITIONS] = out[_POSITIONS].reshape(-1, cfg.vision.dim)
    for tower in ("vision", "text"):
        split_qkv(state, getattr(cfg, tower), _qkv_keys(tower), out)
    return out


# ----------------------------------------------------------------------------- loading and export


def load_hf_clip(path_or_id: str, attn_backend: str = "auto") -> CLIPModel:
    """Load an HF CLIP checkpoint as our :class:`CLIPModel`, in eval mode.

    ``path_or_id`` is a local HF directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``) or a hub id (fetched through huggingface_hub; offline, XformerError asks for
    a local directory). ``attn_backend`` applies to both towers.
    """
    folder = hf_model_dir(path_or_id, "CLIP")
    cfg = config_from_hf(transformers.AutoConfig.from_pretrained(folder))
    cfg.vision.attn_backend = cfg.text.attn_backend = attn_backend
    state = state_dict_from_hf(read_weights(folder), cfg)
    # HF applies the checkpoint's scale as it is; so must we
    cfg.logit_scale_max = max(cfg.logit_scale_max, float(state["logit_scale"]))
    model = CLIPModel(cfg)
    model.load_state_dict(state)
    return model.eval()


def export_clip(model: CLIPModel, out_dir: str | Path,
                tokenizer: transformers.PreTrainedTokenizerBase | None = None,
                eos_token_id: int | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``) as an HF ``CLIPModel`` directory; returns its path.

    The directory loads with ``transformers.CLIPModel.from_pretrained`` (and ``AutoTokenizer`` when a
    tokenizer is given). HF pools the text at ``eos_token_id``; by default the tokenizer's end-of-text
    token (``eos_token``, else ``sep_token`` for a BERT tokenizer); XformerError when neither is given.
    The directory is written atomically; XformerError when ``out_dir`` exists and is not empty.
    """
    if not isinstance(model, CLIPModel):
        raise XformerError(f"export_clip expects an xformer CLIPModel, got {type(model).__name__}")
    if eos_token_id is None and tokenizer is not None:
        eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos_token_id is None:
        raise XformerError("export_clip needs the end-of-text token id, where HF CLIP pools the text: "
                           "pass the tokenizer (with an eos or sep token) or eos_token_id")
    hf_config = config_to_hf(model.config, eos_token_id)
    return write_hf_dir(out_dir, hf_config, state_dict_to_hf(model.state_dict(), model.config), tokenizer)
