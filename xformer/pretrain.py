"""BERT pretraining: the masked-LM + next-sentence task for the trainer, and ``pretrain(cfg)``."""

from __future__ import annotations

from pathlib import Path

import torch

from xformer import distributed
from xformer.config import BertConfig, BertPretrainingConfig, save_config
from xformer.errors import XformerError
from xformer.losses import IGNORE_INDEX, bert_pretraining_loss, bert_pretraining_metrics
from xformer.models.bert import BertForPreTraining
from xformer.trainer import Trainer, check_run_dir


class BertPretrainingTask:
    """Masks each batch on the device and computes MLM + NSP loss with the sparse MLM head."""

    def __init__(self, train_data, val_data, masker):
        self.train_data, self.val_data, self.masker = train_data, val_data, masker

    def prepare(self, batch: dict, generator: torch.Generator, train: bool) -> dict:
        input_ids, labels = self.masker(batch["input_ids"], batch["attention_mask"], generator)
        return {**batch, "input_ids": input_ids, "labels": labels}

    def loss(self, model, local: dict, full: dict):
        out = model(input_ids=local["input_ids"], attention_mask=local["attention_mask"],
                    token_type_ids=local["token_type_ids"], labels=local["labels"])
        loss, counts = bert_pretraining_loss(
            out.mlm_logits, out.nsp_logits, local["labels"], local["next_sentence_label"],
            mlm_normalizer=(full["labels"] != IGNORE_INDEX).sum().clamp(min=1),
            nsp_normalizer=full["next_sentence_label"].numel(),
        )
        counts["tokens"] = local["attention_mask"].sum()
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return bert_pretraining_metrics(counts)


def initial_model(cfg: BertPretrainingConfig, vocab_size: int) -> BertForPreTraining:
    """A fresh model, or one initialised from ``model.init`` (``hf:<dir or id>``, a run or checkpoint).

    With an init, the architecture comes from the checkpoint; dropout and attention backend from the recipe.
    """
    mcfg = cfg.model
    if mcfg.init is None:
        if mcfg.vocab_size is None:
            mcfg.vocab_size = vocab_size
        elif mcfg.vocab_size < vocab_size:
            raise XformerError(f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
        return BertForPreTraining(mcfg)
    if mcfg.init.startswith("hf:"):
        from xformer.interop import load_hf_bert

        source = load_hf_bert(mcfg.init[3:], heads=True)  # missing heads keep their fresh init
    else:
        from xformer.loading import load

        source = load(mcfg.init)
    keep = {k: getattr(mcfg, k) for k in ("dropout", "attn_dropout", "attn_backend", "init")}
    arch = {k: v for k, v in source.config.model_dump().items() if k not in keep}
    cfg.model = BertConfig(**arch, **keep)
    model = BertForPreTraining(cfg.model)
    unexpected = model.load_state_dict(source.state_dict(), strict=False).unexpected_keys
    if unexpected:
        raise XformerError(f"model.init={mcfg.init}: unexpected weights {unexpected[:3]}")
    return model


def pretrain(cfg: BertPretrainingConfig, resume: bool = False) -> dict:
    """Prepare data (cached), build the model, train; returns the final train and validation metrics."""
    from xformer.data import MLMMasker, prepare_pretraining_data

    dist = distributed.setup(cfg.train.device)
    try:
        run_dir = Path(cfg.out_dir or "runs/pretrain")
        check_run_dir(run_dir, cfg, resume)
        if cfg.model.init and cfg.model.init.startswith("hf:") and cfg.data.tokenizer.path is None:
            cfg.data.tokenizer.path = cfg.model.init[3:]  # the checkpoint's own vocabulary
        with distributed.main_first(dist):
            data = prepare_pretraining_data(cfg.data)
        torch.manual_seed(cfg.train.seed)
        model = initial_model(cfg, len(data.tokenizer))
        masker = MLMMasker(data.tokenizer, mlm_prob=cfg.data.mlm_prob, mask_token_prob=cfg.data.mask_token_prob,
                           random_token_prob=cfg.data.random_token_prob, whole_word_mask=cfg.data.whole_word_mask)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            data.tokenizer.save_pretrained(run_dir / "tokenizer")
            n_params = sum(p.numel() for p in model.parameters())
            print(f"model: {n_params / 1e6:.2f}M parameters, backend {model.bert.encoder.backend}; "
                  f"data: {len(data.train)} train / {len(data.val)} val examples; run dir: {run_dir}")
        task = BertPretrainingTask(data.train, data.val, masker)
        return Trainer(cfg, model, task, run_dir, dist).fit(resume=resume)
    finally:
        distributed.teardown()
