"""Image classification: a ViT, the CNN baseline or an HF image model, from scratch or fine-tuned."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xformer.config import RunConfig
from xformer.data.configs import AugmentConfig, ImageDataConfig
from xformer.models.registry import model_section
from xformer.models.vit import ViTConfig
from xformer.train.finetune import FinetuneConfig
from xformer.errors import XformerError
from xformer.losses import classification_loss, classification_metrics
from xformer.tasks.base import Built, TaskSpec

# every registered image classifier (ViT, CNN, HF), told apart by model.arch
ImageModelConfig = model_section("image_classifier", default="vit")


class ImageClassificationConfig(RunConfig):
    """Image classification (ViT, CNN or an HF image model), from scratch or fine-tuned."""

    task: Literal["image_classification"] = "image_classification"
    model: ImageModelConfig = ViTConfig()
    data: ImageDataConfig = ImageDataConfig()
    augment: AugmentConfig = AugmentConfig()
    finetune: FinetuneConfig = FinetuneConfig()


class ImageClassificationTask:
    """Augments each batch on the device; soft-target cross-entropy; accuracy against the true labels."""

    local_rows = True  # augmentation draws can be made for a whole micro-batch and sliced to a process's rows

    def __init__(self, train_data, val_data, augmenter, num_classes: int, finetune: FinetuneConfig,
                 weight_decay: float):
        self.train_data, self.val_data = train_data, val_data
        self.augmenter, self.num_classes = augmenter, num_classes
        self.finetune, self.weight_decay = finetune, weight_decay

    def param_groups(self, model: nn.Module) -> list[dict]:
        from xformer.train.finetune import finetune_param_groups

        return finetune_param_groups(model, self.finetune, self.weight_decay)

    def prepare(self, batch: dict, generator: torch.Generator, train: bool,
                rows: tuple[int, int] | None = None) -> dict:
        labels = batch["labels"]
        if train:
            pixel_values, targets = self.augmenter.train(batch["pixel_values"], labels, generator, rows)
        else:
            pixel_values = self.augmenter.eval(batch["pixel_values"])
            targets = F.one_hot(labels, self.num_classes).float()
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)  # faster convolutions
        return {"pixel_values": pixel_values, "targets": targets, "labels": labels}

    def normalizers(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"rows": batch["labels"].new_tensor(len(batch["labels"]))}

    def loss(self, model, local: dict, norms: dict):
        logits = model(pixel_values=local["pixel_values"]).logits
        loss, counts = classification_loss(logits, local["targets"], local["labels"], norms["rows"])
        counts["images"] = local["labels"].new_tensor(local["labels"].numel())
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return classification_metrics(counts)


def _augmenter(cfg: ImageClassificationConfig, num_classes: int, image_size: int | None):
    """Augmentation, then a resize to the model's input size (with an init, the checkpoint's)."""
    from xformer.data.image.augment import Augmenter

    return Augmenter(cfg.augment, cfg.data.mean, cfg.data.std, num_classes, image_size)


def load_data(cfg: ImageClassificationConfig, tokenizer: str | None):
    from xformer.data.image.images import load_image_data

    return load_image_data(cfg.data)


def build(cfg: ImageClassificationConfig, data) -> Built:
    from xformer.trained.init import init_from

    num_classes = len(data.class_names)
    mcfg = cfg.model
    if mcfg.num_classes is None:
        mcfg = mcfg.model_copy(update={"num_classes": num_classes})
    elif mcfg.num_classes != num_classes:
        raise XformerError(f"model.num_classes={mcfg.num_classes} but the data has {num_classes} classes")
    model, mcfg = init_from(mcfg)
    model = model.to(memory_format=torch.channels_last)
    task = ImageClassificationTask(data.train, data.val, _augmenter(cfg, num_classes, mcfg.image_size), num_classes,
                                   cfg.finetune, cfg.train.weight_decay)
    return Built(model, mcfg, task, class_names=data.class_names,
                 summary=f"{mcfg.arch}, init {mcfg.init or 'random'}; data: {len(data.train)} train / "
                         f"{len(data.val) if data.val else 0} val images, {num_classes} classes")


def finish(cfg: ImageClassificationConfig, data, built: Built, trainer, result: dict) -> None:
    """Per-class accuracy and the confusion matrix of the validation and test splits, into the run directory."""
    from xformer.trained.evaluate import classification_report, write_report

    if not trainer.dist.is_main:
        return
    for split, dataset in (("val", data.val), ("test", data.test)):
        if dataset is not None and len(dataset):
            report = classification_report(trainer.model, dataset, built.task.augmenter, data.class_names,
                                           cfg.train.batch_size, trainer.dist.device, trainer.autocast)
            write_report(report, trainer.run_dir, split)
            result[f"{split}_report"] = {k: report[k] for k in ("loss", "acc")}


def evaluate(run_dir: Path, source, split: str = "train", limit: int | None = None) -> dict:
    """``xformer eval``: loss, accuracy, per-class accuracy and confusion matrix of the run's model on every
    image of ``source`` (the first ``limit``), whose classes must be the run's."""
    from xformer.data.image.images import ImageDataset, load_image_data
    from xformer.trained.evaluate import LABELLED_IMAGES, check_data, classification_report
    from xformer.tasks.trained_run import load_run

    run = load_run(run_dir, "image_classification")
    cfg = run.cfg
    check_data(run_dir, "image_classification", source, split, (LABELLED_IMAGES,), "labelled images", cfg.data)
    class_names = run.class_names
    data_cfg = cfg.data.model_copy(update={
        "source": source, "split": split, "val_source": None, "val_size": 0,
        "test_source": None, "max_images": limit,
    })
    data = load_image_data(data_cfg, for_training=False)
    class_names, dataset = class_names or data.class_names, data.train
    unknown = [c for c in data.class_names if c not in class_names]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise XformerError(f"--data {source}: {len(unknown)} classes the run never trained on ({shown}); "
                           f"its classes are {', '.join(map(repr, class_names))}")
    if data.class_names != class_names:  # e.g. a few of the run's classes: the run's class indices
        remap = torch.tensor([class_names.index(c) for c in data.class_names])
        dataset = ImageDataset(dataset.images, remap[dataset.labels])
    augmenter = _augmenter(cfg, len(class_names), cfg.model.image_size)
    return classification_report(run.model, dataset, augmenter, class_names, cfg.train.batch_size, run.device)


def export(run_dir: Path, out_dir: Path) -> str:
    from xformer.interop.hf_vit import export_vit
    from xformer.models import ViTForImageClassification
    from xformer.tasks.trained_run import load_run

    run = load_run(run_dir, "image_classification", device="cpu")
    if not isinstance(run.model, ViTForImageClassification):
        raise XformerError(f"{run_dir}: no HF export for a {type(run.model).__name__} (ViT image classifiers export)")
    export_vit(run.model, out_dir, class_names=run.class_names)
    return "transformers.ViTForImageClassification"


TASK = TaskSpec(name="image_classification", config=ImageClassificationConfig, primary_metric="acc",
                load_data=load_data, build=build, finish=finish, evaluate=evaluate, export=export)
