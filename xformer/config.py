"""Typed configs, one per component, and the recipe loader.

A run's config is the defaults below, then a YAML recipe, then ``--set a.b=c`` overrides. Every
section forbids unknown keys; a mistake is reported as one line naming the key and the closest
valid ones (see :func:`load_recipe`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xformer.errors import XformerError


class Section(BaseModel):
    """Base of every config section: keyword-only, unknown keys rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ----------------------------------------------------------------------------- model


class EncoderConfig(Section):
    """The shared transformer encoder: the one vocabulary every model uses."""

    dim: int = Field(768, gt=0)
    depth: int = Field(12, gt=0)
    num_heads: int = Field(12, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    attn_dropout: float = Field(0.1, ge=0, lt=1)
    norm_first: bool = False  # False: post-LN (original BERT); True: pre-LN (ViT, CLIP)
    norm_eps: float = 1e-12
    qkv_bias: bool = True
    act: Literal["gelu", "gelu_tanh", "quick_gelu"] = "gelu"
    attn_backend: Literal["auto", "math", "sdpa", "flash"] = "auto"

    @property
    def mlp_dim(self) -> int:
        return round(self.dim * self.mlp_ratio)


class BertConfig(EncoderConfig):
    """BERT: token embeddings + encoder + pooler, with MLM and NSP heads for pretraining."""

    arch: Literal["bert"] = "bert"
    vocab_size: int | None = Field(None, gt=0, description="None: taken from the tokenizer")
    max_position: int = Field(512, gt=0)
    type_vocab_size: int = Field(2, gt=0)
    pad_token_id: int = 0
    init_std: float = 0.02
    init: str | None = Field(None, description="hf:<dir or hub id>, a run dir or a checkpoint")


# ----------------------------------------------------------------------------- data


class TokenizerConfig(Section):
    """Either an existing HF tokenizer (``path``) or a WordPiece tokenizer trained on the corpus."""

    path: str | None = Field(None, description="HF tokenizer dir or hub name; None trains WordPiece")
    vocab_size: int = Field(30522, gt=0)
    lowercase: bool = True
    train_documents: int | None = Field(20000, description="documents used to train WordPiece")


class DataConfig(Section):
    """Corpus, tokenizer, BERT example creation and batch-time masking."""

    source: str | list[str] | None = Field(None, description="HF dataset name, or Parquet/text files/globs")
    text_column: str = "text"
    split: str = "train"
    max_documents: int | None = Field(None, gt=0)
    val_documents: int = Field(100, ge=0, description="held-out documents for evaluation")
    tokenizer: TokenizerConfig = TokenizerConfig()
    max_seq_len: int = Field(128, ge=8)
    short_seq_prob: float = Field(0.1, ge=0, le=1)
    nsp_random_prob: float = Field(0.5, ge=0, le=1)
    dupe_factor: int = Field(1, gt=0)
    mlm_prob: float = Field(0.15, gt=0, lt=1)
    mask_token_prob: float = Field(0.8, ge=0, le=1)
    random_token_prob: float = Field(0.1, ge=0, le=1)
    whole_word_mask: bool = False
    cache_dir: str | None = Field(None, description="default: $XFORMER_CACHE or ~/.cache/xformer")
    seed: int = 0


# ----------------------------------------------------------------------------- training


class WandbConfig(Section):
    enabled: bool = False
    project: str = "xformer"
    name: str | None = None
    mode: Literal["auto", "online", "offline"] = "auto"


class TrainConfig(Section):
    """Optimisation, schedule, logging and checkpointing: shared by every model."""

    max_steps: int = Field(1000, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="stop early after this wall time")
    batch_size: int = Field(32, gt=0, description="per process, per micro-step")
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    clip_grad: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(500, gt=0)
    eval_batches: int = Field(50, gt=0)
    save_every: int = Field(1000, gt=0)
    keep_last: int = Field(2, gt=0)
    progress: bool = True
    wandb: WandbConfig = WandbConfig()


class RunConfig(Section):
    """Everything one run needs; written resolved to ``RUN_DIR/config.yaml``."""

    model: BertConfig = BertConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    out_dir: str | None = Field(None, description="default: runs/<recipe name>")


# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise XformerError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    for i, part in enumerate(path[:-1]):
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise XformerError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        tree = node
    tree[path[-1]] = value


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys of the section at ``loc`` (a pydantic error location)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return list(model.model_fields)


def format_validation_error(err: ValidationError, model: type[BaseModel], origin: str) -> str:
    """The first problem in ``err`` as one line naming the key, the value and what was expected."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=3, cutoff=0.5)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = f"; did you mean {', '.join(f'{prefix}.{c}' if prefix else c for c in close)}?" if close else ""
        return f"{origin}: unknown key {key!r}{hint} (valid keys: {', '.join(valid)})"
    return f"{origin}: {key}: {e['msg']} (got {e.get('input')!r})"


def validate(model: type[BaseModel], data: dict, origin: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise XformerError(format_validation_error(err, model, origin)) from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise XformerError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise XformerError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise XformerError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return data


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Defaults, then the recipe file (if any), then ``key=value`` overrides, validated."""
    tree = load_yaml(path) if path is not None else {}
    origin = str(path) if path is not None else "config"
    if tree and path is not None:
        validate(RunConfig, tree, origin)  # blame the file before the overrides
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(tree, keys, value)
    cfg = validate(RunConfig, tree, origin if not overrides else f"{origin} with --set")
    if cfg.out_dir is None and path is not None:
        cfg.out_dir = str(Path("runs") / Path(path).stem)
    return cfg


def save_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
