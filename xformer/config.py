"""Typed configs: the base of every section, the shared encoder and training sections, the run config
every task extends, and validation.

Every section forbids unknown keys; a mistake is reported as one line naming the key and the
closest valid ones (:func:`format_validation_error`). Each model's config lives with its model
(:mod:`xformer.models`, listed by :mod:`xformer.models.registry`), each data section with the data
code that reads it (:mod:`xformer.data.configs`), and each task's run config (model + data + train
sections, and its own) with its task in :mod:`xformer.tasks`; recipe files and ``--set`` overrides are
read by :mod:`xformer.commands.recipe`.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xformer.errors import XformerError


class Section(BaseModel):
    """Base of every config section: keyword-only, unknown keys rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # Keys that are not architecture: when a model starts from ``init`` its architecture comes from
    # the checkpoint, and these still come from the recipe (see :mod:`xformer.trained.init`).
    runtime_keys: ClassVar[frozenset[str]] = frozenset()


# ----------------------------------------------------------------------------- encoder


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
    bias: bool = Field(True, description="biases in the blocks' linears and LayerNorms; False: none (ModernBERT)")
    act: Literal["gelu", "gelu_tanh", "quick_gelu", "silu"] = "gelu"
    glu: bool = Field(False, description="gated MLP act(x W) * (x V): GeGLU with act gelu, SwiGLU with silu")
    position: Literal["absolute", "rotary"] = Field(
        "absolute", description="absolute: a learned position table; rotary: rotary embeddings in attention")
    rope_theta: float = Field(10000.0, gt=0, description="rotary base of the global-attention blocks")
    local_window: int | None = Field(
        None, gt=1, description="local blocks attend within local_window // 2 positions either side; None: all global")
    global_every: int = Field(3, gt=0, description="with local_window: every global_every-th block (from the first) is global")
    local_rope_theta: float | None = Field(None, gt=0, description="rotary base of local blocks; None: rope_theta")
    final_norm: bool | None = Field(None, description="a LayerNorm after the last block; None: with pre-LN only")
    first_block_norm: bool = Field(
        True, description="False: the first pre-LN block takes its input unnormalised (the embeddings are normalised)")
    attn_backend: Literal["auto", "math", "sdpa", "flash", "varlen"] = "auto"

    runtime_keys: ClassVar[frozenset[str]] = frozenset({"dropout", "attn_dropout", "attn_backend"})

    @property
    def mlp_dim(self) -> int:
        """The hidden width of the MLP (of each half of a gated MLP's first projection)."""
        return round(self.dim * self.mlp_ratio)

    @model_validator(mode="after")
    def _options_fit(self):
        if not self.first_block_norm and not self.norm_first:
            raise ValueError("model.first_block_norm=false applies to pre-LN blocks: set model.norm_first=true")
        if self.mlp_dim < 1:  # a zero-width MLP: every block's MLP would output nothing
            raise ValueError(f"model.mlp_ratio={self.mlp_ratio:g} with model.dim={self.dim} makes MLPs of "
                             f"{self.mlp_dim} units (round({self.dim} x {self.mlp_ratio:g})); raise model.mlp_ratio")
        return self

    def is_global(self, index: int) -> bool:
        """Whether block ``index`` attends to the whole sequence (not only its local window)."""
        return self.local_window is None or index % self.global_every == 0


# ----------------------------------------------------------------------------- training


class WandbConfig(Section):
    enabled: bool = False
    project: str = "xformer"
    name: str | None = None
    mode: Literal["auto", "online", "offline"] = "auto"


class TrainConfig(Section):
    """Optimisation, schedule, logging and checkpointing: shared by every model."""

    max_steps: int | None = Field(None, gt=0, description="the step budget (None: 1000, or epochs); with "
                                  "epochs: caps them; with budget time: training stops at this step if the time "
                                  "is not spent first")
    epochs: float | None = Field(None, gt=0, description="train for this many passes over the data (at most "
                                 "max_steps steps when that is set)")
    max_minutes: float | None = Field(None, gt=0, description="budget steps: stop early after this wall time; "
                                      "budget time: the budget itself")
    budget: Literal["steps", "time"] = Field(
        "steps", description="what the schedule (LR, warmup, batch_ramp) runs over: max_steps / epochs (steps), "
        "or the wall time since training began over max_minutes (time; epochs is then ignored, max_steps only "
        "stops training early, and training ends when the time is spent)")
    batch_size: int = Field(32, gt=0, description="per process, per micro-step")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step (at the end of batch_ramp)")
    batch_ramp: float = Field(0.0, ge=0, lt=1, description="share of the budget over which the micro-batches per "
                              "step grow linearly from 1 to grad_accum (0: off)")
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    warmup_steps: int = Field(0, ge=0, description="budget steps only; or warmup_ratio")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="warmup over this share of the budget; "
                                       "None: warmup_steps, or 0.5 for triangle")
    schedule: Literal["linear", "cosine", "constant", "triangle"] = Field(
        "linear", description="after warmup: linear or cosine decay to min_lr_ratio, or constant; triangle: "
        "linear warmup then linear decay (one-cycle, as Cramming), with its peak mid-budget by default")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    clip_grad: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes: replicate the model (ddp) or shard it per block (fsdp)")
    reshard_after_forward: bool = Field(True, description="fsdp: free gathered parameters after forward")
    compile: bool = Field(False, description="torch.compile each transformer block (the whole model if it has none)")
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in backward")
    prefetch: bool = Field(True, description="read the next micro-batch in a background thread")
    peak_tflops: float | None = Field(None, gt=0, description="the device's peak TFLOP/s for model FLOPs "
                                      "utilisation; None: known GPUs' bf16 dense peak, else no MFU")
    device: str = "auto"
    seed: int = 0
    log_every: int = Field(10, gt=0)
    eval_every: int | Literal["epoch"] = 500
    eval_batches: int | None = Field(50, gt=0, description="None: the whole validation set")
    save_every: int | Literal["epoch"] = 1000
    keep_last: int = Field(2, gt=0)
    progress: bool = True
    save_on_signal_after: float = Field(300.0, ge=0, description="on SIGTERM or Ctrl-C during training, write a "
                                        "checkpoint first when the last one is older than this (seconds)")
    wandb: WandbConfig = WandbConfig()

    @model_validator(mode="after")
    def _budget_is_complete(self):
        if self.warmup_steps and self.warmup_ratio is not None:
            raise ValueError("train.warmup_steps and train.warmup_ratio are both set: set one")
        if self.budget == "time" and self.max_minutes is None:
            raise ValueError("train.budget=time needs train.max_minutes, the budget")
        if self.budget == "time" and self.warmup_steps:
            raise ValueError("train.budget=time: warmup is a share of the time, set train.warmup_ratio "
                             "instead of train.warmup_steps")
        return self


class SweepConfig(Section):
    """A study (``xformer sweep``): one run per combination of ``grid`` values, crossed with each of
    ``variants`` (named sets of overrides, e.g. a whole other model section)."""

    grid: dict[str, list[Any]] = Field({}, description="dotted key -> the values to try")
    variants: dict[str, dict[str, Any]] = Field({}, description="name -> {dotted key: value}; "
                                                  "'{sweep}' in a text value is the sweep's directory")
    metric: str | None = Field(None, description="the validation metric the report ranks by; None: task's")


class RunConfig(Section):
    """What every run has; each task's config adds its model and data sections.

    Written resolved to ``RUN_DIR/config.yaml``.
    """

    task: str
    train: TrainConfig = TrainConfig()
    out_dir: str | None = Field(None, description="default: runs/<recipe name>")
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _sequences_fit(self):
        """Text sequences must fit the model's position table (checked against an init's own table when
        the model starts from one, before any data is prepared)."""
        model, data = getattr(self, "model", None), getattr(self, "data", None)
        max_position, max_seq_len = getattr(model, "max_position", None), getattr(data, "max_seq_len", None)
        if getattr(model, "init", None) is None and max_position and max_seq_len and max_seq_len > max_position:
            raise ValueError(f"data.max_seq_len={max_seq_len} is longer than model.max_position={max_position}: "
                             f"lower one or raise the other")
        return self


# ----------------------------------------------------------------------------- validation


def _section_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel], tuple, bool]:
    """The config class of the section at ``loc`` (a pydantic error location), the keys of ``loc``
    without the tags pydantic adds for union members (``model.cnn.channels`` -> ``model.channels``,
    ``train.eval_every.int`` -> ``train.eval_every``), and whether ``loc`` ends at a section (so the
    error is a check across its keys) rather than at one key."""
    keys = []
    parts = list(loc)
    members: list = [model]
    while parts:
        part = parts.pop(0)
        keys.append(part)
        ann = getattr(model.model_fields.get(part) if isinstance(part, str) else None, "annotation", None)
        members = [a for a in _union_members(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(members) > 1 and parts:  # a tagged union: the next part names the member
            tag = parts.pop(0)
            members = [m for m in members if m.model_fields.get("arch") and m.model_fields["arch"].default == tag]
        if len(members) != 1:
            break
        model = members[0]
    # items inside a key (a tuple's or list's index) are kept as [i]; union tags of a leaf are dropped
    items = "".join(f"[{p}]" for p in parts if isinstance(p, int))
    if items and keys:
        keys[-1] = f"{keys[-1]}{items}"
    return model, tuple(keys), bool(members) and not parts


def _union_members(ann) -> list:
    if ann is None:
        return []
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) is Annotated:
        return _union_members(args[0])
    if get_origin(ann) is Union or get_origin(ann) is types.UnionType:
        return [m for a in args for m in (_union_members(a) if get_origin(a) is Annotated else [a])]
    return [ann]


# what pydantic puts before the message of a validator's own exception
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")
_SHOWN_CHARS = 80  # a value longer than this is cut in messages: one line, not a dump


def _message(e: dict) -> str:
    """pydantic's message for one error, without the prefix it adds to a validator's own words."""
    msg = str(e["msg"]).replace("\n", " ")
    for prefix in _PYDANTIC_PREFIXES:
        msg = msg.removeprefix(prefix)
    return msg


def _shown(value: Any) -> str:
    """``repr(value)`` cut to one short line."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def format_validation_error(err: ValidationError, model: type[BaseModel], origin: str, section: str = "") -> str:
    """The first problem in ``err`` as one line naming the key, the value and what was expected;
    ``section`` is the dotted place of ``model`` in the whole config (e.g. ``"model"``). A check across
    several keys (a section's validator) is its own sentence, which names them, without the section's values."""
    e = err.errors()[0]
    where = (section,) if section else ()
    if e["type"] == "extra_forbidden":
        section_cls, loc, _ = _section_at(model, tuple(e["loc"])[:-1])
        valid = list(section_cls.model_fields)
        name = str(e["loc"][-1])
        prefix = ".".join(str(p) for p in where + loc)
        key = f"{prefix}.{name}" if prefix else name
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(f'{prefix}.{c}' if prefix else c for c in close)}?" if close else ""
        return f"{origin}: unknown key {key!r}{hint} (valid keys: {', '.join(valid)})"
    _, loc, at_section = _section_at(model, tuple(e["loc"]))
    key = ".".join(str(p) for p in where + loc)
    if at_section and e["type"] in ("value_error", "assertion_error"):  # a section's own check: it names its keys
        return f"{origin}: {_message(e)}"
    if e["type"] == "missing":
        return f"{origin}: {key or 'the config'}: required, not set"
    if at_section and isinstance(e.get("input"), dict):  # a wrong section as a whole: not its values
        return f"{origin}: {key or 'the config'}: {_message(e)}"
    return f"{origin}: {key}: {_message(e)} (got {_shown(e.get('input'))})"


def validate(model: type[BaseModel], data: Any, origin: str, section: str = "") -> Any:
    """``data`` validated as ``model``; XformerError naming the first bad key otherwise."""
    if not isinstance(data, dict):
        raise XformerError(f"{origin}: {section or 'the config'} must be a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise XformerError(format_validation_error(err, model, origin, section)) from None


def load_yaml(path: str | Path, what: str = "recipe") -> dict:
    """A YAML mapping from ``path``; ``what`` names the file in messages (a recipe, a run's config)."""
    path = Path(path)
    if not path.is_file():
        raise XformerError(f"{what} not found: {path}" if not path.is_dir() else f"{path}: a directory, not a {what} file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise XformerError(f"{path}: not a text file (not UTF-8); a {what} is YAML text") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise XformerError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise XformerError(f"{path}: a {what} is a mapping of sections, got {type(data).__name__}")
    return data


def config_text(cfg: BaseModel) -> str:
    """The YAML text of a resolved config, as saved with a run and in every checkpoint."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(config_text(cfg))
