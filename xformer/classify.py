"""Image classification: the task for the trainer, fine-tuning options, and ``train_classifier(cfg)``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from xformer import distributed
from xformer.config import FinetuneConfig, ImageClassificationConfig, save_config
from xformer.errors import XformerError
from xformer.losses import classification_loss, classification_metrics
from xformer.trainer import Trainer, check_run_dir


class ImageClassificationTask:
    """Augments each batch on the device; soft-target cross-entropy; accuracy against the true labels."""

    def __init__(self, train_data, val_data, augmenter, num_classes: int, finetune: FinetuneConfig,
                 weight_decay: float):
        self.train_data, self.val_data = train_data, val_data
        self.augmenter, self.num_classes = augmenter, num_classes
        self.finetune, self.weight_decay = finetune, weight_decay

    def param_groups(self, model: nn.Module) -> list[dict]:
        return finetune_param_groups(model, self.finetune, self.weight_decay)

    def prepare(self, batch: dict, generator: torch.Generator, train: bool) -> dict:
        labels = batch["labels"]
        if train:
            pixel_values, targets = self.augmenter.train(batch["pixel_values"], labels, generator)
        else:
            pixel_values = self.augmenter.eval(batch["pixel_values"])
            targets = F.one_hot(labels, self.num_classes).float()
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)  # faster convolutions
        return {"pixel_values": pixel_values, "targets": targets, "labels": labels}

    def loss(self, model, local: dict, full: dict):
        logits = model(pixel_values=local["pixel_values"]).logits
        loss, counts = classification_loss(logits, local["targets"], local["labels"], full["labels"].numel())
        counts["images"] = local["labels"].new_tensor(local["labels"].numel())
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return classification_metrics(counts)


# ----------------------------------------------------------------------------- fine-tuning


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's depth for layer-wise LR decay and freezing: 0 for the input embeddings, i + 1 for
    block i (or backbone stage i), ``L + 1`` for what follows (final norm, head); returns (ids, L)."""
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "vit"):  # ours: vit.embeddings, vit.encoder.blocks.{i}, the rest
        depth = len(model.vit.encoder.blocks)
        ids = {}
        for n in names:
            block = re.match(r"vit\.encoder\.blocks\.(\d+)\.", n)
            ids[n] = 0 if n.startswith(("vit.embeddings.", "vit.norm_pre.")) else int(block[1]) + 1 if block else depth + 1
        return ids, depth
    if hasattr(model, "backbone_stages"):  # the CNN, an HF image classifier: stages of the backbone
        stages = model.backbone_stages()
        by_param = {id(p): i + 1 for i, stage in enumerate(stages) for p in stage.parameters()}
        head = {id(p) for p in head_parameters(model)}
        params = dict(model.named_parameters())
        ids = {n: len(stages) + 1 if id(params[n]) in head else by_param.get(id(params[n]), 0) for n in names}
        return ids, len(stages)
    raise XformerError(f"finetune.freeze=all_but_last and finetune.layer_decay need a model made of blocks "
                       f"or stages, not {type(model).__name__}")


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classification head's parameters (every image model has a ``head`` module)."""
    return list(model.head.parameters())


def finetune_param_groups(model: nn.Module, cfg: FinetuneConfig, weight_decay: float) -> list[dict]:
    """Freeze what ``cfg.freeze`` says; split the rest by layer (LR scale) and by decay / no decay."""
    head = {id(p) for p in head_parameters(model)}
    ids, depth = layer_ids(model) if (cfg.freeze == "all_but_last" or cfg.layer_decay) else ({}, 0)
    for name, p in model.named_parameters():
        if cfg.freeze == "backbone":
            p.requires_grad_(id(p) in head)
        elif cfg.freeze == "all_but_last":
            p.requires_grad_(ids[name] > depth - cfg.unfreeze_last)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = cfg.layer_decay ** (depth + 1 - ids[name]) if cfg.layer_decay else 1.0
        if id(p) in head:
            scale *= cfg.head_lr_scale
        # no decay on biases, norms, and ViT's [CLS] token and position embeddings (as timm)
        decay = weight_decay if p.ndim >= 2 and not name.endswith(("cls_token", "embeddings.position")) else 0.0
        group = groups.setdefault((scale, decay), {"params": [], "weight_decay": decay, "lr_scale": scale})
        group["params"].append(p)
    if not groups:
        raise XformerError("finetune settings leave no trainable parameters")
    return list(groups.values())


def initial_image_model(cfg: ImageClassificationConfig, num_classes: int) -> nn.Module:
    """A fresh model, or one from ``model.init`` (``hf:<dir or id>``, a run dir or a checkpoint) with a new
    head when the number of classes differs. With an init the architecture comes from the checkpoint."""
    from xformer.models import build_model

    mcfg = cfg.model
    if mcfg.num_classes is None:
        mcfg.num_classes = num_classes
    if mcfg.init is None or mcfg.arch == "hf_image":
        return build_model(mcfg)
    if mcfg.init.startswith("hf:"):
        if mcfg.arch != "vit":
            raise XformerError(f"model.init={mcfg.init}: HF checkpoints load as model.arch vit or hf_image")
        from xformer.interop.hf_vit import load_hf_vit

        source = load_hf_vit(mcfg.init[3:], num_classes=mcfg.num_classes, attn_backend=mcfg.attn_backend)
    else:
        from xformer.loading import load

        source = load(mcfg.init)
    if getattr(source.config, "arch", None) != mcfg.arch:
        raise XformerError(f"model.init={mcfg.init} is a {type(source).__name__}, not model.arch {mcfg.arch}")
    recipe_keys = {"dropout", "attn_dropout", "attn_backend", "init", "num_classes", "pool"}
    arch = {k: v for k, v in source.config.model_dump().items() if k not in recipe_keys}
    cfg.model = type(mcfg)(**arch, **{k: getattr(mcfg, k) for k in recipe_keys if hasattr(mcfg, k)})
    model = build_model(cfg.model)
    state = source.state_dict()
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}  # a new head if K differs
    model.load_state_dict(state, strict=False)
    return model


# ----------------------------------------------------------------------------- entry point


def train_classifier(cfg: ImageClassificationConfig, resume: bool = False) -> dict:
    """Load (and cache) the images, build or load the model, train, and write the final evaluation
    (per-class accuracy, confusion matrix) of the validation and test splits into the run directory."""
    from xformer.data.augment import Augmenter
    from xformer.data.images import load_image_data
    from xformer.evaluate import classification_report, write_report

    dist = distributed.setup(cfg.train.device)
    try:
        run_dir = Path(cfg.out_dir or "runs/classify")
        check_run_dir(run_dir, cfg, resume)
        with distributed.main_first(dist):
            data = load_image_data(cfg.data)
        num_classes = len(data.class_names)
        torch.manual_seed(cfg.train.seed)
        model = initial_image_model(cfg, num_classes).to(memory_format=torch.channels_last)
        augmenter = Augmenter(cfg.augment, cfg.data.mean, cfg.data.std, num_classes, cfg.model.image_size)
        task = ImageClassificationTask(data.train, data.val, augmenter, num_classes, cfg.finetune,
                                       cfg.train.weight_decay)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            (run_dir / "classes.json").write_text(json.dumps(data.class_names))
            n_params = sum(p.numel() for p in model.parameters())
            print(f"model: {cfg.model.arch}, {n_params / 1e6:.2f}M parameters; data: {len(data.train)} train / "
                  f"{len(data.val) if data.val else 0} val images, {num_classes} classes; run dir: {run_dir}")
        trainer = Trainer(cfg, model, task, run_dir, dist)
        result = trainer.fit(resume=resume)
        if dist.is_main:
            for split, dataset in (("val", data.val), ("test", data.test)):
                if dataset is not None and len(dataset):
                    report = classification_report(trainer.model, dataset, augmenter, data.class_names,
                                                   cfg.train.batch_size, dist.device, trainer.autocast)
                    write_report(report, run_dir, split)
                    result[f"{split}_report"] = {k: report[k] for k in ("loss", "acc")}
        return result
    finally:
        distributed.teardown()
