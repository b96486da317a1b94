"""Convert ViT between xformer and Hugging Face transformers: configs, state dicts, load and export.

Our layout fuses the query, key and value projections into one ``attn.qkv`` linear (rows
``[q; k; v]``). HF ViT checkpoints come in two namings: the one on the hub and written by
``save_pretrained`` (``vit.encoder.layer.{i}.attention.attention.query``, ...) and the in-memory
one of transformers 5 (``vit.layers.{i}.attention.q_proj``, ...); both are read, and the hub naming
is written. Keys may lack the ``vit.`` prefix (an HF ``ViTModel``); the head is ``classifier``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
import transformers
from torch import nn

from xformer.errors import XformerError
from xformer.interop.common import (PRE_LN_OPTIONS, encoder_fields_from_hf, encoder_fields_to_hf, fuse_qkv,
                                    hf_model_dir, param_pairs, read_weights, refuse_options, split_qkv, take_keys,
                                    warn_unused, write_hf_dir)
from xformer.models.vit import ViTConfig, ViTForImageClassification, ViTModel

logger = logging.getLogger(__name__)

# transformers 5 in-memory names -> hub names, applied in order (attention.o_proj before mlp.fc2).
HUB_NAMES = (
    (r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)
# Parts of HF checkpoints that image classification does not use: the pooler of a ViTModel, and
# the mask token of a masked-image-modelling checkpoint.
_UNUSED = re.compile(r"^vit\.(pooler\.|embeddings\.mask_token$)")


def square_sizes(hf_config: transformers.PretrainedConfig, name: str) -> tuple[int, int]:
    """(image size, patch size) of an HF ViT-family config, given as ints or pairs; XformerError unless both
    are square."""
    image, patch = (tuple(v) if isinstance(v, (list, tuple)) else (v, v)
                    for v in (hf_config.image_size, hf_config.patch_size))
    if image[0] != image[1] or patch[0] != patch[1]:
        raise XformerError(f"HF {name} image_size={hf_config.image_size}, patch_size={hf_config.patch_size}: "
                           "only square images and patches are supported")
    return image[0], patch[0]


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf_config: transformers.PretrainedConfig) -> ViTConfig:
    """Our :class:`ViTConfig` for an HF ViT config (``num_classes`` from its ``num_labels``);
    XformerError for settings we cannot reproduce (non-square images or patches, other activations)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "vit":
        raise XformerError(f"expected an HF ViT config (model_type 'vit'), got model_type {model_type!r}")
    image, patch = square_sizes(hf_config, "ViT")
    return ViTConfig(
        **encoder_fields_from_hf(hf_config, "ViT"),
        norm_first=True,
        qkv_bias=hf_config.qkv_bias,
        image_size=image,
        patch_size=patch,
        in_channels=hf_config.num_channels,
        num_classes=hf_config.num_labels,
        pool="cls",
    )


def encoder_config_to_hf(cfg: ViTConfig, **fields) -> transformers.ViTConfig:
    """The HF ``ViTConfig`` of our encoder, with ``fields`` added (architecture ``ViTModel`` unless they say
    otherwise); XformerError for what HF ViT cannot express: post-LN blocks, the modern encoder options,
    a norm before the encoder (``pre_norm``)."""
    if not cfg.norm_first:
        raise XformerError("a post-LN ViT (model.norm_first=false) has no HF transformers equivalent")
    refuse_options({"model": cfg}, {**PRE_LN_OPTIONS, "pre_norm": (False,)}, "ViT")
    return transformers.ViTConfig(
        **encoder_fields_to_hf(cfg),
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.in_channels,
        qkv_bias=cfg.qkv_bias,
        encoder_stride=cfg.patch_size,
        **{"architectures": ["ViTModel"], **fields},
    )


def config_to_hf(cfg: ViTConfig, class_names: list[str] | None = None) -> transformers.ViTConfig:
    """The HF ``ViTConfig`` (architecture ``ViTForImageClassification``) for our config.

    ``class_names`` become ``id2label``. Raises XformerError for what HF ViT cannot express (see
    :func:`encoder_config_to_hf`), a head it lacks (mean pooling, a norm before the head), an unset number
    of classes, or class names of another count.
    """
    if cfg.pool != "cls":
        raise XformerError(f"HF ViTForImageClassification classifies the [CLS] token; model.pool={cfg.pool!r} "
                           "cannot be exported (export the encoder alone: --format ViTModel)")
    if cfg.head_norm != "none":
        raise XformerError(f"HF ViTForImageClassification has no norm before its classifier; "
                           f"model.head_norm={cfg.head_norm!r} cannot be exported (export the encoder alone: "
                           f"--format ViTModel)")
    if cfg.num_classes is None:
        raise XformerError("model.num_classes must be set to convert the config to HF")
    if class_names is not None and len(class_names) != cfg.num_classes:
        raise XformerError(f"{len(class_names)} class names for a model with {cfg.num_classes} classes")
    names = class_names if class_names is not None else [f"LABEL_{i}" for i in range(cfg.num_classes)]
    return encoder_config_to_hf(
        cfg,
        id2label={i: str(name) for i, name in enumerate(names)},
        label2id={str(name): i for i, name in enumerate(names)},
        architectures=["ViTForImageClassification"],
    )


# ----------------------------------------------------------------------------- state dicts


def _backbone_keys(cfg: ViTConfig) -> list[tuple[str, str]]:
    """(our key, HF hub key) for everything but the fused q/k/v and the head; every one is required."""
    keys = [
        ("vit.embeddings.cls_token", "vit.embeddings.cls_token"),
        ("vit.embeddings.position", "vit.embeddings.position_embeddings"),
        *param_pairs("vit.embeddings.proj", "vit.embeddings.patch_embeddings.projection"),
        *param_pairs("vit.encoder.norm", "vit.layernorm"),
    ]
    for i in range(cfg.depth):
        ours, hf = f"vit.encoder.blocks.{i}", f"vit.encoder.layer.{i}"
        keys += (
            param_pairs(f"{ours}.norm1", f"{hf}.layernorm_before")
            + param_pairs(f"{ours}.attn.proj", f"{hf}.attention.output.dense")
            + param_pairs(f"{ours}.norm2", f"{hf}.layernorm_after")
            + param_pairs(f"{ours}.mlp.fc1", f"{hf}.intermediate.dense")
            + param_pairs(f"{ours}.mlp.fc2", f"{hf}.output.dense")
        )
    return keys


_HEAD_KEYS = param_pairs("head", "classifier")


def _qkv_keys(i: int, param: str) -> tuple[str, list[str]]:
    hf = f"vit.encoder.layer.{i}.attention.attention"
    return f"vit.encoder.blocks.{i}.attn.qkv.{param}", [f"{hf}.{n}.{param}" for n in ("query", "key", "value")]


def _normalise_hf_key(key: str) -> str:
    """An HF key in hub naming, with the ``vit.`` prefix."""
    if not key.startswith(("vit.", "classifier.")):
        key = "vit." + key
    for pattern, replacement in HUB_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Convert an HF ViT state dict (``ViTModel`` or ``ViTForImageClassification``, either naming) to
    :class:`ViTForImageClassification` keys.

    The backbone is required (XformerError naming the first missing keys otherwise); the head
    (``classifier.*`` -> ``head.*``) is converted when present. Unused tensors are logged.
    """
    src = {_normalise_hf_key(k): v for k, v in hf_state.items()}
    used = {k for k in src if _UNUSED.match(k)}
    out: dict[str, torch.Tensor] = {}
    missing = take_keys(src, _backbone_keys(cfg), out, used)
    missing += fuse_qkv(src, cfg, _qkv_keys, out, used)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise XformerError(f"not a ViT checkpoint for this config: it lacks {', '.join(missing[:3])}{more}")
    for ours, hf in _HEAD_KEYS:
        if hf in src:
            out[ours] = src[hf]
            used.add(hf)

    warn_unused(src, used, "ViT classification")
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: ViTConfig, head: bool = True) -> dict[str, torch.Tensor]:
    """Convert our :class:`ViTForImageClassification` state dict to HF hub keys, which load strictly
    into ``transformers.ViTForImageClassification`` (through ``from_pretrained``); ``head=False``: the
    backbone's alone (``vit.*``, what a ``ViTModel`` holds under its base-model prefix)."""
    out = {hf: state[ours] for ours, hf in _backbone_keys(cfg) + (_HEAD_KEYS if head else [])}
    split_qkv(state, cfg, _qkv_keys, out, zero_bias=False)
    return out


# ----------------------------------------------------------------------------- loading


def load_hf_vit(path_or_id: str, num_classes: int | None = None,
                attn_backend: str = "auto") -> ViTForImageClassification | ViTModel:
    """Load an HF ViT checkpoint as our :class:`ViTForImageClassification`, in eval mode.

    ``path_or_id`` is a local HF directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``) or a hub id (fetched through huggingface_hub; offline, XformerError asks for
    a local directory). The head is the checkpoint's when it has one with ``num_classes`` outputs
    (``None``: whatever it has); otherwise a fresh head with ``num_classes`` outputs is initialised.
    A checkpoint without a classifier loaded with ``num_classes=None`` is the backbone alone (:class:`ViTModel`).
    """
    folder = hf_model_dir(path_or_id, "ViT")
    cfg = config_from_hf(transformers.AutoConfig.from_pretrained(folder))
    cfg.attn_backend = attn_backend
    state = state_dict_from_hf(read_weights(folder), cfg)

    head_classes = state["head.weight"].size(0) if "head.weight" in state else None
    if num_classes is None and head_classes is None:  # a backbone checkpoint (HF ViTModel)
        backbone = ViTModel(cfg)
        backbone.load_state_dict({k.removeprefix("vit."): v for k, v in state.items()})
        return backbone.eval()
    cfg.num_classes = num_classes if num_classes is not None else head_classes
    if head_classes is not None and head_classes != cfg.num_classes:
        logger.info("%s: replacing its %d-class classifier by a new %d-class head",
                    path_or_id, head_classes, cfg.num_classes)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    elif head_classes is None:
        logger.info("%s: no classifier in the checkpoint; initialising a %d-class head", path_or_id, cfg.num_classes)

    model = ViTForImageClassification(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    return model.eval()


# ----------------------------------------------------------------------------- export


def export_vit(model: ViTForImageClassification, out_dir: str | Path,
               class_names: list[str] | None = None) -> Path:
    """Write ``model`` as an HF ``ViTForImageClassification`` directory; returns its path.

    The directory loads with ``transformers.ViTForImageClassification.from_pretrained``; ``class_names``
    become its ``id2label``. It is written to a temporary directory next to ``out_dir`` and renamed
    into place, so it is never seen half-written. Raises XformerError when ``out_dir`` exists and is
    not an empty directory.
    """
    if not isinstance(model, ViTForImageClassification):
        raise XformerError(f"export_vit expects an xformer ViTForImageClassification, got {type(model).__name__}")
    hf_config = config_to_hf(model.config, class_names)
    return write_hf_dir(out_dir, hf_config, state_dict_to_hf(model.state_dict(), model.config))


def export_vit_encoder(model: nn.Module, out_dir: str | Path) -> Path:
    """Write the ViT encoder of ``model`` (our :class:`ViTModel`, or the ``vit`` of a ViT classifier or of
    an MAE) as an HF ``ViTModel`` directory; returns its path.

    ``transformers.ViTModel.from_pretrained`` gives the same ``last_hidden_state`` on the same image; HF
    adds its pooler (a dense layer ours lacks), freshly initialised, to ``pooler_output``. Written as
    :func:`export_vit`; XformerError for a model without a ViT encoder.
    """
    encoder = model if isinstance(model, ViTModel) else getattr(model, "vit", None)
    if not isinstance(encoder, ViTModel):
        raise XformerError(f"a {type(model).__name__} has no ViT encoder to export as transformers.ViTModel")
    state = state_dict_to_hf({f"vit.{k}": v for k, v in encoder.state_dict().items()}, encoder.config, head=False)
    return write_hf_dir(out_dir, encoder_config_to_hf(encoder.config),
                        {k.removeprefix("vit."): v for k, v in state.items()})
