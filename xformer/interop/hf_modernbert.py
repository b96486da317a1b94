"""Convert ModernBERT between xformer and Hugging Face transformers: configs, state dicts, load and export.

ModernBERT is our BERT with the modern options of the shared layers: pre-LN blocks (the first one
takes the normalised embeddings as they are), an embedding LayerNorm and a final one, rotary positions
(a global base and a local one), GeGLU MLPs, no biases, sliding-window attention in all but every
``global_every``-th block, no segment embeddings, MLM only. The layouts match tensor for tensor: HF's
``Wqkv`` is our fused ``attn.qkv`` (rows ``[q; k; v]``) and HF's ``Wi`` our gated ``mlp.fc1`` (input
half, then gate half), so only names change. HF checkpoints come as ``ModernBertForMaskedLM``
(``model.*``, ``head.*``, ``decoder.*``) or ``ModernBertModel`` (the encoder, without ``model.``).

Dropout sits in slightly different places (HF: embeddings, inside the MLP, attention probabilities and
output; ours: embeddings, both residual branches, attention probabilities), so the rates are mapped as
``dropout`` <-> ``embedding_dropout``/``mlp_dropout`` and ``attn_dropout`` <-> ``attention_dropout``;
inference is identical.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

from xformer.errors import XformerError
from xformer.interop.common import (ACT_FROM_HF, ACT_TO_HF, classifier_to_hf, is_classifier, param_pairs,
                                    refuse_options, warn_unused, write_hf_dir)
from xformer.interop.hf_bert import load_bert_family
from xformer.models.bert import BertClassifierConfig, BertConfig, BertForPreTraining, BertForSequenceClassification

_FULL, _SLIDING = "full_attention", "sliding_attention"
# HF's flags for the biases; ours is one `bias` for all of them (the MLM decoder always has its own).
_BIAS_FLAGS = ("attention_bias", "mlp_bias", "norm_bias", "classifier_bias")
# What a ModernBERT is, in our options: key -> the values allowed (final_norm and embed_norm None resolve
# to True for a pre-LN model, checked first).
_MODERN_OPTIONS: dict[str, tuple] = {
    "norm_first": (True,), "position": ("rotary",), "first_block_norm": (False,), "glu": (True,),
    "final_norm": (None, True), "embed_norm": (None, True), "type_vocab_size": (0,), "nsp": (False,),
}


# ----------------------------------------------------------------------------- configs


def _global_every(layer_types: list[str]) -> int | None:
    """The n with block i global exactly when i % n == 0, None when every block is global; XformerError
    for any other pattern (we cannot express it)."""
    if all(t == _FULL for t in layer_types):
        return None
    for n in range(2, len(layer_types) + 1):
        if all((t == _FULL) == (i % n == 0) for i, t in enumerate(layer_types)):
            return n
    raise XformerError(f"HF ModernBERT layer_types={layer_types} is not 'global every n-th layer from the first'; "
                       "xformer cannot express it")


def _rope_theta(hf_config, layer_type: str) -> float:
    params = (hf_config.rope_parameters or {}).get(layer_type) or {}
    if params.get("rope_type", "default") != "default":
        raise XformerError(f"HF ModernBERT rope_parameters[{layer_type!r}].rope_type={params['rope_type']!r} "
                           "is not supported (only 'default')")
    return float(params.get("rope_theta", hf_config.default_theta["global" if layer_type == _FULL else "local"]))


def config_from_hf(hf_config: transformers.PretrainedConfig) -> BertConfig:
    """Our :class:`BertConfig` for an HF ModernBERT config (a :class:`BertClassifierConfig` with
    ``num_labels`` classes and its ``classifier_pooling`` for a ``ModernBertForSequenceClassification``);
    XformerError for settings we cannot reproduce."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "modernbert":
        raise XformerError(f"expected an HF ModernBERT config (model_type 'modernbert'), got model_type {model_type!r}")
    biases = {flag: bool(getattr(hf_config, flag)) for flag in _BIAS_FLAGS}
    if len(set(biases.values())) > 1:
        raise XformerError(f"HF ModernBERT {', '.join(f'{k}={v}' for k, v in biases.items())}: xformer has one "
                           "bias switch for all of them")
    act = hf_config.hidden_activation
    if not isinstance(act, str) or act not in ACT_FROM_HF:
        raise XformerError(f"HF ModernBERT hidden_activation={act!r} is not supported; "
                           f"expected one of {', '.join(ACT_FROM_HF)}")
    head_act = hf_config.classifier_activation
    if ACT_FROM_HF.get(head_act) != ACT_FROM_HF[act]:
        raise XformerError(f"HF ModernBERT classifier_activation={head_act!r} differs from hidden_activation="
                           f"{act!r}; xformer's MLM head uses the blocks' activation")
    global_every = _global_every(list(hf_config.layer_types))
    bias = biases["attention_bias"]
    fields = dict(
        dim=hf_config.hidden_size,
        depth=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        mlp_ratio=hf_config.intermediate_size / hf_config.hidden_size,
        dropout=max(hf_config.embedding_dropout, hf_config.mlp_dropout),
        attn_dropout=hf_config.attention_dropout,
        norm_eps=hf_config.norm_eps,
        act=ACT_FROM_HF[act],
        init_std=hf_config.initializer_range,
        bias=bias,
        qkv_bias=True,  # q, k, v have biases exactly when the other linears do (bias)
        glu=True,
        position="rotary",
        rope_theta=_rope_theta(hf_config, _FULL),
        local_rope_theta=_rope_theta(hf_config, _SLIDING),
        local_window=None if global_every is None else hf_config.local_attention,
        global_every=global_every or 3,
        norm_first=True,
        first_block_norm=False,
        final_norm=True,
        embed_norm=True,
        vocab_size=hf_config.vocab_size,
        max_position=hf_config.max_position_embeddings,
        type_vocab_size=0,
        pad_token_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
    )
    if is_classifier(hf_config):
        return BertClassifierConfig(**fields, num_classes=hf_config.num_labels,
                                    classifier_pooling=hf_config.classifier_pooling)
    return BertConfig(**fields, nsp=False)


def is_modernbert(cfg: BertConfig) -> bool:
    """Whether ``cfg`` is meant as a ModernBERT rather than a BERT (its positions are rotary)."""
    return cfg.position == "rotary"


def config_to_hf(cfg: BertConfig, tokenizer: transformers.PreTrainedTokenizerBase | None = None,
                 class_names: list[str] | None = None) -> transformers.ModernBertConfig:
    """The HF ``ModernBertConfig`` (architecture ``ModernBertForMaskedLM``; for a classifier
    ``ModernBertForSequenceClassification``, with ``class_names`` as its ``id2label``, see
    :func:`~xformer.interop.common.classifier_to_hf`) for our config.

    The special-token ids (cls, sep, bos, eos) come from ``tokenizer`` when given, else are unset.
    Raises XformerError naming the first key ModernBERT cannot express (absolute positions, post-LN,
    an ungated MLP, segment embeddings, the NSP head, biases in some parts only, ...).
    """
    classifier = isinstance(cfg, BertClassifierConfig)
    # a classifier's nsp names BERT's pooler, which a rotary classifier does not build
    refuse_options({"model": cfg}, {k: v for k, v in _MODERN_OPTIONS.items() if not (classifier and k == "nsp")},
                   "ModernBERT")
    if cfg.bias and not cfg.qkv_bias:
        raise XformerError("HF ModernBERT cannot express model.qkv_bias=false with model.bias=true "
                           "(its attention_bias covers q, k, v and the output projection)")
    if cfg.vocab_size is None:
        raise XformerError("model.vocab_size must be set to convert the config to HF")
    cls_id, sep_id = getattr(tokenizer, "cls_token_id", None), getattr(tokenizer, "sep_token_id", None)
    bos_id, eos_id = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    special = {"cls_token_id": cls_id, "sep_token_id": sep_id,  # a BERT tokenizer has no bos/eos: [CLS], [SEP]
               "bos_token_id": cls_id if bos_id is None else bos_id,
               "eos_token_id": sep_id if eos_id is None else eos_id}
    return transformers.ModernBertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        hidden_activation=ACT_TO_HF[cfg.act],
        classifier_activation=ACT_TO_HF[cfg.act],
        max_position_embeddings=cfg.max_position,
        initializer_range=cfg.init_std,
        norm_eps=cfg.norm_eps,
        **{flag: cfg.bias for flag in _BIAS_FLAGS},
        decoder_bias=True,
        embedding_dropout=cfg.dropout,
        mlp_dropout=cfg.dropout,
        attention_dropout=cfg.attn_dropout,
        layer_types=[_FULL if cfg.is_global(i) else _SLIDING for i in range(cfg.depth)],
        local_attention=cfg.local_window if cfg.local_window is not None else cfg.max_position,
        rope_parameters={
            _FULL: {"rope_type": "default", "rope_theta": cfg.rope_theta},
            _SLIDING: {"rope_type": "default", "rope_theta": cfg.local_rope_theta or cfg.rope_theta},
        },
        pad_token_id=cfg.pad_token_id,
        **special,
        tie_word_embeddings=True,
        **(classifier_to_hf(cfg.num_classes, class_names, "ModernBertForSequenceClassification")
           | {"classifier_pooling": cfg.classifier_pooling, "classifier_dropout": cfg.dropout}
           if classifier else {"architectures": ["ModernBertForMaskedLM"]}),
    )


# ----------------------------------------------------------------------------- state dicts


def _encoder_keys(cfg: BertConfig) -> list[tuple[str, str]]:
    """(our key, HF key) for embeddings and blocks; every one is required."""
    names = ("weight", "bias") if cfg.bias else ("weight",)
    keys = (param_pairs("bert.embeddings.word", "model.embeddings.tok_embeddings", ("weight",))
            + param_pairs("bert.embeddings.norm", "model.embeddings.norm", names)
            + param_pairs("bert.encoder.norm", "model.final_norm", names))
    for i in range(cfg.depth):
        ours, hf = f"bert.encoder.blocks.{i}", f"model.layers.{i}"
        keys += (
            (param_pairs(f"{ours}.norm1", f"{hf}.attn_norm", names) if i > 0 else [])  # block 0: none
            + param_pairs(f"{ours}.attn.qkv", f"{hf}.attn.Wqkv", names)
            + param_pairs(f"{ours}.attn.proj", f"{hf}.attn.Wo", names)
            + param_pairs(f"{ours}.norm2", f"{hf}.mlp_norm", names)
            + param_pairs(f"{ours}.mlp.fc1", f"{hf}.mlp.Wi", names)
            + param_pairs(f"{ours}.mlp.fc2", f"{hf}.mlp.Wo", names)
        )
    return keys


def _head_keys(cfg: BertConfig) -> list[tuple[str, str]]:
    """(our key, HF key) for the MLM head's transform, which a checkpoint may lack (the decoder is
    separate); for a classifier, its head: the transform after pooling and the linear classifier."""
    names = ("weight", "bias") if cfg.bias else ("weight",)
    if isinstance(cfg, BertClassifierConfig):
        return (param_pairs("transform.dense", "head.dense", names) + param_pairs("transform.norm", "head.norm", names)
                + param_pairs("head", "classifier"))  # HF's classifier always has a bias
    return param_pairs("mlm.dense", "head.dense", names) + param_pairs("mlm.norm", "head.norm", names)


def _normalise_hf_key(key: str) -> str:
    """An HF key in ``ModernBertForMaskedLM`` naming: the ``model.`` prefix added to a ``ModernBertModel``'s."""
    return "model." + key if key.startswith(("embeddings.", "layers.", "final_norm.")) else key


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """Convert an HF ModernBERT state dict (``ModernBertModel`` or ``ModernBertForMaskedLM``; for a
    :class:`BertClassifierConfig`, ``ModernBertForSequenceClassification``) to our
    :class:`BertForPreTraining` (:class:`BertForSequenceClassification`) keys.

    The embeddings and encoder are required (XformerError naming the first missing keys otherwise);
    the head is converted when present (an MLM decoder without bias gets a zero one, the same function).
    Checkpoint tensors that the model does not use are logged.
    """
    src = {_normalise_hf_key(k): v for k, v in hf_state.items()}
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    missing = [hf for _, hf in _encoder_keys(cfg) if hf not in src]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise XformerError(f"not a ModernBERT checkpoint for this config: it lacks {', '.join(missing[:3])}{more}")
    for ours, hf in _encoder_keys(cfg) + _head_keys(cfg):
        if hf in src:
            out[ours] = src[hf]
            used.add(hf)

    if isinstance(cfg, BertClassifierConfig):
        warn_unused(src, used, "a ModernBERT classifier")
        return out
    if any(k.startswith("mlm.") for k in out) or "decoder.weight" in src:
        word = out["bert.embeddings.word.weight"]
        decoder = src.get("decoder.weight")
        if decoder is not None and not torch.equal(decoder, word):
            raise XformerError("the checkpoint's MLM decoder is not tied to the word embeddings; xformer ties them")
        out["mlm.decoder.weight"] = word
        out["mlm.decoder.bias"] = src.get("decoder.bias", word.new_zeros(word.size(0)))
        used.update(("decoder.weight", "decoder.bias"))

    warn_unused(src, used, "ModernBERT masked-LM")
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """Convert our :class:`BertForPreTraining` state dict to HF ``ModernBertForMaskedLM`` keys; the
    result loads strictly into it (``decoder.weight`` is the word embedding tensor, as HF ties them).
    A :class:`BertForSequenceClassification`'s converts to ``ModernBertForSequenceClassification`` keys."""
    out = {hf: state[ours] for ours, hf in _encoder_keys(cfg) + _head_keys(cfg)}
    if isinstance(cfg, BertClassifierConfig):
        return out
    out["decoder.weight"] = out["model.embeddings.tok_embeddings.weight"]
    out["decoder.bias"] = state["mlm.decoder.bias"]
    return out


# ----------------------------------------------------------------------------- loading


def load_hf_modernbert(path_or_id: str, heads: bool | None = None, attn_backend: str = "auto") -> nn.Module:
    """Load an HF ModernBERT checkpoint as our model, in eval mode: :class:`BertForSequenceClassification`
    for a ``ModernBertForSequenceClassification``, :class:`BertForPreTraining` (MLM only) when it has the
    MLM head or ``heads=True``, else :class:`BertModel` (see :func:`~xformer.interop.hf_bert.load_bert_family`)."""
    return load_bert_family(path_or_id, heads, attn_backend, "ModernBERT", config_from_hf, state_dict_from_hf)


# ----------------------------------------------------------------------------- export


def export_modernbert(model: BertForPreTraining | BertForSequenceClassification, out_dir: str | Path,
                      tokenizer: transformers.PreTrainedTokenizerBase | None = None,
                      class_names: list[str] | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``) as an HF ``ModernBertForMaskedLM`` directory (a classifier as
    ``ModernBertForSequenceClassification``, ``class_names`` its ``id2label``); returns its path.

    The directory loads with ``transformers.ModernBertForMaskedLM.from_pretrained`` (the decoder tied to
    the word embeddings, left out of ``model.safetensors`` as ``save_pretrained`` does), a classifier's
    with ``AutoModelForSequenceClassification``. It is written to a temporary directory next to
    ``out_dir`` and renamed into place. Raises XformerError when the config is not one ModernBERT can
    express, or when ``out_dir`` exists and is not an empty directory.
    """
    if not isinstance(model, (BertForPreTraining, BertForSequenceClassification)):
        raise XformerError(f"export_modernbert expects an xformer BertForPreTraining or "
                           f"BertForSequenceClassification, got {type(model).__name__}")
    hf_config = config_to_hf(model.config, tokenizer, class_names)
    state = state_dict_to_hf(model.state_dict(), model.config)
    state.pop("decoder.weight", None)  # tied
    return write_hf_dir(out_dir, hf_config, state, tokenizer)
