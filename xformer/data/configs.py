"""The data sections of run configs: what each task reads and how it is prepared (tokenizer, BERT
examples and masking, labelled images and their augmentation, captions, labelled texts).

They live in the data layer because the data code reads them; each task's run config
(:mod:`xformer.tasks`) names the one it uses as its ``data`` (and ``augment``) section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xformer.config import Section


class TokenizerConfig(Section):
    """Either an existing HF tokenizer (``path``) or a WordPiece tokenizer trained on the corpus."""

    path: str | None = Field(None, description="HF tokenizer dir or hub name; None trains WordPiece")
    vocab_size: int = Field(30522, gt=0)
    lowercase: bool = True
    train_documents: int | None = Field(20000, description="documents used to train WordPiece")
    train_chars: int | None = Field(None, gt=0, description="character budget of the WordPiece training sample")


class DataConfig(Section):
    """Corpus, tokenizer, BERT example creation and batch-time masking."""

    source: str | list[str] | None = Field(None, description="HF dataset name, or Parquet/text/JSONL/CSV/TSV files/globs")
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


class ImagesDataConfig(SplitDataConfig):
    """Images without labels (MAE pretraining): an HF dataset name, Parquet files with an image column, or a
    folder of images (flat, or in sub-folders, whose names are ignored); a label column is not read."""

    image_column: str | None = Field(None, description="None: auto-detect (img, image, ...)")
    val_size: int = Field(5000, ge=0)
    image_size: int | None = Field(None, gt=0, description="resize to this (square); None: keep (all equal)")
    max_images: int | None = Field(None, gt=0)
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


class ImageDataConfig(ImagesDataConfig):
    """Labelled images: an HF dataset name, Parquet files or an image folder (one sub-folder per class)."""

    label_column: str | None = Field(None, description="None: auto-detect (label, labels, ...)")
    test_source: str | list[str] | None = None
    test_split: str | None = None


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
    """Labelled texts or text pairs: Parquet / JSONL / CSV / TSV files, an HF dataset name or a catalogue name,
    with a text column (and a second one for pairs) and a label column: classes, or a number to regress.

    When ``source`` is a catalogue name whose entry declares its columns (``glue/mrpc``), the entry fills the
    column keys, ``label_type`` and ``scores`` this config leaves unset, and (unless ``val_source``,
    ``val_split`` or ``val_size`` is set) scores on the entry's first evaluation split rather than carving
    one from the training split.
    """

    text_column: str | None = Field(None, description="None: auto-detect (sentence, text, ...)")
    text_pair_column: str | None = Field(None, description="the second text of a pair; None: single texts")
    label_column: str | None = Field(None, description="None: auto-detect (label, labels, ...)")
    label_type: Literal["auto", "class", "regression"] = Field(
        "auto", description="auto: classes, unless the labels are finite floats, not all whole (regression)")
    scores: list[str] | None = Field(
        None, description="validation scores (acc, f1, mcc, pearson, spearman), their mean is `score`; "
                          "None: acc for classes, pearson and spearman for regression")
    val_size: int = Field(1000, ge=0)
    max_examples: int | None = Field(None, gt=0)
    max_seq_len: int = Field(128, ge=4)
    tokenizer: TokenizerConfig = TokenizerConfig(vocab_size=16000, train_documents=None)

    @model_validator(mode="before")
    @classmethod
    def _catalogue_fills(cls, data):
        return catalogue_defaults(data) if isinstance(data, dict) else data


def catalogue_defaults(values: dict, key: str = "data.source") -> dict:
    """``values`` (a text-classification data section as a dict) with what the catalogue entry named by its
    ``source`` declares filled in where ``values`` leaves it unset (None, or ``label_type`` auto); unchanged
    when ``source`` names no such entry."""
    from xformer.data.catalog import parse

    source = values.get("source")
    named = parse(source, key) if isinstance(source, str) else None
    if named is None or not named[0].text_columns:
        return values
    entry, filled = named[0], dict(values)
    declared = {"text_column": entry.text_columns[0], "label_column": entry.label_column,
                "text_pair_column": entry.text_columns[1] if len(entry.text_columns) > 1 else None,
                "scores": list(entry.scores) or None}
    for name, value in declared.items():
        if filled.get(name) is None:
            filled[name] = value
    if filled.get("label_type", "auto") == "auto" and entry.label_type:
        filled["label_type"] = entry.label_type
    unset = all(filled.get(k) is None for k in ("val_source", "val_split", "val_size"))
    if unset and entry.eval_splits:  # the benchmark's own validation split, not a carve of train
        filled["val_source"] = f"{entry.name}:{entry.eval_splits[0]}"
    return filled
