"""Sequence classification (e.g. SST-2): labelled texts, the task for the trainer, ``train_text_classifier``.

Texts are tokenized once (``[CLS] text [SEP]``, truncated to ``data.max_seq_len``); each batch is cut to
its longest sequence. The model is a BERT with a head on the pooled [CLS] token, fresh or initialised from
``model.init`` (a BERT pretraining run, or ``hf:`` a BERT checkpoint); with an init the tokenizer is the
checkpoint's own, otherwise ``data.tokenizer`` decides (a WordPiece trained on the training texts when it
names none).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from xformer import distributed
from xformer.config import (
    TextClassificationConfig,
    TextClassificationDataConfig,
    save_config,
)
from xformer.data.corpus import resolve_source
from xformer.data.pretraining import default_cache_dir, log
from xformer.data.tokenizer import build_tokenizer
from xformer.errors import XformerError
from xformer.losses import classification_loss, classification_metrics
from xformer.trainer import Trainer, check_run_dir

TEXT_COLUMNS = ("sentence", "text", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "target", "class")


class TextDataset:
    """Token ids (N, L) padded, lengths (N,), class indices (N,)."""

    def __init__(self, input_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
        self.input_ids, self.lengths, self.labels = input_ids, lengths, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` (B, T) cut to the longest row, ``labels`` (B,)."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        lengths = self.lengths[idx]
        T = int(lengths.max())
        mask = (torch.arange(T) < lengths[:, None]).long()  # (B, T)
        return {"input_ids": self.input_ids[idx, :T], "attention_mask": mask, "labels": self.labels[idx]}


@dataclass
class TextData:
    train: TextDataset
    val: TextDataset | None
    tokenizer: object
    class_names: list[str]


def _pick(names: list[str], configured: str | None, candidates: tuple[str, ...], option: str, where: str) -> str:
    if configured is not None:
        if configured not in names:
            raise XformerError(f"{where}: no column {configured!r} (columns: {', '.join(names)}); set data.{option}")
        return configured
    found = next((c for c in candidates if c in names), None)
    if found is None:
        raise XformerError(f"{where}: no {option.split('_')[0]} column found (columns: {', '.join(names)}); "
                           f"set data.{option}")
    return found


def read_labelled_texts(source, split: str, cfg: TextClassificationDataConfig, key: str) -> tuple[list[str], list]:
    """(texts, raw labels) from Parquet / JSONL files or an HF dataset name; ``max_examples`` first rows."""
    resolved = resolve_source(source)
    if isinstance(resolved, str):  # an HF hub name
        import datasets

        try:
            ds = datasets.load_dataset(resolved, split=split)
        except Exception as err:  # no network, no such dataset: the fix is the same
            raise XformerError(f"{key} {resolved!r}: not a local path, and the HF hub is unreachable or has no such "
                               f"dataset/split ({str(err).strip()[:160]}); pass local Parquet files instead, "
                               f"e.g. {key}=../shared/data/sst2/train.parquet") from None
        names, where = ds.column_names, f"HF dataset {resolved!r}"
        text = _pick(names, cfg.text_column, TEXT_COLUMNS, "text_column", where)
        label = _pick(names, cfg.label_column, LABEL_COLUMNS, "label_column", where)
        texts, labels = list(ds[text]), list(ds[label])
    else:
        texts, labels = [], []
        for path in resolved:
            if path.suffix.lower() in (".jsonl", ".json"):
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                names = list(rows[0]) if rows else []
                columns = {n: [r.get(n) for r in rows] for n in names}
            elif path.suffix.lower() == ".parquet":
                names = pq.read_schema(path).names
                columns = None
            else:
                raise XformerError(f"{key} {str(path)!r}: labelled texts come as .parquet or .jsonl files")
            text = _pick(names, cfg.text_column, TEXT_COLUMNS, "text_column", str(path))
            label = _pick(names, cfg.label_column, LABEL_COLUMNS, "label_column", str(path))
            if columns is None:
                columns = pq.read_table(path, columns=[text, label]).to_pydict()
            texts += columns[text]
            labels += columns[label]
    texts, labels = texts[:cfg.max_examples], labels[:cfg.max_examples]
    bad = next((i for i, (t, y) in enumerate(zip(texts, labels)) if not isinstance(t, str) or y is None), None)
    if bad is not None:
        raise XformerError(f"{key} {source!r}: row {bad} has no text or no label")
    if not texts:
        raise XformerError(f"{key} {source!r}: no examples")
    return texts, labels


def _tokenized(texts: list[str], labels: list, classes: list, tokenizer, max_len: int, key: str) -> TextDataset:
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
    classes = sorted(set(labels))
    if tokenizer is None:
        root = default_cache_dir(cfg)
        key = "texts-" + hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        tokenizer = build_tokenizer(cfg.tokenizer, texts if cfg.tokenizer.path is None else None, root, key)
    train = _tokenized(texts, labels, classes, tokenizer, cfg.max_seq_len, "data.source")
    val_set = _tokenized(*val, classes, tokenizer, cfg.max_seq_len, "data.val_source") if val else None
    log(f"texts: train {len(train)}" + (f", val {len(val_set)}" if val_set else "") + f"; {len(classes)} classes")
    return TextData(train, val_set, tokenizer, [str(c) for c in classes])


class TextClassificationTask:
    """Cross-entropy on the pooled [CLS] token; accuracy. Nothing random to prepare."""

    def __init__(self, train_data, val_data, num_classes: int):
        self.train_data, self.val_data, self.num_classes = train_data, val_data, num_classes

    def prepare(self, batch: dict, generator: torch.Generator, train: bool) -> dict:
        return batch

    def loss(self, model, local: dict, full: dict):
        logits = model(input_ids=local["input_ids"], attention_mask=local["attention_mask"]).logits
        targets = F.one_hot(local["labels"], self.num_classes).float()
        loss, counts = classification_loss(logits, targets, local["labels"], full["labels"].numel())
        counts["tokens"] = local["attention_mask"].sum()
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return classification_metrics(counts)


def initial_text_classifier(cfg: TextClassificationConfig, vocab_size: int, num_classes: int):
    """A fresh BERT classifier, or one whose encoder (and pooler) come from ``model.init``; the head is new.
    With an init the architecture comes from the checkpoint; dropout and attention backend from the recipe."""
    from xformer.config import BertClassifierConfig
    from xformer.models import BertForSequenceClassification

    mcfg = cfg.model
    mcfg.num_classes = num_classes
    if mcfg.init is None:
        if mcfg.vocab_size is None:
            mcfg.vocab_size = vocab_size
        return BertForSequenceClassification(mcfg)
    if mcfg.init.startswith("hf:"):
        from xformer.interop.hf_bert import load_hf_bert

        source = load_hf_bert(mcfg.init[3:])
    else:
        from xformer.loading import load

        source = load(mcfg.init)
    bert = getattr(source, "bert", source)
    if not hasattr(bert, "pooler"):
        raise XformerError(f"model.init={mcfg.init}: a {type(source).__name__} is not a BERT")
    keep = {k: getattr(mcfg, k) for k in ("dropout", "attn_dropout", "attn_backend", "init", "num_classes")}
    arch = {k: v for k, v in source.config.model_dump().items() if k in BertClassifierConfig.model_fields
            and k not in keep and k != "arch"}
    cfg.model = BertClassifierConfig(**arch, **keep)
    model = BertForSequenceClassification(cfg.model)
    model.bert.load_state_dict(bert.state_dict())
    return model


def train_text_classifier(cfg: TextClassificationConfig, resume: bool = False) -> dict:
    """Load and tokenize the texts, build or load the model, train; returns the final metrics."""
    from xformer.loading import load_tokenizer

    dist = distributed.setup(cfg.train.device)
    try:
        run_dir = Path(cfg.out_dir or "runs/text_classification")
        check_run_dir(run_dir, cfg, resume)
        tokenizer = None
        if cfg.model.init is not None and cfg.data.tokenizer.path is None:
            tokenizer = load_tokenizer(cfg.model.init)  # the checkpoint's own vocabulary
        with distributed.main_first(dist):
            data = load_text_data(cfg.data, tokenizer)
        torch.manual_seed(cfg.train.seed)
        model = initial_text_classifier(cfg, len(data.tokenizer), len(data.class_names))
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            data.tokenizer.save_pretrained(run_dir / "tokenizer")
            (run_dir / "classes.json").write_text(json.dumps(data.class_names))
            n_params = sum(p.numel() for p in model.parameters())
            print(f"model: BERT classifier, {n_params / 1e6:.2f}M parameters, init {cfg.model.init or 'random'}; "
                  f"data: {len(data.train)} train / {len(data.val) if data.val else 0} val; run dir: {run_dir}")
        task = TextClassificationTask(data.train, data.val, len(data.class_names))
        return Trainer(cfg, model, task, run_dir, dist).fit(resume=resume)
    finally:
        distributed.teardown()
