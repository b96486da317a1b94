"""Labelled texts and text pairs for sequence classification and regression (SST-2, GLUE): read, checked,
tokenized once.

A source is Parquet, JSON-lines, CSV or TSV files (a text column and a label column, auto-detected or named by
``data.text_column`` / ``data.label_column``; for pairs also ``data.text_pair_column``), an HF dataset name or
a catalogue name (``glue/mrpc``, whose entry names the columns). Texts are tokenized once, ``[CLS] text [SEP]``
or ``[CLS] a [SEP] b [SEP]`` with token types 0 / 1, truncated longest-first to ``data.max_seq_len`` as HF
tokenizers do; each batch is cut to its longest sequence. Rows whose text (either text of a pair) is empty or
blank are dropped with a warning.

Labels are classes (integers or strings) or, for regression, numbers (``data.label_type``; ``auto`` takes
finite floats that are not all whole numbers, such as STS-B's 0-5 similarities, for a regression target).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch

from xformer.data.configs import TextClassificationDataConfig
from xformer.data.cache import default_cache_dir, log
from xformer.data.labels import class_labels, require_two_classes
from xformer.data.readers import TABLE_SUFFIXES, Reader
from xformer.data.sources import at_split, open_readers, resolve
from xformer.data.text.tokenizer import build_tokenizer
from xformer.errors import XformerError

TEXT_COLUMNS = ("sentence", "text", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "target", "class")
EXAMPLE_PARQUET = "../shared/data/sst2/train.parquet"
REGRESSION_HINT = "for a numeric target set data.label_type=regression"


class TextDataset:
    """Token ids (N, L) padded, lengths (N,), labels (N,): class indices (long) or regression targets (float);
    token types (N, L) for pairs (None for single texts: segment 0 throughout)."""

    def __init__(self, input_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None):
        self.input_ids, self.lengths, self.labels = input_ids, lengths, labels
        self.token_type_ids = token_type_ids

    def __len__(self) -> int:
        return len(self.labels)

    def seq_len(self, indices: np.ndarray) -> int:
        """The length :meth:`batch` cuts rows ``indices`` to: the longest of them."""
        return int(self.lengths[torch.from_numpy(np.asarray(indices, dtype=np.int64))].max())

    def batch(self, indices: np.ndarray, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` (and for pairs ``token_type_ids``) (B, T) cut to the longest row
        (or to ``seq_len``), ``labels`` (B,)."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        lengths = self.lengths[idx]
        T = int(lengths.max()) if seq_len is None else seq_len
        mask = (torch.arange(T) < lengths[:, None]).long()  # (B, T)
        batch = {"input_ids": self.input_ids[idx, :T], "attention_mask": mask, "labels": self.labels[idx]}
        if self.token_type_ids is not None:
            batch["token_type_ids"] = self.token_type_ids[idx, :T].long()  # (B, T), stored as uint8
        return batch


@dataclass
class TextData:
    """Tokenized training and validation examples; ``class_names`` is empty for a regression target."""

    train: TextDataset
    val: TextDataset | None
    tokenizer: object
    class_names: list[str]
    regression: bool = False

    @property
    def num_classes(self) -> int:
        """The classifier's outputs: one per class, or 1 for regression (as HF's ``num_labels=1``)."""
        return 1 if self.regression else len(self.class_names)


class LabelledTexts(tuple):
    """What one source holds: ``(texts, labels)`` (it unpacks as that pair; labels are classes or floats) and,
    for sentence pairs, ``pairs``: the second text of each example (None for single texts)."""

    def __new__(cls, texts: list[str], labels: list, pairs: list[str] | None = None):
        self = super().__new__(cls, (texts, labels))
        self.pairs = pairs
        return self

    @property
    def texts(self) -> list[str]:
        return self[0]

    @property
    def labels(self) -> list:
        return self[1]


# ----------------------------------------------------------------------------- reading


def _read(reader: Reader, cfg: TextClassificationDataConfig, limit: int | None) -> tuple[dict[str, list], str]:
    """The first ``limit`` rows of one file or hub split as ``{"texts", "pairs", "labels"}`` (pairs empty for
    single texts), and the name of the label column."""
    text = reader.pick(cfg.text_column, TEXT_COLUMNS, "text_column", text=True)
    pair = reader.pick(cfg.text_pair_column, (), "text_pair_column", text=True) if cfg.text_pair_column else None
    label = reader.pick(cfg.label_column, LABEL_COLUMNS, "label_column")
    rows: dict[str, list] = {"texts": [], "pairs": [], "labels": []}
    columns = [text, label] if pair is None else [text, pair, label]
    for batch in reader.batches(columns, 0, limit, text_column=text):
        rows["texts"] += batch[text]
        rows["labels"] += batch[label]
        if pair is not None:
            rows["pairs"] += batch[pair]
    return rows, label


def _blank(text) -> bool:
    return text is None or not text.strip()


def read_labelled_texts(source, split: str, cfg: TextClassificationDataConfig, key: str) -> LabelledTexts:
    """The labelled texts (or pairs, with ``data.text_pair_column``) of Parquet / JSONL / CSV / TSV files, an HF
    dataset or a catalogue name; ``max_examples`` first rows. Rows whose text (either text of a pair) is empty
    or blank are dropped (one warning line); labels are checked as ``cfg.label_type`` asks."""
    limit = cfg.max_examples
    rows: dict[str, list] = {"texts": [], "pairs": [], "labels": []}
    column = None
    for reader in open_readers(resolve(source, key, TABLE_SUFFIXES, split), EXAMPLE_PARQUET):
        more, column = _read(reader, cfg, None if limit is None else limit - len(rows["texts"]))
        for name in rows:
            rows[name] += more[name]
        if limit is not None and len(rows["texts"]) >= limit:
            break
    texts, pairs = rows["texts"], rows["pairs"] if cfg.text_pair_column else None
    if not texts:
        raise XformerError(f"{key} {source!r}: no examples")
    keep = [i for i, t in enumerate(texts) if not _blank(t) and (pairs is None or not _blank(pairs[i]))]
    what = "text" if pairs is None else "text or pair text"
    if not keep:
        raise XformerError(f"{key} {source!r}: every one of the {len(texts)} examples' {what} is empty or whitespace")
    if len(keep) < len(texts):
        log(f"{key} {source}: dropped {len(texts) - len(keep)} of {len(texts)} examples whose {what} is empty "
            f"or whitespace")
    labels = checked_labels([rows["labels"][i] for i in keep], cfg.label_type, f"{key} {source!r}", column, keep)
    return LabelledTexts([texts[i] for i in keep], labels, None if pairs is None else [pairs[i] for i in keep])


# ----------------------------------------------------------------------------- labels


def _float(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, Integral)


def continuous(values: list) -> bool:
    """True when ``values`` look like a regression target: all finite floats, not all whole numbers (STS-B's
    similarities). Whole-number floats (``1.0``) stay class labels, as they always were."""
    return bool(values) and all(_float(v) and math.isfinite(v) for v in values) and any(v != int(v) for v in values)


def regression_labels(values: list, where: str, column: str, rows: list[int]) -> list[float]:
    """Every label a finite number (as a float); anything else is an error naming the row and the column."""
    for i, v in zip(rows, values):
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
            raise XformerError(f"{where} row {i}: label {v!r} in column {column!r} is not a finite number; "
                               f"data.label_type=regression needs numeric labels")
    return [float(v) for v in values]


def checked_labels(values: list, label_type: str, where: str, column: str, rows: list[int]) -> list:
    """``values`` of label ``column`` checked as ``label_type`` asks (auto: :func:`continuous` decides):
    floats for regression, else class labels (:func:`~xformer.data.labels.class_labels`)."""
    if label_type == "regression" or (label_type == "auto" and continuous(values)):
        return regression_labels(values, where, column, rows)
    try:
        return class_labels(values, f"{where} column {column!r}", rows=rows)
    except XformerError as err:
        if "whole number" not in str(err):
            raise
        raise XformerError(f"{err}; {REGRESSION_HINT}") from None


def is_regression(labels: list) -> bool:
    """Whether checked labels (:func:`checked_labels`) are a regression target."""
    return bool(labels) and isinstance(labels[0], float)


# ----------------------------------------------------------------------------- tokenizing


def tokenize_examples(texts: list[str], labels: list, classes: list | None, tokenizer, max_len: int, key: str,
                      pairs: list[str] | None = None) -> TextDataset:
    """``texts`` (with ``pairs``: ``[CLS] text [SEP] pair [SEP]``, truncated longest-first) tokenized to
    ``max_len`` with ``labels`` as indices into ``classes`` (a label outside them is an error naming ``key``),
    or as float targets when ``classes`` is None (regression)."""
    if classes is None:
        targets = torch.tensor(labels, dtype=torch.float32)
    else:
        index = {c: i for i, c in enumerate(classes)}
        unknown = next((y for y in labels if y not in index), None)
        if unknown is not None:
            raise XformerError(f"{key}: label {unknown!r} is not one of the training labels {classes}")
        targets = torch.tensor([index[y] for y in labels])
    truncation = True if pairs is None else "longest_first"  # as tokenizer(texts, pairs) truncates
    enc = tokenizer(texts, pairs, truncation=truncation, max_length=max_len, padding="max_length",
                    padding_side="right", return_tensors="pt")  # rows are kept as ids + lengths: real tokens first
    # single texts carry no token types: the model takes None as segment 0 (an explicit zeros tensor would sum
    # the segment embedding's gradient in another order, moving the recorded golden losses)
    types = enc.get("token_type_ids") if pairs is not None else None
    return TextDataset(enc["input_ids"].long(), enc["attention_mask"].sum(1), targets,
                       None if types is None else types.to(torch.uint8))


def _split_off(train: LabelledTexts, size: int, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
    """(train less ``size`` random examples, those examples)."""
    if size >= len(train.texts):
        raise XformerError(f"data.val_size={size} leaves no training examples ({len(train.texts)} in all)")
    order = np.random.default_rng(seed).permutation(len(train.texts))

    def take(rows) -> LabelledTexts:
        pairs = None if train.pairs is None else [train.pairs[i] for i in rows]
        return LabelledTexts([train.texts[i] for i in rows], [train.labels[i] for i in rows], pairs)

    return take(np.sort(order[size:])), take(order[:size])


def load_text_data(cfg: TextClassificationDataConfig, tokenizer=None) -> TextData:
    """Train and validation examples for ``cfg``, tokenized (validation carved from train when not given)."""
    if cfg.source is None:
        raise XformerError("data.source is required: Parquet/JSONL files or an HF dataset name")
    train = read_labelled_texts(cfg.source, cfg.split, cfg, "data.source")
    regression = is_regression(train.labels)
    val = None
    val_key = "data.val_split" if cfg.val_source is None and cfg.val_split is not None else "data.val_source"
    if cfg.val_source is not None or cfg.val_split is not None:
        as_train = cfg.model_copy(update={"label_type": "regression" if regression else "class"})
        split = cfg.val_split or "validation"
        val_source = cfg.val_source if cfg.val_source is not None else at_split(cfg.source, split, val_key)
        val = read_labelled_texts(val_source, split, as_train, val_key)
    elif cfg.val_size:
        train, val = _split_off(train, cfg.val_size, cfg.seed)
    classes = None
    if not regression:
        require_two_classes(train.labels, f"data.source {cfg.source!r}")
        classes = sorted(set(train.labels))
    if tokenizer is None:
        seen = train.texts + (train.pairs or [])  # WordPiece learns both texts of a pair
        key = "texts-" + hashlib.sha256("\n".join(seen).encode()).hexdigest()[:16]
        tokenizer = build_tokenizer(cfg.tokenizer, seen if cfg.tokenizer.path is None else None,
                                    default_cache_dir(cfg), key)
    train_set = tokenize_examples(train.texts, train.labels, classes, tokenizer, cfg.max_seq_len, "data.source",
                                  train.pairs)
    val_set = None if val is None else tokenize_examples(val.texts, val.labels, classes, tokenizer,
                                                         cfg.max_seq_len, val_key, val.pairs)
    target = "regression" if regression else f"{len(classes)} classes"
    log(f"texts: train {len(train_set)}" + (f", val {len(val_set)}" if val_set else "") + f"; {target}"
        + ("; sentence pairs" if train.pairs is not None else ""))
    return TextData(train_set, val_set, tokenizer, [] if regression else [str(c) for c in classes], regression)
