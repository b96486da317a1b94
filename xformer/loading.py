"""``xformer.load``: one entry point for trained runs, checkpoints and Hugging Face BERT and CLIP models.

HF conversion (and the transformers import it needs) happens only for HF inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_model
from torch import nn

from xformer.checkpoint import latest_checkpoint
from xformer.config import load_yaml, parse_config
from xformer.errors import XformerError
from xformer.models import build_model

EXPECTED = ("expected an xformer run directory (config.yaml + checkpoints/), a checkpoint directory "
            "(model.safetensors + config.yaml), an HF BERT, CLIP or sentence-transformers directory, "
            "or hf:<dir or hub id>")


def _kind(path: Path) -> str:
    """'run', 'checkpoint' or 'hf' for a local directory; XformerError for anything else."""
    if not path.exists():
        raise XformerError(f"{path}: no such file or directory; {EXPECTED}")
    if path.is_dir():
        if (path / "model.safetensors").is_file() and (path / "config.yaml").is_file():
            return "checkpoint"
        if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
            return "run"
        if (path / "config.json").is_file() or (path / "modules.json").is_file():
            return "hf"
    raise XformerError(f"{path}: not a model; {EXPECTED}")


def _load_checkpoint(ckpt: Path, attn_backend: str) -> nn.Module:
    config_file = ckpt / "config.yaml"
    model_cfg = parse_config(load_yaml(config_file), str(config_file)).model
    if "attn_backend" in type(model_cfg).model_fields:  # transformer models; the CNN has none
        model_cfg = model_cfg.model_copy(update={"attn_backend": attn_backend})
    elif model_cfg.arch == "clip":  # both towers
        model_cfg = model_cfg.model_copy(update={t: getattr(model_cfg, t).model_copy(update={"attn_backend": attn_backend})
                                                 for t in ("vision", "text")})
    model = build_model(model_cfg)
    try:
        load_model(model, ckpt / "model.safetensors")
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        raise XformerError(f"{ckpt / 'model.safetensors'} does not match {config_file}: {reason}") from None
    return model.eval()


def _load_hf(source: str, attn_backend: str) -> nn.Module:
    """An HF directory or hub id, by its config.json's ``model_type``: CLIP, else BERT."""
    from xformer.interop.common import fetch_from_hub

    folder = Path(source) if Path(source).exists() else fetch_from_hub(source)
    config_file = folder / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        raise XformerError(f"{config_file}: not a JSON object; expected an HF config.json") from None
    if model_type == "clip":
        from xformer.interop.hf_clip import load_hf_clip

        return load_hf_clip(str(folder), attn_backend=attn_backend)
    from xformer.interop.hf_bert import load_hf_bert

    return load_hf_bert(str(folder), attn_backend=attn_backend)


def load(path: str | Path, attn_backend: str = "sdpa") -> nn.Module:
    """Load a model for inference (eval mode, on the CPU).

    ``attn_backend`` defaults to ``sdpa``, which runs in any precision on any device; pass ``flash`` or
    ``auto`` for flash-attn's kernel (fp16/bf16 activations, e.g. under ``torch.autocast``).

    ``path`` is one of:

    - an xformer run directory (``config.yaml`` + ``checkpoints/step_*``): its latest checkpoint;
    - an xformer checkpoint directory (``model.safetensors`` + ``config.yaml``);
    - an HF BERT directory or sentence-transformers folder, or ``hf:<dir or hub id>``: see
      :func:`xformer.interop.load_hf_bert` (``BertForPreTraining`` with heads, else ``BertModel``);
      an HF CLIP (``model_type`` "clip" in its config.json): :func:`xformer.interop.hf_clip.load_hf_clip`.

    Anything else raises XformerError naming the path.
    """
    text = str(path)
    if text.startswith("hf:"):
        return _load_hf(text[3:], attn_backend)
    path = Path(path)
    kind = _kind(path)
    if kind == "hf":
        return _load_hf(str(path), attn_backend)
    if kind == "run":
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise XformerError(f"{path}: this run has no checkpoints yet (checkpoints/step_* is empty)")
        path = ckpt
    return _load_checkpoint(path, attn_backend)


def load_tokenizer(path: str | Path):
    """The HF tokenizer belonging to what :func:`load` would load from ``path``.

    A run directory's ``tokenizer/``; for a checkpoint, its run's (``ckpt.parent.parent / "tokenizer"``);
    an HF or sentence-transformers directory's own; for ``hf:<dir or hub id>``, that model's.
    """
    from transformers import AutoTokenizer

    from xformer.interop.hf_bert import transformer_dir

    text = str(path)
    if text.startswith("hf:"):
        source = text[3:]
        target = str(transformer_dir(Path(source))) if Path(source).is_dir() else source
    else:
        path = Path(path)
        kind = _kind(path)
        if kind == "run":
            tok_dir = path / "tokenizer"
        elif kind == "checkpoint":
            tok_dir = path.parent.parent / "tokenizer"
        else:
            tok_dir = transformer_dir(path)
        if not tok_dir.is_dir():
            raise XformerError(f"{path}: no tokenizer found (looked for {tok_dir})")
        target = str(tok_dir)
    try:
        return AutoTokenizer.from_pretrained(target)
    except OSError as err:
        reason = str(err).strip().splitlines()[0]
        raise XformerError(f"could not load a tokenizer from {target}: {reason}") from None
