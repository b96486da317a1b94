"""What every HF conversion shares: activation names, reading and writing weights and directories."""

from __future__ import annotations

import copy
import logging
import os
import secrets
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from xformer.errors import XformerError, os_error_line
from xformer.hub import fetch_from_hub

# HF activation name -> ours; HF's gelu_new and gelu_pytorch_tanh are both the tanh approximation, swish is silu.
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu",
               "silu": "silu", "swish": "silu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "silu": "silu"}

# The modern encoder options (rotary positions, gated MLPs, no biases, local attention, ModernBERT's
# norms) at the values the classic HF families (BERT, ViT, CLIP) have: key -> the values allowed.
CLASSIC_OPTIONS: dict[str, tuple] = {
    "position": ("absolute",), "glu": (False,), "bias": (True,), "local_window": (None,), "first_block_norm": (True,),
}
# A pre-LN classic encoder (ViT, both CLIP towers) ends with a LayerNorm (final_norm None means so).
PRE_LN_OPTIONS: dict[str, tuple] = {**CLASSIC_OPTIONS, "final_norm": (None, True)}

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            if name.endswith(".safetensors"):
                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
    raise XformerError(f"{model_dir}: no weights found; expected {' or '.join(WEIGHT_FILES)}")


def refuse_options(sections: dict[str, object], allowed: dict[str, tuple], family: str, hint: str = "") -> None:
    """Raise XformerError naming the first option HF ``family`` cannot express: ``sections`` maps a key
    prefix (``"model"``, ``"model.text"``) to a config section, ``allowed`` each key to the values the
    family has (keys a section lacks are skipped); ``hint`` ends the message (e.g. what to use instead)."""
    for prefix, section in sections.items():
        for key, values in allowed.items():
            if key in type(section).model_fields and getattr(section, key) not in values:
                raise XformerError(f"HF {family} cannot express {prefix}.{key}={getattr(section, key)!r} "
                                   f"(it has {values[-1]!r}){hint}")


def encoder_fields_from_hf(hf_config, family: str) -> dict:
    """The shared encoder vocabulary (dim, depth, num_heads, ...) read from an HF BERT-style config."""
    act = hf_config.hidden_act
    if not isinstance(act, str) or act not in ACT_FROM_HF:
        raise XformerError(f"HF {family} hidden_act={act!r} is not supported; expected one of {', '.join(ACT_FROM_HF)}")
    return {
        "dim": hf_config.hidden_size,
        "depth": hf_config.num_hidden_layers,
        "num_heads": hf_config.num_attention_heads,
        "mlp_ratio": hf_config.intermediate_size / hf_config.hidden_size,
        "dropout": hf_config.hidden_dropout_prob,
        "attn_dropout": hf_config.attention_probs_dropout_prob,
        "norm_eps": hf_config.layer_norm_eps,
        "act": ACT_FROM_HF[act],
        "init_std": hf_config.initializer_range,
    }


def encoder_fields_to_hf(cfg) -> dict:
    """The shared encoder vocabulary as HF BERT-style config keys; inverse of :func:`encoder_fields_from_hf`."""
    return {
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": ACT_TO_HF[cfg.act],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "initializer_range": cfg.init_std,
        "layer_norm_eps": cfg.norm_eps,
    }


def fuse_qkv(src: dict[str, torch.Tensor], cfg, qkv_keys, out: dict, used: set) -> list[str]:
    """Concatenate HF's separate query/key/value tensors of every block into our fused ``qkv`` (rows
    ``[q; k; v]``), adding them to ``out`` and their HF names to ``used``; returns the HF names missing.
    ``qkv_keys(i, param)`` gives (our key, [hf q, hf k, hf v]) for block ``i``."""
    missing = []
    for i in range(cfg.depth):
        for param in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            ours, parts = qkv_keys(i, param)
            missing += [p for p in parts if p not in src]
            if all(p in src for p in parts):
                out[ours] = torch.cat([src[p] for p in parts])
                used.update(parts)
    return missing


def take_keys(src: dict[str, torch.Tensor], pairs, out: dict, used: set) -> list[str]:
    """``out[ours] = src[hf]`` for every (ours, hf) pair whose HF tensor is there, adding it to ``used``;
    returns the HF names that are not."""
    missing = []
    for ours, hf in pairs:
        if hf in src:
            out[ours] = src[hf]
            used.add(hf)
        else:
            missing.append(hf)
    return missing


def split_qkv(state: dict[str, torch.Tensor], cfg, qkv_keys, out: dict, zero_bias: bool = True) -> None:
    """Our fused ``qkv`` of every block as HF's separate query/key/value tensors, added to ``out``: the
    inverse of :func:`fuse_qkv`. Without ``qkv_bias`` the biases are zeros (the same function) where the HF
    class always has them (``zero_bias``), else left out."""
    for i in range(cfg.depth):
        weight_key, weight_parts = qkv_keys(i, "weight")
        weight = state[weight_key]
        bias_key, bias_parts = qkv_keys(i, "bias")
        bias = state.get(bias_key, weight.new_zeros(3 * cfg.dim) if zero_bias else None)
        # clones own their storage: safetensors refuses tensors that share it
        out.update(zip(weight_parts, [t.clone() for t in weight.chunk(3)]))
        if bias is not None:
            out.update(zip(bias_parts, [t.clone() for t in bias.chunk(3)]))


# Keys transformers records in a loaded tokenizer's init_kwargs that describe how it was loaded here, not the
# tokenizer: an exported tokenizer_config.json must not carry them.
LOAD_ONLY_KWARGS = ("is_local", "local_files_only", "name_or_path", "cache_dir", "force_download", "token")


def _umask() -> int:
    """The process's umask (read by setting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def max_positions(hf_config) -> int | None:
    """The longest input the text model of ``hf_config`` takes (its position table; CLIP's text tower's)."""
    text = getattr(hf_config, "text_config", None) or hf_config
    return getattr(text, "max_position_embeddings", None)


def save_tokenizer(tokenizer, folder: Path, max_length: int | None) -> None:
    """``tokenizer`` saved into ``folder`` with ``model_max_length`` = the model's ``max_length`` (so HF
    pipelines truncate rather than crash on a long text) and none of :data:`LOAD_ONLY_KWARGS`; the caller's
    tokenizer is not changed."""
    export = copy.copy(tokenizer)
    export.init_kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in LOAD_ONLY_KWARGS}
    if max_length is not None:
        export.model_max_length = max_length
        export.init_kwargs["model_max_length"] = max_length
    export.save_pretrained(str(folder))


def write_hf_dir(out_dir: str | Path, hf_config, state: dict[str, torch.Tensor], tokenizer=None) -> Path:
    """Write an HF model directory (config.json, model.safetensors, optional tokenizer) atomically, its files
    readable as any file the user writes (mode 0666 less the umask), the tokenizer's ``model_max_length`` the
    model's position table (:func:`save_tokenizer`).

    It is written to a temporary directory next to ``out_dir`` and renamed into place, so it is never
    seen half-written. Raises XformerError when ``out_dir`` exists and is not an empty directory (a folder
    this export did not make), and, leaving nothing behind, when it cannot be written (disk full, a
    read-only folder, a file where a folder is expected).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise XformerError(f"{out}: exists and is a file; choose a new export directory")
    if out.exists() and any(out.iterdir()):
        raise XformerError(f"{out}: already exists and is not empty; choose a new export directory")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise XformerError(f"refusing to export to {out}: the weights are not finite (first: {bad})")
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        raise XformerError(f"cannot export to {out}: {os_error_line(err)}") from None
    try:
        _write_hf_files(tmp, out, hf_config, state, tokenizer)
    except OSError as err:
        raise XformerError(f"could not export to {out}: {os_error_line(err)}; nothing was written there") from None
    except SafetensorError as err:  # its own I/O errors (a full disk) come as this, not OSError
        reason = (str(err).strip().splitlines() or ["write failed"])[0]
        raise XformerError(f"could not export to {out}: {reason}; nothing was written there") from None
    return out


def _write_hf_files(tmp: Path, out: Path, hf_config, state: dict[str, torch.Tensor], tokenizer) -> None:
    """Fill ``tmp`` and rename it to ``out`` (empty or absent); ``tmp`` is removed on any failure."""
    try:
        hf_config.save_pretrained(tmp)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, max_positions(hf_config))
        for file in tmp.rglob("*"):  # safetensors writes 0600; an export is read by others, as a checkpoint is
            if file.is_file():
                os.chmod(file, 0o666 & ~_umask())
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def param_pairs(ours: str, hf: str, names: tuple[str, ...] = ("weight", "bias")) -> list[tuple[str, str]]:
    """(our key, HF key) for each parameter ``names`` of a module named ``ours`` here and ``hf`` there."""
    return [(f"{ours}.{n}", f"{hf}.{n}") for n in names]


def warn_unused(src: dict, used: set, what: str) -> None:
    """A warning naming the checkpoint tensors that ``what`` has no place for (heads of other tasks, buffers)."""
    ignored = sorted(set(src) - used)
    if ignored:
        logging.getLogger("xformer.interop").warning(
            "ignoring %d checkpoint tensors that %s does not use: %s", len(ignored), what, ", ".join(ignored))


# ----------------------------------------------------------------------------- sequence classifiers


def is_classifier(hf_config) -> bool:
    """Whether an HF config is a sequence classifier's (``architectures`` names a ``*ForSequenceClassification``)."""
    return any(str(a).endswith("ForSequenceClassification") for a in getattr(hf_config, "architectures", None) or ())


def class_names_from_hf(hf_config) -> list[str] | None:
    """The class names of an HF classifier config in id order (its ``id2label``); None when they are HF's
    placeholders (``LABEL_0``, ``LABEL_1``, ...), which name nothing, or for a regression (one label)."""
    id2label = {int(i): str(name) for i, name in (getattr(hf_config, "id2label", None) or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(len(id2label))]
    if len(names) < 2 or names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    return names


def classifier_to_hf(num_classes: int, class_names: list[str] | None, architecture: str) -> dict:
    """The HF config keys of a sequence classifier with ``num_classes`` outputs (1: a regression,
    ``problem_type`` "regression" as HF's ``num_labels=1``): ``architectures``, ``num_labels``,
    ``id2label`` / ``label2id`` from ``class_names`` (HF's ``LABEL_i`` without them) and ``problem_type``.
    XformerError when there are class names but not one per class."""
    if num_classes == 1 and class_names is not None and len(class_names) != 1:
        class_names = None  # a regression run's classes.json names no classes
    if class_names is not None and len(class_names) != num_classes:
        raise XformerError(f"{len(class_names)} class names for a model with {num_classes} classes")
    names = [str(n) for n in class_names] if class_names is not None else [f"LABEL_{i}" for i in range(num_classes)]
    return {
        "architectures": [architecture],
        "num_labels": num_classes,
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
        "problem_type": "regression" if num_classes == 1 else "single_label_classification",
    }


def hf_model_dir(path_or_id: str | Path, family: str) -> Path:
    """The local HF directory of ``path_or_id`` (a hub id is fetched; offline, XformerError asks for a local
    directory); XformerError when it has no ``config.json``."""
    folder = Path(path_or_id)
    if not folder.exists():
        folder = fetch_from_hub(str(path_or_id))
    if not (folder / "config.json").is_file():
        raise XformerError(f"{folder}: no config.json; expected an HF {family} directory")
    return folder
