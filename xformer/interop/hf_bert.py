"""Convert BERT between xformer and Hugging Face transformers: configs, state dicts, load and export.

Our layout differs from HF's in names and in one shape: the query, key and value projections are
fused into one ``attn.qkv`` linear (rows ``[q; k; v]``). HF checkpoints come as ``BertModel`` (keys
without the ``bert.`` prefix), ``BertForMaskedLM`` or ``BertForPreTraining`` (with ``cls.*`` heads);
all are normalised to ``BertForPreTraining`` names before conversion. A ``BertForSequenceClassification``
(``classifier.*``) is our :class:`~xformer.models.bert.BertForSequenceClassification` (``head.*``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers
from torch import nn

from xformer.errors import XformerError
from xformer.hub import fetch_from_hub
from xformer.interop.common import (CLASSIC_OPTIONS, classifier_to_hf, encoder_fields_from_hf, encoder_fields_to_hf,
                                    fuse_qkv, is_classifier, param_pairs, read_weights, refuse_options, split_qkv,
                                    take_keys, warn_unused, write_hf_dir)
from xformer.models.bert import (BertClassifierConfig, BertConfig, BertForPreTraining, BertForSequenceClassification,
                                 BertModel)

logger = logging.getLogger(__name__)

# Keys HF ties to others; export_bert leaves them out of model.safetensors, as save_pretrained does.
_TIED_HF_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
# Non-persistent buffers that some older checkpoints saved.
_HF_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
# The modern options at BERT's values: post-LN BERT has an embedding norm and no final norm.
_BERT_OPTIONS = {**CLASSIC_OPTIONS, "final_norm": (None, False), "embed_norm": (None, True)}
_MODERNBERT_HINT = "; a ModernBERT-style model exports with xformer.interop.hf_modernbert.export_modernbert"


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf_config: transformers.PretrainedConfig) -> BertConfig:
    """Our :class:`BertConfig` for an HF BERT config (a :class:`BertClassifierConfig` with ``num_labels``
    classes for a ``BertForSequenceClassification``); XformerError for settings we cannot reproduce."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "bert":
        raise XformerError(f"expected an HF BERT config (model_type 'bert'), got model_type {model_type!r}")
    position_type = getattr(hf_config, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise XformerError(f"HF BERT position_embedding_type={position_type!r} is not supported (only 'absolute')")
    if hf_config.is_decoder or getattr(hf_config, "add_cross_attention", False):
        raise XformerError("HF BERT configured as a decoder (is_decoder / add_cross_attention) is not supported")
    fields = dict(
        **encoder_fields_from_hf(hf_config, "BERT"),
        norm_first=False,
        qkv_bias=True,
        vocab_size=hf_config.vocab_size,
        max_position=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size,
        pad_token_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
    )
    if is_classifier(hf_config):
        return BertClassifierConfig(**fields, num_classes=hf_config.num_labels)
    return BertConfig(**fields)


def config_to_hf(cfg: BertConfig, class_names: list[str] | None = None) -> transformers.BertConfig:
    """The HF ``BertConfig`` (architecture ``BertForPreTraining``, or ``BertForMaskedLM`` for an MLM-only
    model without the next-sentence head; ``BertForSequenceClassification`` for a classifier, with
    ``class_names`` as its ``id2label``, see :func:`~xformer.interop.common.classifier_to_hf`) for our config.

    Raises XformerError for the modern options BERT lacks (rotary positions, gated MLPs, no biases,
    local attention, ModernBERT's norms: see :mod:`xformer.interop.hf_modernbert`), pre-LN models (HF
    BERT is post-LN only) and an unset vocabulary size.
    """
    refuse_options({"model": cfg}, _BERT_OPTIONS, "BERT", _MODERNBERT_HINT)
    if cfg.norm_first:
        raise XformerError("a pre-LN BERT (model.norm_first=true) has no HF transformers equivalent" + _MODERNBERT_HINT)
    if cfg.vocab_size is None:
        raise XformerError("model.vocab_size must be set to convert the config to HF")
    return transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        **encoder_fields_to_hf(cfg),
        max_position_embeddings=cfg.max_position,
        type_vocab_size=cfg.type_vocab_size,
        pad_token_id=cfg.pad_token_id,
        **(classifier_to_hf(cfg.num_classes, class_names, "BertForSequenceClassification")
           if isinstance(cfg, BertClassifierConfig) else
           {"architectures": ["BertForPreTraining" if cfg.nsp else "BertForMaskedLM"]}),
    )


# ----------------------------------------------------------------------------- state dicts


def _encoder_keys(cfg: BertConfig) -> list[tuple[str, str]]:
    """(our key, HF key) for embeddings and blocks, except the fused q/k/v; every one is required."""
    keys = (
        param_pairs("bert.embeddings.word", "bert.embeddings.word_embeddings", ("weight",))
        + param_pairs("bert.embeddings.position", "bert.embeddings.position_embeddings", ("weight",))
        + param_pairs("bert.embeddings.token_type", "bert.embeddings.token_type_embeddings", ("weight",))
        + param_pairs("bert.embeddings.norm", "bert.embeddings.LayerNorm")
    )
    for i in range(cfg.depth):
        ours, hf = f"bert.encoder.blocks.{i}", f"bert.encoder.layer.{i}"
        keys += (
            param_pairs(f"{ours}.attn.proj", f"{hf}.attention.output.dense")
            + param_pairs(f"{ours}.norm1", f"{hf}.attention.output.LayerNorm")
            + param_pairs(f"{ours}.mlp.fc1", f"{hf}.intermediate.dense")
            + param_pairs(f"{ours}.mlp.fc2", f"{hf}.output.dense")
            + param_pairs(f"{ours}.norm2", f"{hf}.output.LayerNorm")
        )
    return keys


# (our key, HF key) for the pooler and heads, which a checkpoint may lack; the MLM decoder is separate.
_HEAD_KEYS = (
    param_pairs("bert.pooler", "bert.pooler.dense")
    + param_pairs("mlm.dense", "cls.predictions.transform.dense")
    + param_pairs("mlm.norm", "cls.predictions.transform.LayerNorm")
    + param_pairs("nsp", "cls.seq_relationship")
)
# (our key, HF key) for a classifier's pooler and linear head (an MLM-only checkpoint has no pooler).
_CLASSIFIER_KEYS = param_pairs("bert.pooler", "bert.pooler.dense") + param_pairs("head", "classifier")


def _qkv_keys(i: int, param: str) -> tuple[str, list[str]]:
    hf = f"bert.encoder.layer.{i}.attention.self"
    return f"bert.encoder.blocks.{i}.attn.qkv.{param}", [f"{hf}.{n}.{param}" for n in ("query", "key", "value")]


def _normalise_hf_key(key: str) -> str:
    """An HF key in ``BertForPreTraining`` naming: ``bert.`` prefix added, legacy gamma/beta renamed."""
    if key.startswith(("embeddings.", "encoder.", "pooler.")):
        key = "bert." + key
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """Convert an HF BERT state dict (BertModel, BertForMaskedLM, BertForPreTraining or, for a
    :class:`BertClassifierConfig`, BertForSequenceClassification) to our keys.

    The result uses :class:`BertForPreTraining` keys (:class:`BertForSequenceClassification` ones for a
    classifier config) and holds only what the checkpoint has: the embeddings and encoder are required
    (XformerError naming the first missing keys otherwise); the pooler and the heads (MLM and NSP, or
    the classifier's) are converted when present. The caller reports which of its keys are absent (see
    :func:`load_hf_bert`). Checkpoint tensors that the model does not use are logged.
    """
    src = {_normalise_hf_key(k): v for k, v in hf_state.items()}
    used = set(_HF_BUFFERS)
    out: dict[str, torch.Tensor] = {}
    missing = take_keys(src, _encoder_keys(cfg), out, used)
    missing += fuse_qkv(src, cfg, _qkv_keys, out, used)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise XformerError(f"not a BERT checkpoint for this config: it lacks {', '.join(missing[:3])}{more}")

    if isinstance(cfg, BertClassifierConfig):
        take_keys(src, _CLASSIFIER_KEYS, out, used)  # optional: the head starts fresh from a BertModel
        warn_unused(src, used, "a BERT classifier")
        return out
    take_keys(src, _HEAD_KEYS, out, used)  # optional: a BertModel has no heads
    take_keys(src, [("mlm.decoder.bias", hf) for hf in ("cls.predictions.bias", "cls.predictions.decoder.bias")],
              out, used)
    if any(k.startswith("mlm.") for k in out):
        word = out["bert.embeddings.word.weight"]
        decoder = src.get("cls.predictions.decoder.weight")
        if decoder is not None and not torch.equal(decoder, word):
            raise XformerError("the checkpoint's MLM decoder is not tied to the word embeddings; xformer ties them")
        used.add("cls.predictions.decoder.weight")
        out["mlm.decoder.weight"] = word

    warn_unused(src, used, "BERT pretraining")
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """Convert our :class:`BertForPreTraining` state dict to HF ``BertForPreTraining`` keys (a
    :class:`BertForSequenceClassification`'s, for a classifier config, to ``BertForSequenceClassification``'s).

    The result loads strictly into ``transformers.BertForPreTraining``: ``cls.predictions.decoder.weight``
    is the word embedding tensor and ``cls.predictions.decoder.bias`` is ``cls.predictions.bias``, as HF
    ties them. Without ``qkv_bias`` the query/key/value biases are zeros (the same function).
    """
    out = {hf: state[ours] for ours, hf in _encoder_keys(cfg)}
    split_qkv(state, cfg, _qkv_keys, out)
    if isinstance(cfg, BertClassifierConfig):
        return out | {hf: state[ours] for ours, hf in _CLASSIFIER_KEYS}
    out.update({hf: state[ours] for ours, hf in _HEAD_KEYS if ours in state})  # MLM-only: no pooler, no NSP
    out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
    out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"] = state["mlm.decoder.bias"]
    return out


# ----------------------------------------------------------------------------- loading


def transformer_dir(folder: Path) -> Path:
    """The HF model directory inside ``folder``: the folder itself, or for a sentence-transformers
    folder (one with ``modules.json``) the path of its Transformer module."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return folder
    modules = json.loads(modules_file.read_text())
    for module in modules:
        if module.get("type", "").endswith("models.Transformer"):
            return folder / module.get("path", "")
    raise XformerError(f"{modules_file}: no sentence_transformers Transformer module listed")


def load_bert_family(path_or_id: str, heads: bool | None, attn_backend: str, family: str, config_from_hf,
                     state_dict_from_hf) -> nn.Module:
    """An HF checkpoint of a BERT-like ``family`` ("BERT", "ModernBERT") as our model, in eval mode: its
    config and weights read by the family's ``config_from_hf`` / ``state_dict_from_hf``.

    ``path_or_id`` is a local HF directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), a sentence-transformers folder, or a hub id (fetched through
    huggingface_hub). Returns :class:`BertForSequenceClassification` for a sequence classifier (its
    ``config.json`` names a ``*ForSequenceClassification``; ``num_classes`` is its ``num_labels``, its
    class names are :func:`xformer.trained.loading.load_class_names`'s), unless ``heads=False``;
    :class:`BertForPreTraining` when the checkpoint has an MLM or NSP head, or when ``heads=True``;
    otherwise, or when ``heads=False``, :class:`BertModel`. Heads the checkpoint lacks keep their fresh
    initialisation, and are logged.
    """
    folder = Path(path_or_id)
    if not folder.exists():
        folder = fetch_from_hub(str(path_or_id))
    if not folder.is_dir():
        raise XformerError(f"{folder}: expected an HF {family} directory (config.json + weights)")
    model_dir = transformer_dir(folder)
    if not (model_dir / "config.json").is_file():
        raise XformerError(f"{model_dir}: no config.json; expected an HF {family} directory")
    cfg = config_from_hf(transformers.AutoConfig.from_pretrained(model_dir))
    cfg.attn_backend = attn_backend
    state = state_dict_from_hf(read_weights(model_dir), cfg)

    model, state = _model_for(cfg, state, heads)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected  # state_dict_from_hf only produces our keys
    absent = sorted({k.rsplit(".", 1)[0] for k in missing if k != "mlm.decoder.weight"})  # decoder: tied
    if absent:
        logger.warning("%s: not in the checkpoint, keeping their initialisation: %s", path_or_id, ", ".join(absent))
    return model.eval()


def _model_for(cfg: BertConfig, state: dict[str, torch.Tensor], heads: bool | None
               ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model a converted checkpoint loads into (see :func:`load_bert_family`) and its state for it."""
    classifier = isinstance(cfg, BertClassifierConfig)
    if classifier and heads is not False:
        return BertForSequenceClassification(cfg), state
    has_heads = any(k.startswith(("mlm.", "nsp.")) for k in state)
    if not classifier and (has_heads if heads is None else heads):
        return BertForPreTraining(cfg), state
    if classifier:  # the backbone alone: BertConfig keeps the encoder's keys (and the pooler, as nsp)
        cfg = BertConfig(**cfg.model_dump(exclude={"arch", "num_classes", "classifier_pooling", "nsp"}),
                         nsp="bert.pooler.weight" in state)
    backbone = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
    return BertModel(cfg), backbone


def load_hf_bert(path_or_id: str, heads: bool | None = None, attn_backend: str = "auto") -> nn.Module:
    """Load an HF BERT checkpoint (``BertModel``, ``BertForPreTraining``, ``BertForMaskedLM``,
    sentence-transformers folders) as our model, in eval mode; see :func:`load_bert_family`."""
    return load_bert_family(path_or_id, heads, attn_backend, "BERT", config_from_hf, state_dict_from_hf)


# ----------------------------------------------------------------------------- export


def export_bert(model: BertForPreTraining | BertForSequenceClassification, out_dir: str | Path,
                tokenizer: transformers.PreTrainedTokenizerBase | None = None,
                class_names: list[str] | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``) as an HF ``BertForPreTraining`` directory (``BertForMaskedLM``
    for an MLM-only model, ``BertForSequenceClassification`` for a classifier, ``class_names`` its
    ``id2label``); returns its path.

    The directory loads with ``transformers.AutoModelForPreTraining`` / ``AutoModelForMaskedLM`` /
    ``AutoModelForSequenceClassification`` (and ``AutoTokenizer`` when a tokenizer is given). It is
    written to a temporary directory next to ``out_dir`` and renamed into place, so it is never seen
    half-written. Raises XformerError when ``out_dir`` exists and is not an empty directory.
    """
    if not isinstance(model, (BertForPreTraining, BertForSequenceClassification)):
        raise XformerError(f"export_bert expects an xformer BertForPreTraining or BertForSequenceClassification, "
                           f"got {type(model).__name__}")
    hf_config = config_to_hf(model.config, class_names)
    state = state_dict_to_hf(model.state_dict(), model.config)
    state = {k: v for k, v in state.items() if k not in _TIED_HF_KEYS}
    return write_hf_dir(out_dir, hf_config, state, tokenizer)
