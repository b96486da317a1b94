"""CLIP-style contrastive training on image-caption pairs, with zero-shot and retrieval evaluation."""

from __future__ import annotations

import json
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
from xformer.trained.zeroshot import CIFAR10_TEMPLATES, preprocess, retrieval_eval, zeroshot_eval


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


class ContrastiveTask:
    """Draws one caption per image (at random when training, the first when evaluating), augments the
    images on the device, and trains on the symmetric contrastive loss. ``evaluate(model)`` adds
    zero-shot classification and retrieval to the trainer's validation metrics."""

    local_rows = True  # caption and crop draws are made for a whole micro-batch and sliced; the loss gathers

    def __init__(self, cfg: ContrastiveConfig, train_data, val_data, tokenize, zeroshot_data=None):
        self.cfg, self.train_data, self.val_data, self.tokenize = cfg, train_data, val_data, tokenize
        self.zeroshot_data = zeroshot_data  # (images uint8, labels, class names) or None
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
        """Zero-shot (``zs_`` metrics) and retrieval on the validation pairs, as configured in ``eval``."""
        ecfg, device = self.cfg.eval, next(model.parameters()).device
        was_training = model.training
        model.eval()
        scores = {}
        if self.zeroshot_data is not None:
            images, labels, classes = self.zeroshot_data
            zs = zeroshot_eval(model, images, labels, classes, ecfg.templates or CIFAR10_TEMPLATES,
                               self.tokenize, self.transform, device, ecfg.batch_size, where=f"eval.source {ecfg.source}")
            scores.update({f"zs_{k}": v for k, v in zs.items()})
        if ecfg.retrieval and self.val_data is not None:
            scores.update(retrieval_eval(model, self.val_data, self.tokenize, self.transform, device, ecfg.batch_size))
        model.train(was_training)
        return scores


# ----------------------------------------------------------------------------- data and model


def load_data(cfg: ContrastiveConfig, tokenizer: str | None):
    """(caption pairs (images cached), (images, labels, class names) for zero-shot evaluation or None)."""
    from xformer.data.image.captions import load_caption_data
    from xformer.data.image.images import load_image_data
    from xformer.trained.loading import load_tokenizer
    from xformer.trained.zeroshot import check_class_names, check_templates

    if cfg.eval.templates is not None:
        check_templates(cfg.eval.templates, "eval.templates")
    pairs = load_caption_data(cfg.data, load_tokenizer(tokenizer) if tokenizer else None)
    zeroshot = None
    if cfg.eval.source is not None:
        zs = load_image_data(ImageDataConfig(source=cfg.eval.source, split=cfg.eval.split, val_size=0,
                                             max_images=cfg.eval.max_images, cache_dir=cfg.data.cache_dir),
                             for_training=False)
        classes = cfg.eval.classes or zs.class_names
        check_class_names(classes, "eval.classes")
        zeroshot = (zs.train.images, zs.train.labels, classes)
    return pairs, zeroshot


def clip_model(mcfg: ClipConfig, vocab_size: int) -> tuple[nn.Module, ClipConfig]:
    """A fresh CLIP, a whole one from ``model.init``, or one whose towers start from ``model.vision.init``
    (a ViT) / ``model.text.init`` (a BERT); with its resolved config (see :mod:`xformer.trained.init`)."""
    from xformer.trained.init import init_from, load_source, load_weights, merge_config
    from xformer.models import CLIPModel

    if mcfg.init is not None:
        return init_from(mcfg)
    sources = {}
    for what in ("vision", "text"):
        tower = getattr(mcfg, what)
        if tower.init is not None:
            sources[what] = load_source(tower.init, tower, f"model.{what}.init")
            mcfg = mcfg.model_copy(update={what: merge_config(tower, sources[what].config)})
    if mcfg.text.vocab_size is None:
        mcfg = mcfg.model_copy(update={"text": mcfg.text.model_copy(update={"vocab_size": vocab_size})})
    elif mcfg.text.vocab_size < vocab_size:
        raise XformerError(f"model.text.vocab_size={mcfg.text.vocab_size} is smaller than the tokenizer's {vocab_size}")
    model = CLIPModel(mcfg)
    for what, source in sources.items():
        load_weights(getattr(model, what), source, f"model.{what}.init={getattr(mcfg, what).init}")
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


def _load_run(run_dir: str | Path):
    """(model on the device, tokenize, image transform, device, config) of a CLIP run or checkpoint."""
    from xformer.data.image.captions import Tokenize
    from xformer.trained.loading import load, load_tokenizer
    from xformer.models import CLIPModel
    from xformer.tasks import read_run_config

    run_dir = Path(run_dir)
    model = load(run_dir)
    if not isinstance(model, CLIPModel):
        raise XformerError(f"{run_dir}: a {type(model).__name__}, not an image-text (CLIP) model")
    cfg = read_run_config(run_dir if (run_dir / "config.yaml").is_file() else run_dir.parent.parent)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = cfg.model.vision.image_size
    transform = lambda x: preprocess(x, size, cfg.data.mean, cfg.data.std)  # noqa: E731
    return model.to(device), Tokenize(load_tokenizer(run_dir), cfg.data.max_text_len), transform, device, cfg


def _write_scores(run_dir: Path, kind: str, source, count: int, scores: dict) -> None:
    from xformer.train.checkpoint import atomic_write_text

    name = Path(source if isinstance(source, str) else source[0]).stem.replace(":", "_")  # cifar10:train
    out = Path(run_dir) / f"{kind}_{name}.json"
    atomic_write_text(out, json.dumps({"source": source, "images": count, **scores}, indent=2))
    print(f"{kind} {source}: {count} images, " + ", ".join(f"{k} {v:.2%}" for k, v in scores.items()) + f" -> {out}")


def zeroshot_scores(run_dir: str | Path, source, split: str = "test", classes: list[str] | None = None,
                    templates: list[str] | None = None, max_images: int | None = None,
                    batch_size: int = 256) -> tuple[dict, int]:
    """(zero-shot scores, number of images) of a trained run on a labelled image source; ``templates``
    default to the run's ``eval.templates``, else the CIFAR-10 ones."""
    from xformer.data.image.images import load_image_data
    from xformer.trained.zeroshot import check_class_names, check_templates

    if templates is not None:
        check_templates(templates, "--template")
    if max_images is not None and max_images <= 0:
        raise XformerError(f"--max-images {max_images}: give a positive number of images")
    model, tokenize, transform, device, cfg = _load_run(run_dir)
    templates = templates or cfg.eval.templates or CIFAR10_TEMPLATES
    data = load_image_data(ImageDataConfig(source=source, split=split, val_size=0, max_images=max_images),
                           for_training=False)
    names = classes or data.class_names
    check_class_names(names, "--classes")
    scores = zeroshot_eval(model, data.train.images, data.train.labels, names, templates, tokenize, transform,
                           device, batch_size, where=f"--data {source}")
    return scores, len(data.train)


def zeroshot_run(run_dir: str | Path, source, split: str = "test", classes: list[str] | None = None,
                 templates: list[str] | None = None, max_images: int | None = None, batch_size: int = 256) -> dict:
    """``xformer zeroshot``: :func:`zeroshot_scores`, written to ``RUN_DIR/zeroshot_<source name>.json``;
    returns the scores."""
    scores, count = zeroshot_scores(run_dir, source, split, classes, templates, max_images, batch_size)
    _write_scores(run_dir, "zeroshot", source, count, scores)
    return scores


def retrieval_scores(run_dir: str | Path, source, split: str = "test", max_images: int | None = None,
                     batch_size: int = 256) -> tuple[dict, int]:
    """(image-text recall@K, number of images) of a trained run on an image-caption source."""
    from xformer.data.image.captions import CaptionDataset, _load_pairs
    from xformer.data.cache import default_cache_dir

    model, tokenize, transform, device, cfg = _load_run(run_dir)
    data_cfg = cfg.data.model_copy(update={"max_images": max_images})
    images, captions = _load_pairs(source, split, "--data", data_cfg, default_cache_dir(cfg.data))
    dataset = CaptionDataset(images, captions, tokenize)
    return retrieval_eval(model, dataset, tokenize, transform, device, batch_size), len(dataset)


def retrieval_run(run_dir: str | Path, source, split: str = "test", batch_size: int = 256) -> dict:
    """``xformer retrieval``: :func:`retrieval_scores`, written to ``RUN_DIR/retrieval_<source name>.json``;
    returns the scores."""
    scores, count = retrieval_scores(run_dir, source, split, batch_size=batch_size)
    _write_scores(run_dir, "retrieval", source, count, scores)
    return scores


def evaluate(run_dir: Path, source, split: str = "train", limit: int | None = None) -> dict:
    """``xformer eval``: zero-shot scores (``zs_``, with the run's ``eval.templates``) on labelled images,
    or image-text recall@K on image-caption pairs, as ``source`` holds; the first ``limit`` images."""
    from xformer.trained.evaluate import CAPTIONED_IMAGES, LABELLED_IMAGES, check_data

    wants = "labelled images (zero-shot) or image-caption pairs (retrieval)"
    found = check_data(run_dir, "contrastive", source, split, (LABELLED_IMAGES, CAPTIONED_IMAGES), wants)
    if found.kind == CAPTIONED_IMAGES:
        scores, count = retrieval_scores(run_dir, source, split, limit)
        return {**scores, "images": count}
    scores, count = zeroshot_scores(run_dir, source, split, max_images=limit)
    return {**{f"zs_{k}": v for k, v in scores.items()}, "images": count}


def export(run_dir: Path, out_dir: Path) -> str:
    from xformer.interop.hf_clip import export_clip
    from xformer.trained.loading import load, load_tokenizer

    export_clip(load(run_dir), out_dir, tokenizer=load_tokenizer(run_dir))
    return "transformers.CLIPModel"


TASK = TaskSpec(name="contrastive", config=ContrastiveConfig, primary_metric="t2i_R@10",
                load_data=load_data, build=build, finish=finish, evaluate=evaluate, export=export)
