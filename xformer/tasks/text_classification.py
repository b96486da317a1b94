"""Sequence classification and regression of texts or text pairs (SST-2, GLUE) with a BERT: from scratch, or
from a pretraining run or HF BERT / ModernBERT.

Texts are tokenized once (``[CLS] text [SEP]``, pairs ``[CLS] a [SEP] b [SEP]`` with token types, truncated to
``data.max_seq_len``); each batch is cut to its longest sequence. With ``model.init`` the tokenizer is the
checkpoint's own, otherwise ``data.tokenizer`` decides (a WordPiece trained on the training texts when it names
none). Classes train with cross-entropy; a regression target (``num_classes`` 1) with the mean squared error of
``logits[:, 0]``, as HF does for ``num_labels=1``. Each evaluation also scores the whole validation set
(``data.scores``, and ``score``: their mean, as GLUE scores a task), every process predicting its share.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from xformer.config import RunConfig, TrainConfig
from xformer.data.configs import TextClassificationDataConfig
from xformer.distributed import gather_with_grad
from xformer.models.bert import BertClassifierConfig
from xformer.errors import XformerError
from xformer.losses import classification_loss, classification_metrics, regression_loss, regression_metrics
from xformer.tasks.base import Built, TaskSpec

EVAL_BATCH = 64  # rows per forward when scoring the whole validation set


class TextClassificationConfig(RunConfig):
    """Sequence classification with a BERT, from scratch or from a pretrained one (``model.init``)."""

    task: Literal["text_classification"] = "text_classification"
    model: BertClassifierConfig = BertClassifierConfig()
    data: TextClassificationDataConfig = TextClassificationDataConfig()


class TextClassificationTask:
    """Cross-entropy on the classifier's logits and accuracy, or (``num_classes`` 1) the mean squared error of
    its one output; :meth:`evaluate` adds ``scores`` over the whole validation set. Nothing random to prepare."""

    local_rows = True  # each process reads only its rows

    def __init__(self, train_data, val_data, num_classes: int, scores: list[str] | None = None,
                 train_cfg: TrainConfig | None = None):
        self.train_data, self.val_data, self.num_classes = train_data, val_data, num_classes
        self.regression = num_classes == 1
        self.scores = scores or default_scores(self.regression)
        self.train_cfg = train_cfg or TrainConfig()

    def prepare(self, batch: dict, generator: torch.Generator, train: bool,
                rows: tuple[int, int] | None = None) -> dict:
        return batch

    def normalizers(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"rows": batch["labels"].new_tensor(len(batch["labels"]), dtype=torch.long)}

    def loss(self, model, local: dict, norms: dict):
        logits = self.logits(model, local)  # (B, K)
        if self.regression:
            loss, counts = regression_loss(logits[:, 0], local["labels"], norms["rows"])
        else:
            targets = F.one_hot(local["labels"], self.num_classes).float()
            loss, counts = classification_loss(logits, targets, local["labels"], norms["rows"])
        counts["tokens"] = local["attention_mask"].sum()
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return regression_metrics(counts) if self.regression else classification_metrics(counts)

    @staticmethod
    def logits(model, batch: dict) -> torch.Tensor:
        """The model's (B, K) outputs for a batch (token types only where the data has them). Rows are
        padded on the right to data.max_seq_len; the columns past the batch's longest row are cut first,
        which changes no output (padding is masked) and spares most of the work on short sentences."""
        width = int(batch["attention_mask"].sum(1).max())
        types = batch.get("token_type_ids")
        return model(input_ids=batch["input_ids"][:, :width],  # (B, L) -> (B, width)
                     attention_mask=batch["attention_mask"][:, :width],
                     token_type_ids=None if types is None else types[:, :width]).logits

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """``loss``, ``acc`` (classes), each of ``scores`` and ``score`` (their mean) over every row of the
        validation set: each process predicts a contiguous share, gathered in order; every process runs the
        same number of forwards (FSDP needs it), the last share padded with repeats of the last row."""
        from xformer.train.parallel import autocast_for
        from xformer.trained.scores import scores, task_score

        data = self.val_data
        if data is None or len(data) == 0:
            return {}
        device, was_training = next(model.parameters()).device, model.training
        model.eval()
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
        n = len(data)
        share = math.ceil(n / world)
        rows = np.minimum(np.arange(rank * share, (rank + 1) * share), n - 1)  # (share,) padded with row n - 1
        outputs, losses = [], []
        for start in range(0, share, EVAL_BATCH):
            batch = {k: t.to(device) for k, t in data.batch(rows[start:start + EVAL_BATCH]).items()}
            with autocast_for(self.train_cfg, device)():
                logits = self.logits(model, batch).float()  # (B, K)
            out, row_loss = self._predict(logits, batch["labels"])
            outputs.append(out)
            losses.append(row_loss)
        model.train(was_training)
        predicted = gather_with_grad(torch.cat(outputs))[0][:n].cpu().numpy()  # (n,) in row order
        loss = float(gather_with_grad(torch.cat(losses))[0][:n].double().mean())
        labels = data.labels.numpy()
        found = {"loss": loss} if self.regression else {"loss": loss, "acc": float((predicted == labels).mean())}
        found.update(scores(self.scores, predicted, labels))
        found["score"] = task_score(found, self.scores)
        return found

    def _predict(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) predictions (values, or class ids) and (B,) losses of one batch's logits."""
        if self.regression:
            return logits[:, 0], (logits[:, 0] - labels.float()) ** 2
        return logits.argmax(-1), F.cross_entropy(logits, labels, reduction="none")


def default_scores(regression: bool) -> list[str]:
    """The scores of ``data.scores`` None: accuracy for classes, Pearson and Spearman for regression."""
    return ["pearson", "spearman"] if regression else ["acc"]


def check_scores(names: list[str], regression: bool, num_classes: int) -> None:
    """One-line error for a score that is unknown or cannot score this target (F1 needs two classes,
    correlations a regression, accuracy and MCC classes)."""
    from xformer.trained.scores import SCORES

    for name in names:
        if name not in SCORES:
            raise XformerError(f"data.scores: unknown score {name!r}; choose from {', '.join(SCORES)}")
        fits = (name in ("pearson", "spearman")) == regression and (name != "f1" or num_classes == 2)
        if not fits:
            target = "a regression target" if regression else f"{num_classes} classes"
            raise XformerError(f"data.scores: {name!r} cannot score {target} (pearson, spearman: regression; "
                               f"acc, mcc: classes; f1: two classes)")


def load_data(cfg: TextClassificationConfig, tokenizer: str | None):
    from xformer.data.text.texts import load_text_data
    from xformer.trained.init import check_sequence_length
    from xformer.trained.loading import load_tokenizer

    check_sequence_length(cfg.model, cfg.data.max_seq_len)
    return load_text_data(cfg.data, load_tokenizer(tokenizer) if tokenizer else None)


def build(cfg: TextClassificationConfig, data) -> Built:
    from xformer.trained.init import init_from

    scores = cfg.data.scores or default_scores(data.regression)
    check_scores(scores, data.regression, data.num_classes)
    mcfg = cfg.model.model_copy(update={"num_classes": data.num_classes})
    if mcfg.init is None:
        vocab = len(data.tokenizer)
        if mcfg.vocab_size is None:
            mcfg = mcfg.model_copy(update={"vocab_size": vocab})
        elif mcfg.vocab_size < vocab:
            raise XformerError(f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's {vocab}")
    model, mcfg = init_from(mcfg)
    task = TextClassificationTask(data.train, data.val, data.num_classes, scores, cfg.train)
    target = "regression" if data.regression else f"{len(data.class_names)} classes"
    return Built(model, mcfg, task, tokenizer=data.tokenizer, class_names=data.class_names,
                 summary=f"BERT classifier, init {mcfg.init or 'random'}; data: {len(data.train)} train / "
                         f"{len(data.val) if data.val else 0} val, {target}; scores {', '.join(scores)}")


def evaluate(run_dir: Path, source, split: str = "train", limit: int | None = None) -> dict:
    """``xformer eval``: loss, accuracy (classes) and the run's scores (``score``: their mean) of its classifier
    on the labelled texts of ``source`` (the first ``limit``), read as in training (its columns; those a
    catalogue name declares where the run's config leaves them unset) and mapped onto the run's classes."""
    from xformer.data.configs import catalogue_defaults
    from xformer.data.text.texts import read_labelled_texts, tokenize_examples
    from xformer.trained.evaluate import LABELLED_TEXTS, check_data
    from xformer.tasks.trained_run import load_run

    run = load_run(run_dir, "text_classification")
    cfg, classes = run.cfg, run.class_names
    regression = cfg.model.num_classes == 1
    data_cfg = TextClassificationDataConfig.model_validate(
        catalogue_defaults({**cfg.data.model_dump(), "source": source, "max_examples": limit}, "--data"))
    data_cfg = data_cfg.model_copy(update={"label_type": "regression" if regression else "class"})
    check_data(run_dir, "text_classification", source, split, (LABELLED_TEXTS,), "labelled texts", data_cfg)
    if classes is None and not regression:
        raise XformerError(f"{run_dir}: no classes.json, so the run's labels are not known")
    read = read_labelled_texts(source, split, data_cfg, "--data")
    labels = read.labels if regression else [str(y) for y in read.labels]  # class names: labels as strings
    unknown = [] if regression else sorted(set(labels) - set(classes))
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise XformerError(f"--data {source}: {len(unknown)} labels the run never trained on ({shown}); "
                           f"its classes are {', '.join(map(repr, classes))}")
    dataset = tokenize_examples(read.texts, labels, None if regression else classes, run.tokenizer,
                                cfg.data.max_seq_len, "--data", read.pairs)
    num_classes = 1 if regression else len(classes)
    task = TextClassificationTask(None, dataset, num_classes, cfg.data.scores, cfg.train)
    metrics = task.evaluate(run.model)
    absent = {} if regression else {"absent_classes": [c for c in classes if c not in set(labels)]}  # not 0%
    return {**metrics, "examples": len(dataset), "tokens": int(dataset.lengths.sum()), **absent}


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
