"""CLIP-style contrastive training on image-caption pairs, with zero-shot and retrieval evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from xformer.config import RunConfig, Section
from xformer.data.configs import CaptionDataConfig, ImageDataConfig
from xformer.models.clip import ClipConfig
from xformer.data.image.augment import normalize, random_hflip, random_resized_crop
from xformer.errors import XformerError
from xformer.losses import contrastive_loss, contrastive_metrics
from xformer.tasks.base import Built, TaskSpec
from xformer.tasks.trained_run import load_run
from xformer.trained.zeroshot import (
    CIFAR10_TEMPLATES,
    check_class_names,
    check_templates,
    preprocess,
    retrieval_eval,
    zeroshot_eval,
)

TOWERS = ("vision", "text")
ZEROSHOT_PREFIX = "zs_"  # of the zero-shot scores among the validation metrics


class ClipAugmentConfig(Section):
    """Training-time image augmentation for contrastive training (on the device)."""

    crop_scale: tuple[float, float] = Field((0.5, 1.0), description="random resized crop area range; (1, 1): off")
    hflip: bool = False


class ZeroShotConfig(Section):
    """Evaluation during training: zero-shot classification and retrieval on an image-caption split."""

    source: str | list[str] | None = Field(None, description="labelled images (e.g. CIFAR-10); None: skip")
    split: str = "test"
    max_images: int | None = Field(None, gt=0, description="the first N images only")
    classes: list[str] | None = Field(None, description="None: the dataset's class names")
    templates: list[str] | None = Field(None, description="None: the CIFAR-10 templates; '{c}' is the class")
    retrieval: bool = Field(True, description="image<->text recall@K on the validation split")
    batch_size: int = Field(256, gt=0)


class ContrastiveConfig(RunConfig):
    """CLIP-style contrastive training on image-caption pairs, with zero-shot and retrieval evaluation."""

    task: Literal["contrastive"] = "contrastive"
    model: ClipConfig = ClipConfig()
    data: CaptionDataConfig = CaptionDataConfig()
    augment: ClipAugmentConfig = ClipAugmentConfig()
    eval: ZeroShotConfig = ZeroShotConfig()


@dataclass(frozen=True)
class ZeroShotSet:
    """Labelled images to classify zero-shot: uint8 ``images`` (N, C, H, W), class indices ``labels`` (N,),
    the ``classes`` the prompts are built from, and ``where`` the images come from (named in errors)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    where: str


class ContrastiveTask:
    """Draws one caption per image (at random when training, the first when evaluating), augments the
    images on the device, and trains on the symmetric contrastive loss. ``evaluate(model)`` adds
    zero-shot classification and retrieval to the trainer's validation metrics; a trained run is scored
    by the same method (:func:`evaluate`)."""

    local_rows = True  # caption and crop draws are made for a whole micro-batch and sliced; the loss gathers

    def __init__(self, cfg: ContrastiveConfig, train_data, val_data, tokenize,
                 zeroshot_data: ZeroShotSet | None = None):
        self.cfg, self.train_data, self.val_data, self.tokenize = cfg, train_data, val_data, tokenize
        self.zeroshot_data = zeroshot_data
        self.size = cfg.model.vision.image_size

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Weight decay on matrices only (not on biases, norms, [CLS], positions, the temperature);
        with ``model.lock_image`` the image tower and its projection are frozen."""
        if self.cfg.model.lock_image:
            for p in (*model.vision.parameters(), *model.visual_projection.parameters()):
                p.requires_grad_(False)
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                plain = p.ndim < 2 or name.endswith(("cls_token", "embeddings.position"))
                (no_decay if plain else decay).append(p)
        return [{"params": decay, "weight_decay": self.cfg.train.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def transform(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Evaluation images: uint8 (B, C, H, W) -> normalised float (B, C, S, S), nothing random."""
        return preprocess(pixel_values, self.size, self.cfg.data.mean, self.cfg.data.std)

    def prepare(self, batch: dict, generator: torch.Generator, train: bool,
                rows: tuple[int, int] | None = None) -> dict:
        ids, lengths, counts = batch["input_ids"], batch["lengths"], batch["counts"]  # (B, K, L), (B, K), (B,)
        if train:  # with rows=(offset, total): draws for the whole micro-batch, sliced to these rows
            offset, total = rows or (0, len(counts))
            u = torch.rand(total, generator=generator, device=generator.device)[offset:offset + len(counts)]
            pick = (u.to(counts.device) * counts).long().clamp(max=counts - 1)  # (B,) one of each image's captions
            aug = self.cfg.augment
            x = random_resized_crop(batch["pixel_values"].float() / 255, self.size, aug.crop_scale, generator,
                                    rows=rows)
            if aug.hflip:
                x = random_hflip(x, generator, rows)
            pixel_values = normalize(x, self.cfg.data.mean, self.cfg.data.std)
        else:
            pick = torch.zeros_like(counts)
            pixel_values = self.transform(batch["pixel_values"])
        rows = torch.arange(len(counts), device=counts.device)
        input_ids = ids[rows, pick]  # (B, L)
        mask = (torch.arange(ids.size(-1), device=ids.device) < lengths[rows, pick][:, None]).long()  # (B, L)
        return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": mask}

    def normalizers(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"rows": torch.tensor(len(batch["input_ids"]), device=batch["input_ids"].device)}

    def loss(self, model, local: dict, norms: dict):
        out = model(pixel_values=local["pixel_values"], input_ids=local["input_ids"],
                    attention_mask=local["attention_mask"])
        loss, counts = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale, normalizer=norms["rows"])
        counts["images"] = counts["n"].clone()
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        return contrastive_metrics(counts)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Zero-shot (``zs_`` metrics) on ``zeroshot_data`` and retrieval on the validation pairs, as
        configured in ``eval``."""
        ecfg, device = self.cfg.eval, next(model.parameters()).device
        was_training = model.training
        model.eval()
        scores = {}
        if self.zeroshot_data is not None:
            zs = self.zeroshot_data
            found = zeroshot_eval(model, zs.images, zs.labels, zs.classes, ecfg.templates or CIFAR10_TEMPLATES,
                                  self.tokenize, self.transform, device, ecfg.batch_size, where=zs.where)
            scores.update({f"{ZEROSHOT_PREFIX}{k}": v for k, v in found.items()})
        if ecfg.retrieval and self.val_data is not None:
            scores.update(retrieval_eval(model, self.val_data, self.tokenize, self.transform, device, ecfg.batch_size))
        model.train(was_training)
        return scores


# ----------------------------------------------------------------------------- data and model


def zeroshot_set(source, split: str, max_images: int | None, classes: list[str] | None, cache_dir,
                 keys: tuple[str, str]) -> ZeroShotSet:
    """The labelled images of ``source`` for zero-shot scoring, named by ``classes`` (default: the data's
    class names); ``keys`` name the data and the class names in errors (``eval.source`` / ``eval.classes``
    of a recipe, ``--data`` / ``--classes`` of the CLI). The images are decoded (and cached) once, all of
    them, and the first ``max_images`` sliced off, so each ``max_images`` does not cache its own copy."""
    from xformer.data.image.images import load_image_data

    data = load_image_data(ImageDataConfig(source=source, split=split, val_size=0, cache_dir=cache_dir),
                           for_training=False)
    names = classes or data.class_names
    check_class_names(names, keys[1])
    images, labels = data.train.images[:max_images], data.train.labels[:max_images]  # (N, 3, H, W), (N,)
    return ZeroShotSet(images, labels, names, f"{keys[0]} {source}")


def load_data(cfg: ContrastiveConfig, tokenizer: str | None):
    """(caption pairs (images cached), a :class:`ZeroShotSet` for zero-shot evaluation or None)."""
    from xformer.data.image.captions import load_caption_data
    from xformer.trained.loading import load_tokenizer

    if cfg.eval.templates is not None:
        check_templates(cfg.eval.templates, "eval.templates")
    pairs = load_caption_data(cfg.data, load_tokenizer(tokenizer) if tokenizer else None)
    ecfg = cfg.eval
    zeroshot = None if ecfg.source is None else zeroshot_set(
        ecfg.source, ecfg.split, ecfg.max_images, ecfg.classes, cfg.data.cache_dir, ("eval.source", "eval.classes"))
    return pairs, zeroshot


def clip_model(mcfg: ClipConfig, vocab_size: int) -> tuple[nn.Module, ClipConfig]:
    """A fresh CLIP, a whole one from ``model.init``, or one whose towers start from ``model.vision.init``
    (a ViT) / ``model.text.init`` (a BERT); with its resolved config (see :mod:`xformer.trained.init`).

    Both towers start the same way: the architecture of the tower's checkpoint (the recipe's runtime keys
    kept), the whole CLIP built, then the checkpoint's weights loaded into the tower."""
    from xformer.models import CLIPModel
    from xformer.trained.init import init_from, load_source, load_weights, merge_config

    if mcfg.init is not None:
        return init_from(mcfg)
    towers = {what: getattr(mcfg, what) for what in TOWERS if getattr(mcfg, what).init is not None}
    sources = {what: load_source(tower.init, tower, f"model.{what}.init") for what, tower in towers.items()}
    mcfg = mcfg.model_copy(update={what: merge_config(towers[what], source.config) for what, source in sources.items()})
    if mcfg.text.vocab_size is None:
        mcfg = mcfg.model_copy(update={"text": mcfg.text.model_copy(update={"vocab_size": vocab_size})})
    elif mcfg.text.vocab_size < vocab_size:
        raise XformerError(f"model.text.vocab_size={mcfg.text.vocab_size} is smaller than the tokenizer's {vocab_size}")
    model = CLIPModel(mcfg)
    for what, source in sources.items():
        load_weights(getattr(model, what), source, f"model.{what}.init={towers[what].init}")
    return model, mcfg


def build(cfg: ContrastiveConfig, data) -> Built:
    pairs, zeroshot = data
    model, mcfg = clip_model(cfg.model, len(pairs.tokenizer))
    task = ContrastiveTask(cfg, pairs.train, pairs.val, pairs.tokenize, zeroshot)
    return Built(model, mcfg, task, tokenizer=pairs.tokenizer,
                 summary=f"clip; data: {len(pairs.train)} train / {len(pairs.val) if pairs.val else 0} val images")


def finish(cfg: ContrastiveConfig, data, built: Built, trainer, result: dict) -> None:
    if trainer.dist.is_main:
        from xformer.train.checkpoint import atomic_write_text

        atomic_write_text(trainer.run_dir / "eval_final.json", json.dumps(result["val"], indent=2))


# ----------------------------------------------------------------------------- on a trained run


def evaluate(run_dir: Path, source, split: str = "train", limit: int | None = None,
             mode: Literal["zeroshot", "retrieval"] | None = None, classes: list[str] | None = None,
             templates: list[str] | None = None) -> dict:
    """``xformer eval`` (and ``xformer zeroshot`` / ``retrieval``): the run's model scored by
    :meth:`ContrastiveTask.evaluate` on the first ``limit`` images of ``source``: zero-shot scores
    (``zs_``; ``classes`` default to the data's, ``templates`` to the run's ``eval.templates``) of labelled
    images, or image-text recall@K of image-caption pairs. ``mode`` (``zeroshot`` or ``retrieval``) says
    which; None: as ``source`` holds. Returns the scores and the number of ``images``."""
    from xformer.data.cache import default_cache_dir
    from xformer.data.image.captions import CaptionDataset, Tokenize, load_pairs
    from xformer.trained.evaluate import CAPTIONED_IMAGES, LABELLED_IMAGES, check_data

    if templates is not None:
        check_templates(templates, "--template")
    run = load_run(run_dir, "contrastive")
    cfg, tokenize = run.cfg, Tokenize(run.tokenizer, run.cfg.data.max_text_len)
    if mode is None:
        wants = "labelled images (zero-shot) or image-caption pairs (retrieval)"
        found = check_data(run_dir, "contrastive", source, split, (LABELLED_IMAGES, CAPTIONED_IMAGES), wants)
        mode = "retrieval" if found.kind == CAPTIONED_IMAGES else "zeroshot"
    pairs = zeroshot = None
    if mode == "retrieval":
        data_cfg = cfg.data.model_copy(update={"max_images": limit})
        pairs = CaptionDataset(*load_pairs(source, split, "--data", data_cfg, default_cache_dir(cfg.data)), tokenize)
    else:
        zeroshot = zeroshot_set(source, split, limit, classes, None, ("--data", "--classes"))
    ecfg = cfg.eval.model_copy(update={"templates": templates or cfg.eval.templates, "retrieval": True})
    task = ContrastiveTask(cfg.model_copy(update={"eval": ecfg}), None, pairs, tokenize, zeroshot)
    return {**task.evaluate(run.model), "images": len(pairs if pairs is not None else zeroshot.images)}


def export(run_dir: Path, out_dir: Path) -> str:
    from xformer.interop.hf_clip import export_clip

    run = load_run(run_dir, "contrastive", device="cpu")
    export_clip(run.model, out_dir, tokenizer=run.tokenizer)
    return "transformers.CLIPModel"


TASK = TaskSpec(name="contrastive", config=ContrastiveConfig, primary_metric="t2i_R@10",
                load_data=load_data, build=build, finish=finish, evaluate=evaluate, export=export)
