"""Sequence classification (e.g. SST-2) with a BERT: from scratch, or from a pretraining run or HF BERT.

Texts are tokenized once (``[CLS] text [SEP]``, truncated to ``data.max_seq_len``); each batch is cut
to its longest sequence. With ``model.init`` the tokenizer is the checkpoint's own, otherwise
``data.tokenizer`` decides (a WordPiece trained on the training texts when it names none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from xformer.config import RunConfig
from xformer.data.configs import TextClassificationDataConfig
from xformer.models.bert import BertClassifierConfig
from xformer.errors import XformerError
from xformer.losses import classification_loss, classification_metrics
from xformer.tasks.base import Built, TaskSpec


class TextClassificationConfig(RunConfig):
    """Sequence classification with a BERT, from scratch or from a pretrained one (``model.init``)."""

    task: Literal["text_classification"] = "text_classification"
    model: BertClassifierConfig = BertClassifierConfig()
    data: TextClassificationDataConfig = TextClassificationDataConfig()


class TextClassificationTask:
    """Cross-entropy on the pooled [CLS] token; accuracy. Nothing random to prepare."""

    local_rows = True  # each process reads only its rows

    def __init__(self, train_data, val_data, num_classes: int):
        self.train_data, self.val_data, self.num_classes = train_data, val_data, num_classes

    def prepare(self, batch: dict, generator: torch.Generator, train: bool,
                rows: tuple[int, int] | None = None) -> dict:
        return batch

    def normalizers(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"rows": batch["labels"].new_tensor(len(batch["labels"]))}

    def loss(self, model, local: dict, norms: dict):
        logits = model(input_ids=local["input_ids"], attention_mask=local["attention_mask"]).logits
        targets = F.one_hot(local["labels"], self.num_classes).float()
        loss, counts = classification_loss(logits, targets, local["labels"], norms["rows"])
        counts["tokens"] = local["attention_mask"].sum()
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return classification_metrics(counts)


def load_data(cfg: TextClassificationConfig, tokenizer: str | None):
    from xformer.data.text.texts import load_text_data
    from xformer.trained.init import check_sequence_length
    from xformer.trained.loading import load_tokenizer

    check_sequence_length(cfg.model, cfg.data.max_seq_len)
    return load_text_data(cfg.data, load_tokenizer(tokenizer) if tokenizer else None)


def build(cfg: TextClassificationConfig, data) -> Built:
    from xformer.trained.init import init_from

    mcfg = cfg.model.model_copy(update={"num_classes": len(data.class_names)})
    if mcfg.init is None:
        vocab = len(data.tokenizer)
        if mcfg.vocab_size is None:
            mcfg = mcfg.model_copy(update={"vocab_size": vocab})
        elif mcfg.vocab_size < vocab:
            raise XformerError(f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's {vocab}")
    model, mcfg = init_from(mcfg)
    task = TextClassificationTask(data.train, data.val, len(data.class_names))
    return Built(model, mcfg, task, tokenizer=data.tokenizer, class_names=data.class_names,
                 summary=f"BERT classifier, init {mcfg.init or 'random'}; data: {len(data.train)} train / "
                         f"{len(data.val) if data.val else 0} val, {len(data.class_names)} classes")


def evaluate(run_dir: Path, source, split: str = "train", limit: int | None = None) -> dict:
    """``xformer eval``: loss and accuracy of the run's classifier on the labelled texts of ``source`` (the
    first ``limit``), read as in training (its text / label columns) and mapped onto the run's classes."""
    from xformer.data.text.texts import read_labelled_texts, tokenize_examples
    from xformer.trained.evaluate import LABELLED_TEXTS, check_data, task_scores
    from xformer.tasks.trained_run import load_run

    run = load_run(run_dir, "text_classification")
    cfg, classes = run.cfg, run.class_names
    check_data(run_dir, "text_classification", source, split, (LABELLED_TEXTS,), "labelled texts", cfg.data)
    if classes is None:
        raise XformerError(f"{run_dir}: no classes.json, so the run's labels are not known")
    texts, raw = read_labelled_texts(source, split, cfg.data.model_copy(update={"max_examples": limit}), "--data")
    labels = [str(y) for y in raw]  # the run's class names are its labels as strings
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise XformerError(f"--data {source}: {len(unknown)} labels the run never trained on ({shown}); "
                           f"its classes are {', '.join(map(repr, classes))}")
    dataset = tokenize_examples(texts, labels, classes, run.tokenizer, cfg.data.max_seq_len, "--data")
    task = TextClassificationTask(dataset, None, len(classes))
    metrics, counts = task_scores(run.model, task, dataset, cfg.train.batch_size, run.device)
    return {**metrics, "examples": len(dataset), "tokens": int(counts["tokens"])}


def export(run_dir: Path, out_dir: Path) -> str:
    """``xformer export``: the run's classifier as an HF ``BertForSequenceClassification`` (a rotary one as
    ``ModernBertForSequenceClassification``) with its tokenizer, ``id2label`` from its classes.json (a
    regression: one label, ``problem_type`` "regression")."""
    from xformer.interop import export_format, hf_function
    from xformer.tasks.trained_run import load_run

    run = load_run(run_dir, "text_classification", device="cpu")
    fmt = export_format(run.model.config)
    hf_function(fmt, fmt.export)(run.model, out_dir, tokenizer=run.tokenizer, class_names=run.class_names)
    return f"transformers.{'ModernBert' if fmt.model_type == 'modernbert' else 'Bert'}ForSequenceClassification"


TASK = TaskSpec(name="text_classification", config=TextClassificationConfig, primary_metric="acc",
                load_data=load_data, build=build, evaluate=evaluate, export=export)
