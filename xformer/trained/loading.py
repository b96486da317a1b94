"""``xformer.load``: one entry point for trained runs, checkpoints and Hugging Face models (BERT, ModernBERT,
ViT, CLIP).

HF conversion (and the transformers import it needs) happens only for HF inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model
from torch import nn

from xformer.config import EncoderConfig, Section, load_yaml
from xformer.errors import XformerError
from xformer.models.registry import build_model, hf_format, model_config
from xformer.train.checkpoint import list_checkpoints, verify_checkpoint
from xformer.train.checkpointer import first_non_finite

EXPECTED = ("expected an xformer run directory (config.yaml + checkpoints/), a checkpoint directory "
            "(model.safetensors + config.yaml), an HF BERT, ModernBERT, ViT, CLIP or sentence-transformers "
            "directory, or hf:<dir or hub id>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


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


def checkpoint_of(path: Path) -> Path:
    """The checkpoint that loading ``path`` reads, once it is intact: ``path`` itself, or a run's newest
    checkpoint, never an older one in its place (that would be another model). Intact means the sizes and
    SHA-256 sums of its ``manifest.json`` match (hashed once per process while its files are unchanged);
    XformerError naming the checkpoint and the damaged file otherwise."""
    if _kind(path) == "run":
        found = list_checkpoints(path)
        if not found:
            raise XformerError(f"{path}: this run has no checkpoints yet (checkpoints/step_* is empty)")
        path = found[-1]
    if (reason := verify_checkpoint(path)) is not None:
        raise XformerError(f"checkpoint {path} is damaged: {reason}; restore it from a copy, or delete it to "
                           f"use an older one")
    return path


def refuse_non_finite(model: nn.Module, what: str) -> nn.Module:
    """``model``, once no weight of it holds NaN or Inf (training never saves such weights, so they are
    damage); XformerError naming ``what`` and the first such weight otherwise."""
    if (bad := first_non_finite(model)) is not None:
        raise XformerError(f"{what}: the weights are not finite (first: {bad}); refusing to use them")
    return model


def with_attn_backend(cfg: Section, attn_backend: str) -> Section:
    """``cfg`` with ``attn_backend`` in every encoder section it holds (itself, CLIP's towers)."""
    if isinstance(cfg, EncoderConfig):
        return cfg.model_copy(update={"attn_backend": attn_backend})
    towers = {name: with_attn_backend(getattr(cfg, name), attn_backend) for name in type(cfg).model_fields
              if isinstance(getattr(cfg, name), Section)}
    return cfg.model_copy(update=towers)


def _load_checkpoint(ckpt: Path, attn_backend: str) -> nn.Module:
    config_file = ckpt / "config.yaml"
    tree = load_yaml(config_file, "checkpoint config")
    if not isinstance(tree.get("model"), dict):
        raise XformerError(f"{config_file}: no model section; the checkpoint's config is incomplete")
    model_cfg = with_attn_backend(model_config(tree["model"], str(config_file)), attn_backend)
    try:
        model = build_model(model_cfg)
    except ValueError as err:  # a size the run fills in from its data (vocab_size, num_classes) is missing
        raise XformerError(f"{config_file}: incomplete model config: {err}") from None
    weights = ckpt / "model.safetensors"
    try:
        load_model(model, weights)
    except (SafetensorError, OSError) as err:  # a checkpoint without a manifest is checked only here
        raise XformerError(f"{weights} cannot be read: {str(err).strip().splitlines()[0]}") from None
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        raise XformerError(f"{weights} does not match {config_file}: {reason}") from None
    return refuse_non_finite(model, str(weights)).eval()


def _hf_folder(source: str) -> tuple[Path, Path]:
    """The local folder of an HF directory or hub id (fetched), and the HF model directory in it (a
    sentence-transformers folder keeps it in a sub-folder)."""
    from xformer.hub import fetch_from_hub
    from xformer.interop.hf_bert import transformer_dir

    folder = Path(source) if Path(source).exists() else fetch_from_hub(source)
    return folder, transformer_dir(folder) if folder.is_dir() else folder


def _load_hf(source: str, attn_backend: str) -> nn.Module:
    """An HF directory or hub id, converted by the registered format of its config.json's ``model_type``."""
    from xformer.interop import hf_function

    folder, model_dir = _hf_folder(source)
    config_file = model_dir / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        raise XformerError(f"{config_file}: not a JSON object; expected an HF config.json") from None
    fmt = hf_format(model_type)
    return hf_function(fmt, fmt.load)(str(folder), attn_backend=attn_backend)


def _read_hf_config(source: str):
    """The HF config (``config.json``) of an HF directory, sentence-transformers folder or hub id."""
    import transformers

    _, folder = _hf_folder(source)
    try:
        return transformers.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise XformerError(f"{folder}: not an HF model config ({str(err).strip().splitlines()[0][:160]})") from None


def _is_hf(path: str | Path) -> bool:
    return str(path).startswith("hf:") or _kind(Path(path)) == "hf"


def load_config(path: str | Path) -> Section:
    """The model config of what :func:`load` would load from ``path``, without reading any weights (an HF
    sequence classifier's is a classifier config, with its ``num_labels`` classes)."""
    from xformer.interop import hf_function

    text = str(path)
    if not _is_hf(path):
        ckpt = checkpoint_of(Path(path))  # hashed once: the load that follows does not hash again
        tree = load_yaml(ckpt / "config.yaml", "checkpoint config")
        return model_config(tree.get("model"), str(ckpt / "config.yaml"))
    hf_config = _read_hf_config(text.removeprefix("hf:"))
    return hf_function(hf_format(hf_config.model_type), "config_from_hf")(hf_config)


def load_class_names(path: str | Path) -> list[str] | None:
    """The class names of the classifier :func:`load` would load from ``path``, in output order: a run's
    ``classes.json`` (a checkpoint's run's); an HF sequence classifier's ``id2label``. None where there are
    none: no ``classes.json``, a model that is not a classifier, HF's placeholder names (``LABEL_0``, ...)."""
    if _is_hf(path):
        from xformer.interop.common import class_names_from_hf, is_classifier

        hf_config = _read_hf_config(str(path).removeprefix("hf:"))
        return class_names_from_hf(hf_config) if is_classifier(hf_config) else None
    path = Path(path)
    root = path if _kind(path) == "run" else path.parent.parent  # a checkpoint is RUN/checkpoints/step_N
    classes = root / "classes.json"
    if not classes.is_file():
        return None
    try:
        names = json.loads(classes.read_text())
    except json.JSONDecodeError:
        raise XformerError(f"{classes}: not JSON; expected the run's list of class names") from None
    return [str(n) for n in names] if isinstance(names, list) else None


def load(path: str | Path, attn_backend: str = "sdpa") -> nn.Module:
    """Load a model for inference (eval mode, on the CPU).

    ``attn_backend`` defaults to ``sdpa``, which runs in any precision on any device; pass ``flash`` or
    ``auto`` for flash-attn's kernel (fp16/bf16 activations, e.g. under ``torch.autocast``).

    ``path`` is one of:

    - an xformer run directory (``config.yaml`` + ``checkpoints/step_*``): its latest checkpoint;
    - an xformer checkpoint directory (``model.safetensors`` + ``config.yaml``);
    - an HF directory or sentence-transformers folder, or ``hf:<dir or hub id>``, converted by the
      registered HF format of its ``model_type`` (:mod:`xformer.models.registry`): an HF BERT (or an
      unknown model type): :func:`xformer.interop.hf_bert.load_hf_bert` (``BertForSequenceClassification``
      for a sequence classifier, whose class names :func:`load_class_names` gives; ``BertForPreTraining``
      with heads; else ``BertModel``);
      an HF ModernBERT (``model_type`` "modernbert"): :func:`xformer.interop.hf_modernbert.load_hf_modernbert`
      (the same classes, MLM only, a classifier with ModernBERT's head); an HF ViT ("vit"):
      :func:`xformer.interop.hf_vit.load_hf_vit` (with its classifier, else the backbone); an HF CLIP
      ("clip"): :func:`xformer.interop.hf_clip.load_hf_clip`.

    A checkpoint is read only once its ``manifest.json`` vouches for it (sizes and SHA-256 sums; a damaged
    newest one is refused, not replaced by an older one: :func:`checkpoint_of`); weights holding NaN or
    Inf are refused. Anything else raises XformerError naming the path.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise XformerError(f"xformer.load: got {path!r}; {EXPECTED}")
    text = str(path)
    if text.startswith("hf:") or _kind(Path(path)) == "hf":
        return refuse_non_finite(_load_hf(text.removeprefix("hf:"), attn_backend), text)
    return _load_checkpoint(checkpoint_of(Path(path)), attn_backend)


def tokenizer_dir(path: str | Path) -> str:
    """Where the tokenizer of what :func:`load` would load from ``path`` is: a run directory's
    ``tokenizer/``; a checkpoint's run's; an HF or sentence-transformers directory's own; a tokenizer
    directory itself; for ``hf:<dir or hub id>``, that model's (a hub id stays a hub id)."""
    from xformer.interop.hf_bert import transformer_dir

    text = str(path)
    if text.startswith("hf:"):
        source = text[3:]
        return str(transformer_dir(Path(source))) if Path(source).is_dir() else source
    path = Path(path)
    if path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES) and not (path / "config.yaml").is_file():
        return str(path)
    kind = _kind(path)
    if kind == "run":
        tok_dir = path / "tokenizer"
    elif kind == "checkpoint":
        tok_dir = path.parent.parent / "tokenizer"
    else:
        tok_dir = transformer_dir(path)
    if not tok_dir.is_dir():
        raise XformerError(f"{path}: no tokenizer found (looked for {tok_dir})")
    return str(tok_dir)


def load_tokenizer(path: str | Path):
    """The HF tokenizer belonging to what :func:`load` would load from ``path`` (see :func:`tokenizer_dir`)."""
    from transformers import AutoTokenizer

    target = tokenizer_dir(path)
    try:
        return AutoTokenizer.from_pretrained(target)
    except OSError as err:
        reason = str(err).strip().splitlines()[0]
        raise XformerError(f"could not load a tokenizer from {target}: {reason}") from None
