"""Typed configs, one per component: the schemas every recipe is validated against.

Every section forbids unknown keys; a mistake is reported as one line naming the key and the
closest valid ones (:func:`format_validation_error`). Each task's run config (model + data + train
sections) lives with its task in :mod:`xformer.tasks`; recipe files and ``--set`` overrides are read
by :mod:`xformer.commands.recipe`.
"""

from __future__ import annotations

import difflib
import math
import types
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from xformer.errors import XformerError


class Section(BaseModel):
    """Base of every config section: keyword-only, unknown keys rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # Keys that are not architecture: when a model starts from ``init`` its architecture comes from
    # the checkpoint, and these still come from the recipe (see :mod:`xformer.trained.init`).
    runtime_keys: ClassVar[frozenset[str]] = frozenset()


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
        return self

    def is_global(self, index: int) -> bool:
        """Whether block ``index`` attends to the whole sequence (not only its local window)."""
        return self.local_window is None or index % self.global_every == 0


class BertConfig(EncoderConfig):
    """BERT: token embeddings + encoder + pooler, with MLM and NSP heads for pretraining."""

    arch: Literal["bert"] = "bert"
    vocab_size: int | None = Field(None, gt=0, description="None: taken from the tokenizer")
    max_position: int = Field(512, gt=0, description="the longest sequence (the position table's size if absolute)")
    type_vocab_size: int = Field(2, ge=0, description="0: no segment embeddings")
    embed_norm: bool | None = Field(None, description="a LayerNorm on the embeddings; None: with post-LN only")
    pad_token_id: int = 0
    init_std: float = 0.02
    init: str | None = Field(None, description="hf:<dir or hub id>, a run dir or a checkpoint")
    nsp: bool = Field(True, description="the pooler and next-sentence head; pretraining sets it from data.objective")

    runtime_keys: ClassVar[frozenset[str]] = EncoderConfig.runtime_keys | {"init", "nsp"}


class BertClassifierConfig(BertConfig):
    """BERT with a classification head on the pooled [CLS] token (e.g. SST-2 sentiment)."""

    arch: Literal["bert_classifier"] = "bert_classifier"
    num_classes: int | None = Field(None, gt=0, description="None: taken from the data")
    nsp: Literal[True] = Field(True, description="the classifier reads the pooled [CLS] token")

    runtime_keys: ClassVar[frozenset[str]] = BertConfig.runtime_keys | {"num_classes"}


class ViTConfig(EncoderConfig):
    """Vision transformer: patch embedding + [CLS] + learned positions + pre-LN encoder + head."""

    arch: Literal["vit"] = "vit"
    image_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    in_channels: int = Field(3, gt=0)
    num_classes: int | None = Field(None, gt=0, description="None: taken from the data")
    pool: Literal["cls", "mean"] = "cls"
    pre_norm: bool = Field(False, description="LayerNorm on the embedded tokens before the encoder (CLIP)")
    patch_bias: bool = True
    norm_first: bool = True
    norm_eps: float = 1e-6
    dropout: float = Field(0.0, ge=0, lt=1)
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = 0.02
    init: str | None = Field(None, description="hf:<dir or hub id>, a run dir or a checkpoint")

    runtime_keys: ClassVar[frozenset[str]] = EncoderConfig.runtime_keys | {"init", "num_classes", "pool"}

    @model_validator(mode="after")
    def _learned_patch_positions(self):
        if self.position != "absolute":
            raise ValueError(f"model.position={self.position} is for token encoders; a ViT keeps learned patch positions")
        return self


class CNNConfig(Section):
    """The small CNN baseline: 3 blocks of (conv, ReLU, BatchNorm) x convs_per_block, max-pool, dropout;
    then 2 fully connected layers."""

    arch: Literal["cnn"] = "cnn"
    channels: tuple[int, int, int] = (32, 64, 128)
    convs_per_block: int = Field(2, gt=0)
    batch_norm: bool = True
    dropout: float = Field(0.2, ge=0, lt=1)
    hidden: int = Field(128, gt=0)
    fc_dropout: float = Field(0.5, ge=0, lt=1)
    image_size: int = Field(32, gt=0)
    in_channels: int = Field(3, gt=0)
    num_classes: int | None = Field(None, gt=0, description="None: taken from the data")
    init: str | None = Field(None, description="a run dir or a checkpoint of a CNN")

    runtime_keys: ClassVar[frozenset[str]] = frozenset({"init", "num_classes", "dropout", "fc_dropout"})


class HFImageConfig(Section):
    """Any HF image classifier (e.g. ResNetForImageClassification), loaded from ``init`` with a new head."""

    arch: Literal["hf_image"] = "hf_image"
    init: str = Field(..., description="hf:<dir or hub id>")
    image_size: int = Field(224, gt=0)
    num_classes: int | None = Field(None, gt=0)

    runtime_keys: ClassVar[frozenset[str]] = frozenset({"init", "image_size", "num_classes"})


class TextConfig(EncoderConfig):
    """A text encoder for CLIP: token embeddings + the shared encoder, pooled at the last real token
    (``pool="eot"``, with ``causal=True`` as in CLIP) or at the first one (``pool="cls"``, bidirectional,
    as BERT). ``init`` starts it from a BERT (our run or ``hf:``); the architecture then comes from there."""

    vocab_size: int | None = Field(None, gt=0, description="None: taken from the tokenizer")
    max_position: int = Field(77, gt=0)
    type_vocab_size: int = Field(0, ge=0, description="0: no segment embeddings (CLIP); BERT has 2")
    embed_norm: bool | None = Field(None, description="a LayerNorm on the embeddings; None: with post-LN only")
    pad_token_id: int = 0
    causal: bool = True
    pool: Literal["eot", "cls"] = "eot"
    norm_first: bool = True
    norm_eps: float = 1e-5
    dropout: float = Field(0.0, ge=0, lt=1)
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = 0.02
    init: str | None = Field(None, description="a BERT: hf:<dir or hub id>, a run dir or a checkpoint")

    runtime_keys: ClassVar[frozenset[str]] = EncoderConfig.runtime_keys | {"init", "causal", "pool"}


class ClipVisionConfig(ViTConfig):
    """CLIP's image tower: a ViT with a LayerNorm before the encoder and no bias in the patch projection."""

    image_size: int = Field(64, gt=0)
    patch_size: int = Field(8, gt=0)
    dim: int = Field(256, gt=0)
    depth: int = Field(6, gt=0)
    num_heads: int = Field(4, gt=0)
    pre_norm: bool = True
    patch_bias: bool = False
    norm_eps: float = 1e-5


class ClipConfig(Section):
    """CLIP-style dual encoder: a ViT image tower and a text tower, each with a linear projection into a
    joint ``embed_dim`` space, and a learnable temperature. ``init`` loads a whole CLIP (``hf:`` or a run);
    ``vision.init`` / ``text.init`` load one tower each."""

    arch: Literal["clip"] = "clip"
    vision: ClipVisionConfig = ClipVisionConfig()
    text: TextConfig = TextConfig(dim=256, depth=4, num_heads=4)
    embed_dim: int = Field(256, gt=0)
    logit_scale_init: float = Field(math.log(1 / 0.07), description="log of the initial inverse temperature")
    logit_scale_max: float = Field(math.log(100), description="the log scale is clamped here")
    lock_image: bool = Field(False, description="freeze the image tower, projection included (LiT)")
    init: str | None = Field(None, description="a CLIP: hf:<dir or hub id>, a run dir or a checkpoint")

    # the towers are sections of their own: their runtime keys come from the recipe as well
    runtime_keys: ClassVar[frozenset[str]] = frozenset({"init", "lock_image", "logit_scale_max"})


def _arch_tag(value: Any) -> str:
    return value.get("arch", "vit") if isinstance(value, dict) else getattr(value, "arch", "vit")


ImageModelConfig = Annotated[
    Annotated[ViTConfig, Tag("vit")] | Annotated[CNNConfig, Tag("cnn")] | Annotated[HFImageConfig, Tag("hf_image")],
    Discriminator(_arch_tag),
]


# ----------------------------------------------------------------------------- data


class TokenizerConfig(Section):
    """Either an existing HF tokenizer (``path``) or a WordPiece tokenizer trained on the corpus."""

    path: str | None = Field(None, description="HF tokenizer dir or hub name; None trains WordPiece")
    vocab_size: int = Field(30522, gt=0)
    lowercase: bool = True
    train_documents: int | None = Field(20000, description="documents used to train WordPiece")
    train_chars: int | None = Field(None, gt=0, description="character budget of the WordPiece training sample")


class DataConfig(Section):
    """Corpus, tokenizer, BERT example creation and batch-time masking."""

    source: str | list[str] | None = Field(None, description="HF dataset name, or Parquet/text files/globs")
    text_column: str = "text"
    split: str = "train"
    max_documents: int | None = Field(None, gt=0, description="the corpus's first N records, blank ones included")
    val_documents: int = Field(100, ge=0, description="held-out documents for evaluation")
    tokenizer: TokenizerConfig = TokenizerConfig()
    num_workers: int | None = Field(None, gt=0, description="processes preparing the examples; None: one per core")
    shard_documents: int = Field(1000, gt=0, description="corpus records per shard, a worker's unit of work")
    max_seq_len: int = Field(128, ge=8)
    objective: Literal["mlm_nsp", "mlm"] = Field(
        "mlm_nsp", description="mlm_nsp: BERT's sentence pairs; mlm: packed full-length sequences, no NSP")
    document_mask: bool = Field(False, description="objective mlm: a token attends only within its own document "
                                "of the packed row, where rotary positions restart")
    short_seq_prob: float = Field(0.1, ge=0, le=1)
    nsp_random_prob: float = Field(0.5, ge=0, le=1)
    dupe_factor: int = Field(1, gt=0)
    mlm_prob: float = Field(0.15, gt=0, lt=1)
    mask_token_prob: float = Field(0.8, ge=0, le=1)
    random_token_prob: float = Field(0.1, ge=0, le=1)
    whole_word_mask: bool = False
    cache_dir: str | None = Field(None, description="default: $XFORMER_CACHE or ~/.cache/xformer")
    seed: int = 0

    @model_validator(mode="after")
    def _documents_are_packed(self):
        if self.document_mask and self.objective != "mlm":
            raise ValueError("data.document_mask applies to packed rows: set data.objective=mlm")
        return self


class SplitDataConfig(Section):
    """Where a dataset comes from: a training source and split, and an optional separate validation
    source (otherwise ``val_size`` items are carved from the training source with ``seed``)."""

    source: str | list[str] | None = Field(None, description="HF dataset name, Parquet files/globs, or a folder")
    split: str = "train"
    val_source: str | list[str] | None = Field(None, description="None: carve val_size items from source")
    val_split: str | None = None
    cache_dir: str | None = Field(None, description="default: $XFORMER_CACHE or ~/.cache/xformer")
    seed: int = 0


class ImageDataConfig(SplitDataConfig):
    """Labelled images: an HF dataset name, Parquet files or an image folder (one sub-folder per class)."""

    image_column: str | None = Field(None, description="None: auto-detect (img, image, ...)")
    label_column: str | None = Field(None, description="None: auto-detect (label, labels, ...)")
    val_size: int = Field(5000, ge=0)
    test_source: str | list[str] | None = None
    test_split: str | None = None
    image_size: int | None = Field(None, gt=0, description="resize to this (square); None: keep (all equal)")
    max_images: int | None = Field(None, gt=0)
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


class AugmentConfig(Section):
    """Training-time augmentation, on tensors, on the training device."""

    crop_padding: int = Field(4, ge=0, description="random crop after padding by this many pixels; 0: off")
    hflip: bool = True
    policy: Literal["none", "trivial", "randaugment"] = "none"
    randaugment_ops: int = Field(2, gt=0)
    magnitude: int = Field(9, ge=0, le=30)
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    mix_prob: float = Field(1.0, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class CaptionDataConfig(SplitDataConfig):
    """Image-caption pairs (Parquet with an image column and a caption column of strings or lists of
    strings, or an HF dataset name) and the tokenizer for the captions."""

    image_column: str | None = Field(None, description="None: auto-detect (image, img, ...)")
    caption_column: str | None = Field(None, description="None: auto-detect (captions, caption, text, ...)")
    val_size: int = Field(500, ge=0)
    image_size: int | None = Field(None, gt=0, description="resize when decoding; None: keep (all equal)")
    max_images: int | None = Field(None, gt=0)
    max_text_len: int = Field(32, ge=4)
    tokenizer: TokenizerConfig = TokenizerConfig(vocab_size=8000, train_documents=None)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class TextClassificationDataConfig(SplitDataConfig):
    """Labelled texts: Parquet / JSONL files or an HF dataset name, with a text and a label column."""

    text_column: str | None = Field(None, description="None: auto-detect (sentence, text, ...)")
    label_column: str | None = Field(None, description="None: auto-detect (label, labels, ...)")
    val_size: int = Field(1000, ge=0)
    max_examples: int | None = Field(None, gt=0)
    max_seq_len: int = Field(128, ge=4)
    tokenizer: TokenizerConfig = TokenizerConfig(vocab_size=16000, train_documents=None)


class ClipAugmentConfig(Section):
    """Training-time image augmentation for contrastive training (on the device)."""

    crop_scale: tuple[float, float] = Field((0.5, 1.0), description="random resized crop area range; (1, 1): off")
    hflip: bool = False


class ZeroShotConfig(Section):
    """Evaluation during training: zero-shot classification and retrieval on an image-caption split."""

    source: str | list[str] | None = Field(None, description="labelled images (e.g. CIFAR-10); None: skip")
    split: str = "test"
    max_images: int | None = Field(None, gt=0, description="the first N images only")
    classes: list[str] | None = Field(None, description="None: the dataset's class names")
    templates: list[str] | None = Field(None, description="None: the CIFAR-10 templates; '{c}' is the class")
    retrieval: bool = Field(True, description="image<->text recall@K on the validation split")
    batch_size: int = Field(256, gt=0)


class FinetuneConfig(Section):
    """What to train when starting from a checkpoint."""

    freeze: Literal["none", "backbone", "all_but_last"] = "none"
    unfreeze_last: int = Field(0, ge=0, description="with freeze=all_but_last: blocks left trainable")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise LR decay factor")
    head_lr_scale: float = Field(1.0, gt=0)


# ----------------------------------------------------------------------------- training


class WandbConfig(Section):
    enabled: bool = False
    project: str = "xformer"
    name: str | None = None
    mode: Literal["auto", "online", "offline"] = "auto"


class TrainConfig(Section):
    """Optimisation, schedule, logging and checkpointing: shared by every model."""

    max_steps: int = Field(1000, gt=0, description="ignored when epochs is set or budget is time")
    epochs: float | None = Field(None, gt=0, description="train for this many passes over the data")
    max_minutes: float | None = Field(None, gt=0, description="budget steps: stop early after this wall time; "
                                      "budget time: the budget itself")
    budget: Literal["steps", "time"] = Field(
        "steps", description="what the schedule (LR, warmup, batch_ramp) runs over: max_steps / epochs (steps), "
        "or the wall time since training began over max_minutes (time; max_steps and epochs are then ignored "
        "and training ends when the time is spent)")
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
    variants: dict[str, dict[str, Any]] = Field({}, description="name -> {dotted key: value}")
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



MODEL_CONFIGS: dict[str, type[Section]] = {
    "bert": BertConfig,
    "bert_classifier": BertClassifierConfig,
    "vit": ViTConfig,
    "cnn": CNNConfig,
    "hf_image": HFImageConfig,
    "clip": ClipConfig,
}


# ----------------------------------------------------------------------------- validation


def _section_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel], tuple]:
    """The config class of the section at ``loc`` (a pydantic error location) and the keys of ``loc``
    without the tags pydantic adds for union members (``model.cnn.channels`` -> ``model.channels``,
    ``train.eval_every.int`` -> ``train.eval_every``)."""
    keys = []
    parts = list(loc)
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
    return model, tuple(keys)


def _union_members(ann) -> list:
    if ann is None:
        return []
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) is Annotated:
        return _union_members(args[0])
    if get_origin(ann) is Union or get_origin(ann) is types.UnionType:
        return [m for a in args for m in (_union_members(a) if get_origin(a) is Annotated else [a])]
    return [ann]


def format_validation_error(err: ValidationError, model: type[BaseModel], origin: str, section: str = "") -> str:
    """The first problem in ``err`` as one line naming the key, the value and what was expected;
    ``section`` is the dotted place of ``model`` in the whole config (e.g. ``"model"``)."""
    e = err.errors()[0]
    where = (section,) if section else ()
    if e["type"] == "extra_forbidden":
        section_cls, loc = _section_at(model, tuple(e["loc"])[:-1])
        valid = list(section_cls.model_fields)
        name = str(e["loc"][-1])
        prefix = ".".join(str(p) for p in where + loc)
        key = f"{prefix}.{name}" if prefix else name
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(f'{prefix}.{c}' if prefix else c for c in close)}?" if close else ""
        return f"{origin}: unknown key {key!r}{hint} (valid keys: {', '.join(valid)})"
    _, loc = _section_at(model, tuple(e["loc"]))
    key = ".".join(str(p) for p in where + loc)
    if not loc:  # a check across keys (a model validator): its message names them
        return f"{origin}: {e['msg'].removeprefix('Value error, ')}"
    return f"{origin}: {key}: {e['msg']} (got {e.get('input')!r})"


def validate(model: type[BaseModel], data: Any, origin: str, section: str = "") -> Any:
    """``data`` validated as ``model``; XformerError naming the first bad key otherwise."""
    if not isinstance(data, dict):
        raise XformerError(f"{origin}: {section or 'the config'} must be a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise XformerError(format_validation_error(err, model, origin, section)) from None


def model_config(tree: Any, origin: str) -> Section:
    """A saved model section (the ``model`` mapping of a run's config.yaml), validated by its ``arch``."""
    arch = tree.get("arch", "bert") if isinstance(tree, dict) else None
    if arch not in MODEL_CONFIGS:
        raise XformerError(f"{origin}: model.arch {arch!r} is not one of {', '.join(MODEL_CONFIGS)}")
    return validate(MODEL_CONFIGS[arch], tree, origin, "model")


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
