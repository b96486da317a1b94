"""Labelled texts for sequence classification (e.g. SST-2): read, checked, tokenized once.

A source is Parquet, JSON-lines, CSV or TSV files (a text column and a label column, auto-detected or named by
``data.text_column`` / ``data.label_column``) or an HF dataset name. Texts are tokenized once
(``[CLS] text [SEP]``, truncated to ``data.max_seq_len``); each batch is cut to its longest sequence.
Rows whose text is empty or blank are dropped with a warning; labels must be integers or strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from xformer.data.configs import TextClassificationDataConfig
from xformer.data.cache import default_cache_dir, log
from xformer.data.labels import class_labels, require_two_classes
from xformer.data.readers import TABLE_SUFFIXES, Reader
from xformer.data.sources import open_readers, resolve
from xformer.data.text.tokenizer import build_tokenizer
from xformer.errors import XformerError

TEXT_COLUMNS = ("sentence", "text", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "target", "class")
EXAMPLE_PARQUET = "../shared/data/sst2/train.parquet"


class TextDataset:
    """Token ids (N, L) padded, lengths (N,), class indices (N,)."""

    def __init__(self, input_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
        self.input_ids, self.lengths, self.labels = input_ids, lengths, labels

    def __len__(self) -> int:
        return len(self.labels)

    def seq_len(self, indices: np.ndarray) -> int:
        """The length :meth:`batch` cuts rows ``indices`` to: the longest of them."""
        return int(self.lengths[torch.from_numpy(np.asarray(indices, dtype=np.int64))].max())

    def batch(self, indices: np.ndarray, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` (B, T) cut to the longest row (or to ``seq_len``), ``labels`` (B,)."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        lengths = self.lengths[idx]
        T = int(lengths.max()) if seq_len is None else seq_len
        mask = (torch.arange(T) < lengths[:, None]).long()  # (B, T)
        return {"input_ids": self.input_ids[idx, :T], "attention_mask": mask, "labels": self.labels[idx]}


@dataclass
class TextData:
    train: TextDataset
    val: TextDataset | None
    tokenizer: object
    class_names: list[str]


def _read(reader: Reader, cfg: TextClassificationDataConfig, limit: int | None) -> tuple[list, list]:
    """(texts, raw labels) of the first ``limit`` rows of one file or hub split."""
    text = reader.pick(cfg.text_column, TEXT_COLUMNS, "text_column", text=True)
    label = reader.pick(cfg.label_column, LABEL_COLUMNS, "label_column")
    texts, labels = [], []
    for batch in reader.batches([text, label], 0, limit, text_column=text):
        texts += batch[text]
        labels += batch[label]
    return texts, labels


def read_labelled_texts(source, split: str, cfg: TextClassificationDataConfig, key: str) -> tuple[list[str], list]:
    """(texts, raw labels) from Parquet / JSONL / CSV / TSV files or an HF dataset name; ``max_examples``
    first rows. Rows whose text is empty or blank are dropped (one warning line); labels are checked class
    labels."""
    limit = cfg.max_examples
    texts, labels = [], []
    for reader in open_readers(resolve(source, key, TABLE_SUFFIXES, split), EXAMPLE_PARQUET):
        more_texts, more_labels = _read(reader, cfg, None if limit is None else limit - len(texts))
        texts += more_texts
        labels += more_labels
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise XformerError(f"{key} {source!r}: no examples")
    keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
    if not keep:
        raise XformerError(f"{key} {source!r}: every one of the {len(texts)} texts is empty or whitespace")
    if len(keep) < len(texts):
        log(f"{key} {source}: dropped {len(texts) - len(keep)} of {len(texts)} examples whose text is empty "
            f"or whitespace")
    labels = class_labels([labels[i] for i in keep], f"{key} {source!r}", rows=keep)
    return [texts[i] for i in keep], labels


def tokenize_examples(texts: list[str], labels: list, classes: list, tokenizer, max_len: int, key: str) -> TextDataset:
    """``texts`` tokenized (``[CLS] text [SEP]``, cut to ``max_len``) with ``labels`` as indices into
    ``classes``; a label outside them is an error naming ``key``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = next((y for y in labels if y not in index), None)
    if unknown is not None:
        raise XformerError(f"{key}: label {unknown!r} is not one of the training labels {classes}")
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt")
    return TextDataset(enc["input_ids"].long(), enc["attention_mask"].sum(1), torch.tensor([index[y] for y in labels]))


def load_text_data(cfg: TextClassificationDataConfig, tokenizer=None) -> TextData:
    """Train and validation examples for ``cfg``, tokenized (validation carved from train when not given)."""
    if cfg.source is None:
        raise XformerError("data.source is required: Parquet/JSONL files or an HF dataset name")
    texts, labels = read_labelled_texts(cfg.source, cfg.split, cfg, "data.source")
    val = None
    if cfg.val_source is not None or cfg.val_split is not None:
        val = read_labelled_texts(cfg.val_source or cfg.source, cfg.val_split or "validation", cfg, "data.val_source")
    elif cfg.val_size:
        if cfg.val_size >= len(texts):
            raise XformerError(f"data.val_size={cfg.val_size} leaves no training examples ({len(texts)} in all)")
        order = np.random.default_rng(cfg.seed).permutation(len(texts))
        val = [texts[i] for i in order[:cfg.val_size]], [labels[i] for i in order[:cfg.val_size]]
        keep = np.sort(order[cfg.val_size:])
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    require_two_classes(labels, f"data.source {cfg.source!r}")
    classes = sorted(set(labels))
    if tokenizer is None:
        root = default_cache_dir(cfg)
        key = "texts-" + hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        tokenizer = build_tokenizer(cfg.tokenizer, texts if cfg.tokenizer.path is None else None, root, key)
    train = tokenize_examples(texts, labels, classes, tokenizer, cfg.max_seq_len, "data.source")
    val_set = tokenize_examples(*val, classes, tokenizer, cfg.max_seq_len, "data.val_source") if val else None
    log(f"texts: train {len(train)}" + (f", val {len(val_set)}" if val_set else "") + f"; {len(classes)} classes")
    return TextData(train, val_set, tokenizer, [str(c) for c in classes])
