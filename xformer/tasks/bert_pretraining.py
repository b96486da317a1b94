"""BERT pretraining: masked LM + next-sentence prediction on sentence pairs (``data.objective: mlm_nsp``,
BERT's recipe), or masked LM alone on packed full-length sequences (``mlm``, as RoBERTa)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from xformer.config import RunConfig
from xformer.data.configs import DataConfig
from xformer.models.bert import BertConfig
from xformer.errors import XformerError
from xformer.losses import IGNORE_INDEX, bert_pretraining_loss, bert_pretraining_metrics
from xformer.tasks.base import Built, TaskSpec


class BertPretrainingConfig(RunConfig):
    """Masked-LM + next-sentence pretraining of a BERT on a text corpus."""

    task: Literal["bert_pretraining"] = "bert_pretraining"
    model: BertConfig = BertConfig()
    data: DataConfig = DataConfig()


class BertPretrainingTask:
    """Masks each batch on the device and computes MLM + NSP loss with the sparse MLM head.

    With ``sep_id`` (``data.document_mask``) each packed row is split into its documents, each ending at
    a ``[SEP]``, and a token attends only within its own.
    """

    local_rows = True  # masking draws can be made for a whole micro-batch and sliced to a process's rows

    def __init__(self, train_data, val_data, masker, sep_id: int | None = None):
        self.train_data, self.val_data, self.masker, self.sep_id = train_data, val_data, masker, sep_id

    def prepare(self, batch: dict, generator: torch.Generator, train: bool,
                rows: tuple[int, int] | None = None) -> dict:
        input_ids, labels = self.masker(batch["input_ids"], batch["attention_mask"], generator, rows)
        if self.sep_id is not None:  # (B, T) document number: a [SEP] closes its own document
            sep = (batch["input_ids"] == self.sep_id).int()
            batch = {**batch, "segments": sep.cumsum(dim=1) - sep}
        return {**batch, "input_ids": input_ids, "labels": labels}

    def normalizers(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"masked": (batch["labels"] != IGNORE_INDEX).sum(), "rows": batch["labels"].new_tensor(len(batch["labels"]))}

    def loss(self, model, local: dict, norms: dict):
        out = model(input_ids=local["input_ids"], attention_mask=local["attention_mask"],
                    token_type_ids=local["token_type_ids"], labels=local["labels"], segments=local.get("segments"))
        nsp_labels = local.get("next_sentence_label")
        loss, counts = bert_pretraining_loss(  # MLM only when the examples have no NSP labels (packed)
            out.mlm_logits, out.nsp_logits if nsp_labels is not None else None, local["labels"], nsp_labels,
            mlm_normalizer=norms["masked"].clamp(min=1), nsp_normalizer=norms["rows"],
        )
        counts["tokens"] = local["attention_mask"].sum()
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return bert_pretraining_metrics(counts)


def load_data(cfg: BertPretrainingConfig, tokenizer: str | None):
    """Cached examples (prepared on the first run); with ``tokenizer``, that vocabulary."""
    from xformer.data import prepare_pretraining_data
    from xformer.trained.init import check_sequence_length

    check_sequence_length(cfg.model, cfg.data.max_seq_len)  # before any data preparation
    data_cfg = cfg.data
    if tokenizer is not None:
        data_cfg = data_cfg.model_copy(update={"tokenizer": data_cfg.tokenizer.model_copy(update={"path": tokenizer})})
    return prepare_pretraining_data(data_cfg)


MASKING_SAMPLE = 256  # training rows the masking check measures


def check_masking(train, masker, mlm_prob: float, batch_size: int) -> None:
    """Refuse masking that leaves the masked-LM loss (almost) without targets, and warn when most rows get
    none: the expected masked tokens, ``mlm_prob`` of the maskable (non-special, non-padding) tokens of the
    first :data:`MASKING_SAMPLE` training rows, counted without drawing (the run's randomness is untouched)."""
    import sys

    n = min(len(train), MASKING_SAMPLE)
    if n == 0:
        return
    batch = train.batch(np.arange(n))
    maskable = int((batch["attention_mask"].bool() & ~masker.is_special[batch["input_ids"].long()]).sum())
    per_row = mlm_prob * maskable / n
    fact = (f"data.mlm_prob={mlm_prob:g} of the {maskable / n:.1f} maskable tokens a row (measured on the first "
            f"{n} training rows) masks {per_row:.2f} tokens a row")
    advice = "raise data.mlm_prob or data.max_seq_len, or use longer documents"
    if per_row * batch_size < 1:
        raise XformerError(f"{fact}, {per_row * batch_size:.2f} a batch of train.batch_size={batch_size}: most "
                           f"steps would have no masked-LM targets; {advice}")
    if per_row < 1:
        print(f"warning: {fact}: most rows give the masked-LM loss no targets; {advice}", file=sys.stderr)


def build(cfg: BertPretrainingConfig, data) -> Built:
    from xformer.data import MLMMasker
    from xformer.trained.init import init_from

    # the next-sentence head and pooler exist for the BERT objective only
    mcfg, vocab = cfg.model.model_copy(update={"nsp": cfg.data.objective == "mlm_nsp"}), len(data.tokenizer)
    if mcfg.init is None:
        if mcfg.vocab_size is None:
            mcfg = mcfg.model_copy(update={"vocab_size": vocab})
        elif mcfg.vocab_size < vocab:
            raise XformerError(f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's {vocab}")
    model, mcfg = init_from(mcfg)
    masker = MLMMasker(data.tokenizer, mlm_prob=cfg.data.mlm_prob, mask_token_prob=cfg.data.mask_token_prob,
                       random_token_prob=cfg.data.random_token_prob, whole_word_mask=cfg.data.whole_word_mask)
    check_masking(data.train, masker, cfg.data.mlm_prob, cfg.train.batch_size)
    sep_id = data.tokenizer.sep_token_id if cfg.data.document_mask else None
    return Built(model, mcfg, BertPretrainingTask(data.train, data.val, masker, sep_id), tokenizer=data.tokenizer,
                 summary=f"BERT, init {mcfg.init or 'random'}; data: {len(data.train)} train / {len(data.val)} val "
                         f"examples")


def evaluate(run_dir: Path, source, split: str = "train", limit: int | None = None) -> dict:
    """``xformer eval``: masked-LM loss and accuracy of the run's model on every document of ``source`` (the
    first ``limit``), none held out, with the run's tokenizer and masking settings and fixed draws.

    Masked LM is always measured on packed full-length rows, whatever the run's objective, so runs of
    either objective are compared on the same tokens; a ``mlm_nsp`` run also gets next-sentence loss and
    accuracy on sentence pairs made from the same documents (skipped, with a warning, where the data
    cannot give them). Examples are cached like training data.
    """
    import sys

    from xformer.data import MLMMasker, prepare_pretraining_data
    from xformer.data.text.texts import TEXT_COLUMNS
    from xformer.trained.evaluate import LABELLED_TEXTS, TEXTS, check_data, task_scores
    from xformer.tasks.trained_run import load_run

    found = check_data(run_dir, "bert_pretraining", source, split, (TEXTS, LABELLED_TEXTS), "text")
    run = load_run(run_dir, "bert_pretraining")
    cfg, model, device = run.cfg, run.model, run.device
    # the run's text column, else the first usual one the data has (sst2: sentence)
    column = next((c for c in (cfg.data.text_column, *TEXT_COLUMNS) if c in found.columns), cfg.data.text_column)

    def scores(objective: str) -> tuple[dict, dict, int]:
        data = prepare_pretraining_data(cfg.data.model_copy(update={
            "source": source, "split": split, "text_column": column, "max_documents": limit, "val_documents": 0,
            "objective": objective, "document_mask": cfg.data.document_mask and objective == "mlm",
            "tokenizer": cfg.data.tokenizer.model_copy(update={"path": run.tokenizer_dir}),
        }))
        masker = MLMMasker(data.tokenizer, mlm_prob=cfg.data.mlm_prob, mask_token_prob=cfg.data.mask_token_prob,
                           random_token_prob=cfg.data.random_token_prob, whole_word_mask=cfg.data.whole_word_mask)
        sep_id = data.tokenizer.sep_token_id if cfg.data.document_mask and objective == "mlm" else None
        task = BertPretrainingTask(data.train, None, masker, sep_id)
        return *task_scores(model, task, data.train, cfg.train.batch_size, device), len(data.train)

    metrics, counts, rows = scores("mlm")
    out = {"mlm_acc": metrics["mlm_acc"], "mlm_loss": metrics["mlm_loss"], "examples": rows,
           "tokens": int(counts["tokens"]), "masked": int(counts["mlm_n"])}
    if not counts["mlm_n"]:  # mlm_loss and mlm_acc are NaN (null in the JSON): say why, they are not 0
        print(f"warning: {source}: no token was masked in {rows} rows: mlm_loss and mlm_acc are not measured "
              f"(no targets)", file=sys.stderr)
    if cfg.data.objective == "mlm_nsp" and model.config.nsp:
        try:
            pairs, _, _ = scores("mlm_nsp")
            out.update(nsp_acc=pairs["nsp_acc"], nsp_loss=pairs["nsp_loss"])
        except XformerError as err:
            print(f"warning: next-sentence accuracy not measured: {err}", file=sys.stderr)
    return out


def export(run_dir: Path, out_dir: Path) -> str:
    """Export as HF ModernBERT when the model is ModernBERT-shaped (rotary positions), else as HF BERT."""
    from xformer.interop.hf_bert import export_bert
    from xformer.interop.hf_modernbert import export_modernbert, is_modernbert
    from xformer.tasks.trained_run import load_run

    run = load_run(run_dir, "bert_pretraining", device="cpu")
    model = run.model
    if is_modernbert(model.config):
        export_modernbert(model, out_dir, tokenizer=run.tokenizer)
        return "transformers.ModernBertForMaskedLM"
    export_bert(model, out_dir, tokenizer=run.tokenizer)
    return "transformers.BertForPreTraining" if model.config.nsp else "transformers.BertForMaskedLM"


TASK = TaskSpec(name="bert_pretraining", config=BertPretrainingConfig, primary_metric="mlm_acc",
                load_data=load_data, build=build, evaluate=evaluate, export=export)
