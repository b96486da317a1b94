"""Contrastive image-text training (CLIP): the task for the trainer, tower initialisation, ``train_clip(cfg)``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from xformer import distributed
from xformer.config import ContrastiveConfig, save_config
from xformer.data.augment import normalize, random_hflip, random_resized_crop
from xformer.errors import XformerError
from xformer.losses import contrastive_loss, contrastive_metrics
from xformer.trainer import Trainer, check_run_dir
from xformer.zeroshot import (
    CIFAR10_TEMPLATES,
    preprocess,
    retrieval_eval,
    zeroshot_eval,
)


class ContrastiveTask:
    """Draws one caption per image (at random when training, the first when evaluating), augments the
    images on the device, and trains on the symmetric contrastive loss. ``evaluate(model)`` adds
    zero-shot classification and retrieval to the trainer's validation metrics."""

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

    def prepare(self, batch: dict, generator: torch.Generator, train: bool) -> dict:
        ids, lengths, counts = batch["input_ids"], batch["lengths"], batch["counts"]  # (B, K, L), (B, K), (B,)
        if train:
            u = torch.rand(len(counts), generator=generator, device=generator.device).to(counts.device)
            pick = (u * counts).long().clamp(max=counts - 1)  # (B,) one of each image's captions
            aug = self.cfg.augment
            x = random_resized_crop(batch["pixel_values"].float() / 255, self.size, aug.crop_scale, generator)
            if aug.hflip:
                x = random_hflip(x, generator)
            pixel_values = normalize(x, self.cfg.data.mean, self.cfg.data.std)
        else:
            pick = torch.zeros_like(counts)
            pixel_values = self.transform(batch["pixel_values"])
        rows = torch.arange(len(counts), device=counts.device)
        input_ids = ids[rows, pick]  # (B, L)
        mask = (torch.arange(ids.size(-1), device=ids.device) < lengths[rows, pick][:, None]).long()  # (B, L)
        return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": mask}

    def loss(self, model, local: dict, full: dict):
        out = model(pixel_values=local["pixel_values"], input_ids=local["input_ids"],
                    attention_mask=local["attention_mask"])
        loss, counts = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale,
                                        normalizer=full["input_ids"].size(0))
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
                               self.tokenize, self.transform, device, ecfg.batch_size)
            scores.update({f"zs_{k}": v for k, v in zs.items()})
        if ecfg.retrieval and self.val_data is not None:
            scores.update(retrieval_eval(model, self.val_data, self.tokenize, self.transform, device, ecfg.batch_size))
        model.train(was_training)
        return scores


# ----------------------------------------------------------------------------- initialisation


def _tower_source(init: str, what: str) -> nn.Module:
    """The model that ``init`` names, for ``model.{what}.init``."""
    if init.startswith("hf:"):
        if what == "vision":
            from xformer.interop.hf_vit import load_hf_vit

            return load_hf_vit(init[3:])
        from xformer.interop.hf_bert import load_hf_bert

        return load_hf_bert(init[3:])
    from xformer.loading import load

    return load(init)


def initial_clip_model(cfg: ContrastiveConfig, vocab_size: int) -> nn.Module:
    """A fresh CLIP, one from ``model.init`` (a CLIP run or ``hf:`` CLIPModel), or one whose towers start
    from ``model.vision.init`` (a ViT) / ``model.text.init`` (a BERT). A tower's architecture then comes
    from its checkpoint; dropout, attention backend, causal masking and pooling from the recipe."""
    from xformer.models import CLIPModel

    mcfg = cfg.model
    if mcfg.init is not None:
        if mcfg.init.startswith("hf:"):
            from xformer.interop.hf_clip import load_hf_clip

            source = load_hf_clip(mcfg.init[3:])
        else:
            from xformer.loading import load

            source = load(mcfg.init)
        if not isinstance(source, CLIPModel):
            raise XformerError(f"model.init={mcfg.init} is a {type(source).__name__}, not a CLIP model")
        keep = {"lock_image", "init", "logit_scale_max"}
        cfg.model = type(mcfg)(**{**source.config.model_dump(), **{k: getattr(mcfg, k) for k in keep}})
        model = CLIPModel(cfg.model)
        model.load_state_dict(source.state_dict())
        return model
    recipe_keys = {"dropout", "attn_dropout", "attn_backend", "init", "causal", "pool", "num_classes"}
    states = {}
    for what in ("vision", "text"):
        tower_cfg = getattr(mcfg, what)
        if tower_cfg.init is None:
            continue
        source = _tower_source(tower_cfg.init, what)
        backbone = getattr(source, "vit", None) if what == "vision" else getattr(source, "bert", source)
        if backbone is None or not hasattr(backbone, "encoder"):
            raise XformerError(f"model.{what}.init={tower_cfg.init}: a {type(source).__name__} is not a "
                               f"{'ViT' if what == 'vision' else 'BERT'}")
        fields = type(tower_cfg).model_fields
        arch = {k: v for k, v in source.config.model_dump().items() if k in fields and k not in recipe_keys}
        setattr(mcfg, what, type(tower_cfg)(**{**tower_cfg.model_dump(), **arch}))
        states[what] = {k: v for k, v in backbone.state_dict().items() if not k.startswith("pooler.")}
    if mcfg.text.vocab_size is None:
        mcfg.text.vocab_size = vocab_size
    elif mcfg.text.vocab_size < vocab_size:
        raise XformerError(f"model.text.vocab_size={mcfg.text.vocab_size} is smaller than the tokenizer's {vocab_size}")
    model = CLIPModel(mcfg)
    for what, state in states.items():
        missing, unexpected = getattr(model, what).load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("norm_pre.")]:
            raise XformerError(f"model.{what}.init={getattr(mcfg, what).init}: weights do not fit the tower "
                               f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
    return model


# ----------------------------------------------------------------------------- entry point


def train_clip(cfg: ContrastiveConfig, resume: bool = False) -> dict:
    """Load pairs (cached), the zero-shot set, build the model, train; evaluate zero-shot and retrieval
    at every evaluation; write the final scores to ``RUN_DIR/eval_final.json``."""
    from xformer.config import ImageDataConfig
    from xformer.data.captions import load_caption_data
    from xformer.data.images import load_image_data
    from xformer.loading import load_tokenizer

    dist = distributed.setup(cfg.train.device)
    try:
        run_dir = Path(cfg.out_dir or "runs/clip")
        check_run_dir(run_dir, cfg, resume)
        text_init = cfg.model.init or cfg.model.text.init
        tokenizer = load_tokenizer(text_init) if text_init and cfg.data.tokenizer.path is None else None
        with distributed.main_first(dist):
            data = load_caption_data(cfg.data, tokenizer)
            zeroshot_data = None
            if cfg.eval.source is not None:
                zs = load_image_data(ImageDataConfig(source=cfg.eval.source, split=cfg.eval.split, val_size=0,
                                                     max_images=cfg.eval.max_images, cache_dir=cfg.data.cache_dir))
                zeroshot_data = (zs.train.images, zs.train.labels, cfg.eval.classes or zs.class_names)
        torch.manual_seed(cfg.train.seed)
        model = initial_clip_model(cfg, len(data.tokenizer))
        task = ContrastiveTask(cfg, data.train, data.val, data.tokenize, zeroshot_data)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            data.tokenizer.save_pretrained(run_dir / "tokenizer")
            n_params = sum(p.numel() for p in model.parameters())
            print(f"model: clip, {n_params / 1e6:.2f}M parameters; data: {len(data.train)} train / "
                  f"{len(data.val) if data.val else 0} val images; run dir: {run_dir}")
        trainer = Trainer(cfg, model, task, run_dir, dist)
        result = trainer.fit(resume=resume)
        if dist.is_main:
            (run_dir / "eval_final.json").write_text(json.dumps(result["val"], indent=2))
        return result
    finally:
        distributed.teardown()
