"""Masked-autoencoder pretraining (MAE, He et al. 2022) of a ViT on images alone, with reconstruction pictures.

Each training image is cropped and flipped at random, three quarters of its patches are hidden (uniform
noise per image, the lowest kept) and the model reconstructs their pixels; the loss is the model's
mean squared error over the hidden patches. Every random draw is made for the whole micro-batch and
sliced to a process's rows, so N processes train exactly as one. Validation images keep one fixed noise
each (seeded), so every evaluation hides the same patches and evaluations compare.

Beside the loss, ``baseline_loss`` is the error of predicting each hidden patch's own mean value (in the
target space): what a model that learnt nothing of the image's content would reach. With
``model.norm_pix_loss`` each target patch is normalised to mean 0 and (unbiased) variance 1, so that
baseline is 1.0 by construction, up to the biased/unbiased factor (n-1)/n of a patch's n values (0.979
for 4x4 RGB patches). ``baseline_gain`` = 1 - loss / baseline_loss ranks runs (0: no better than the
baseline, 1: exact).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from xformer.config import RunConfig, Section
from xformer.data.configs import ImagesDataConfig
from xformer.data.image.augment import normalize, random_hflip, random_resized_crop, resize
from xformer.errors import XformerError
from xformer.models.registry import model_section
from xformer.models.vit_mae import ViTMAEConfig, patchify
from xformer.tasks.base import Built, TaskSpec

# every registered masked-image model (today MAE), told apart by model.arch
MaskedImageModelConfig = model_section("masked_image", default="vit_mae")
PICTURES = "recon"  # RUN/recon/step_000500.png


class MAEAugmentConfig(Section):
    """Training-time augmentation for MAE (on the device): a random resized crop and a horizontal flip."""

    crop_scale: tuple[float, float] = Field((0.2, 1.0), description="random resized crop area range; (1, 1): off")
    hflip: bool = True


class MAEEvalConfig(Section):
    """What each evaluation adds to the validation loss: a picture of reconstructions."""

    pictures: int = Field(8, ge=0, description="validation images in RUN/recon/step_N.png; 0: no pictures")
    noise_seed: int = Field(0, description="seed of the validation images' fixed masking noise")


class MAEConfig(RunConfig):
    """Masked-autoencoder pretraining of a ViT on images without labels."""

    task: Literal["mae"] = "mae"
    model: MaskedImageModelConfig = ViTMAEConfig()
    data: ImagesDataConfig = ImagesDataConfig()
    augment: MAEAugmentConfig = MAEAugmentConfig()
    eval: MAEEvalConfig = MAEEvalConfig()


class FixedNoiseImages:
    """Images (N, C, H, W) uint8 with one fixed masking noise (N, P) each, drawn from ``seed``: every
    evaluation (in training or by ``xformer eval``, in batches of any size) hides the same patches."""

    def __init__(self, images: torch.Tensor, num_patches: int, seed: int):
        self.images = images
        self.noise = torch.rand(len(images), num_patches, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """``pixel_values`` (B, C, H, W) uint8 and ``noise`` (B, P) of the rows ``indices``."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return {"pixel_values": self.images[idx], "noise": self.noise[idx]}


class MAETask:
    """Crops, flips and masks each batch on the device; the loss is the model's masked-patch error,
    normalised by the micro-batch's hidden patches; validation adds the per-patch-mean baseline, and
    :meth:`snapshot` draws reconstructions of the first validation images after each evaluation."""

    local_rows = True  # crop, flip and noise draws are made for the whole micro-batch and sliced

    def __init__(self, cfg: MAEConfig, model_cfg: ViTMAEConfig, train_data, val_data):
        self.cfg, self.model_cfg = cfg, model_cfg
        self.train_data, self.val_data = train_data, val_data
        self.masked = model_cfg.num_patches - model_cfg.num_kept  # hidden patches per image

    def inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Evaluation images: uint8 (B, C, H, W) -> normalised float (B, C, S, S), nothing random."""
        x = resize(pixel_values.float() / 255, self.model_cfg.image_size)
        return normalize(x, self.cfg.data.mean, self.cfg.data.std)

    def prepare(self, batch: dict, generator: torch.Generator, train: bool,
                rows: tuple[int, int] | None = None) -> dict:
        images = batch["pixel_values"]
        if not train:
            return {"pixel_values": self.inputs(images), "noise": batch["noise"]}
        offset, total = rows or (0, len(images))
        aug = self.cfg.augment
        x = random_resized_crop(images.float() / 255, self.model_cfg.image_size, aug.crop_scale, generator,
                                rows=rows)  # (B, C, S, S)
        if aug.hflip:
            x = random_hflip(x, generator, rows)
        P = self.model_cfg.num_patches
        noise = torch.rand(total, P, generator=generator, device=generator.device)[offset:offset + len(images)]
        return {"pixel_values": normalize(x, self.cfg.data.mean, self.cfg.data.std), "noise": noise.to(x.device)}

    def normalizers(self, batch: dict) -> dict[str, torch.Tensor]:
        n = batch["noise"]
        return {"masked": torch.tensor(len(n) * self.masked, device=n.device)}

    def loss(self, model, local: dict, norms: dict):
        out = model(pixel_values=local["pixel_values"], noise=local["noise"])
        hidden = out.mask.sum()  # this process's hidden patches; the loss is its share of the micro-batch's
        loss = out.loss * hidden / norms["masked"]
        with torch.no_grad():
            target = patchify(local["pixel_values"].float(), self.model_cfg.patch_size)  # (B, N, p*p*C)
            baseline = target.var(-1, unbiased=False)  # (B, N): the error of each patch's own mean
            if self.model_cfg.norm_pix_loss:  # the model's normalised target, as in its loss
                baseline = baseline / (target.var(-1) + 1e-6)
            counts = {"loss_sum": out.loss.detach().float() * hidden, "baseline_sum": (baseline * out.mask).sum(),
                      "n": hidden, "images": torch.tensor(len(out.mask), device=hidden.device)}
        return loss, counts

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        """Mean loss and baseline over the hidden patches (NaN: none, not measured) and the gain over it."""
        n = counts["n"]
        loss, baseline = (counts["loss_sum"] / n, counts["baseline_sum"] / n) if n else (math.nan, math.nan)
        return {"loss": loss, "baseline_loss": baseline,
                "baseline_gain": 1 - loss / baseline if baseline else math.nan}

    @torch.no_grad()
    def snapshot(self, model, step: int, out_dir: Path | None) -> None:
        """After the evaluation of ``step``: reconstructions of the first ``eval.pictures`` validation images
        into ``out_dir/recon/step_<step>.png`` (every process runs the model, which may be sharded; the main
        one, given ``out_dir``, writes)."""
        n = min(self.cfg.eval.pictures, len(self.val_data or ()))
        if n == 0:
            return
        picture = reconstruction_picture(model, self, self.val_data.batch(np.arange(n)))
        if out_dir is not None:
            save_picture(picture, out_dir / PICTURES / f"step_{step:06d}.png")


# ----------------------------------------------------------------------------- pictures


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W): the inverse of :func:`~xformer.models.vit_mae.patchify`."""
    B, N, _ = patches.shape
    grid = int(N ** 0.5)
    x = patches.reshape(B, grid, grid, patch_size, patch_size, channels)  # (B, h, w, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, grid * patch_size, grid * patch_size)


def reconstruction_picture(model, task: MAETask, batch: dict) -> torch.Tensor:
    """Three rows of uint8 images (3, B, C, S, S): the originals, the visible patches (hidden ones grey),
    and the reconstructions with the visible patches pasted back, as MAE's figures; predictions of a
    ``norm_pix_loss`` model are un-normalised with each patch's own mean and variance."""
    mcfg, device = task.model_cfg, next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = task.inputs(batch["pixel_values"].to(device))  # (B, C, S, S) normalised
    out = model(pixel_values=x, noise=batch["noise"].to(device))
    model.train(was_training)
    target = patchify(x, mcfg.patch_size)  # (B, N, p*p*C)
    pred = out.logits.float()
    if mcfg.norm_pix_loss:
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    mean = torch.tensor(task.cfg.data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(task.cfg.data.std, device=device).view(1, -1, 1, 1)
    original = x * std + mean  # (B, C, S, S) in [0, 1]
    recon = unpatchify(pred, mcfg.patch_size, mcfg.in_channels) * std + mean
    hidden = unpatchify(out.mask[..., None].expand_as(target), mcfg.patch_size, mcfg.in_channels).bool()
    rows = [original, original.masked_fill(hidden, 0.5), torch.where(hidden, recon, original)]
    return (torch.stack(rows) * 255).round().clamp(0, 255).to(torch.uint8).cpu()  # (3, B, C, S, S)


def picture_size(n: int, size: int) -> tuple[int, int]:
    """(width, height) of the picture of ``n`` images of ``size`` pixels: 3 rows of n cells, each image
    magnified to at least 64 pixels, 2-pixel white gaps around every cell."""
    cell = size * max(1, 64 // size)
    return n * cell + (n + 1) * 2, 3 * cell + 4 * 2


def save_picture(images: torch.Tensor, path: Path) -> Path:
    """Write ``images`` (rows, B, C, S, S) uint8 as one PNG grid (:func:`picture_size`), atomically."""
    from PIL import Image

    rows, n, _, size, _ = images.shape
    scale = max(1, 64 // size)
    cell = size * scale
    width, height = picture_size(n, size)
    canvas = np.full((height, width, 3), 255, np.uint8)
    big = images.repeat_interleave(scale, -1).repeat_interleave(scale, -2)  # (rows, B, C, cell, cell)
    for r in range(rows):
        for i in range(n):
            top, left = 2 + r * (cell + 2), 2 + i * (cell + 2)
            canvas[top:top + cell, left:left + cell] = big[r, i].permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(canvas).save(tmp)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- data and model


def load_data(cfg: MAEConfig, tokenizer: str | None):
    from xformer.data.image.images import load_images

    return load_images(cfg.data)


def build(cfg: MAEConfig, data) -> Built:
    from xformer.trained.init import init_from

    channels = data.train.images.shape[1]
    if cfg.model.in_channels != channels:
        raise XformerError(f"model.in_channels={cfg.model.in_channels} but the images have {channels} channels")
    model, mcfg = init_from(cfg.model)
    val = None if data.val is None else FixedNoiseImages(data.val.images, mcfg.num_patches, cfg.eval.noise_seed)
    task = MAETask(cfg, mcfg, data.train, val)
    size = tuple(data.train.images.shape[2:])
    return Built(model, mcfg, task,
                 summary=f"{mcfg.arch}, init {mcfg.init or 'random'}, {mcfg.num_kept} of {mcfg.num_patches} "
                         f"patches seen; data: {len(data.train)} train / {len(val) if val else 0} val images "
                         f"({size[0]}x{size[1]})")


# ----------------------------------------------------------------------------- on a trained run


def evaluate(run_dir: Path, source, split: str = "train", limit: int | None = None) -> dict:
    """``xformer eval``: the masked-patch loss, the per-patch-mean baseline and their gain on the first
    ``limit`` images of ``source`` (labels, if any, not read), each with its fixed noise; the picture of
    the first ``eval.pictures`` goes to ``RUN/recon/eval_<data>.png``."""
    from xformer.data.image.images import load_images
    from xformer.tasks.trained_run import load_run
    from xformer.trained.evaluate import eval_name, task_scores

    run = load_run(run_dir, "mae")
    cfg = run.cfg
    data_cfg = cfg.data.model_copy(update={"source": source, "split": split, "val_source": None, "val_split": None,
                                           "val_size": 0, "max_images": limit})
    images = FixedNoiseImages(load_images(data_cfg).train.images, cfg.model.num_patches, cfg.eval.noise_seed)
    task = MAETask(cfg, cfg.model, None, images)
    metrics, _ = task_scores(run.model, task, images, cfg.train.batch_size, run.device)
    metrics["images"] = len(images)
    n = min(cfg.eval.pictures, len(images))
    if n:
        picture = reconstruction_picture(run.model, task, images.batch(np.arange(n)))
        path = save_picture(picture, run.root / PICTURES / f"eval_{eval_name(source, split)}.png")
        metrics["picture"] = str(path)
    return metrics


def export(run_dir: Path, out_dir: Path) -> str:
    from xformer.interop.hf_vit_mae import export_vit_mae
    from xformer.tasks.trained_run import load_run

    export_vit_mae(load_run(run_dir, "mae", device="cpu").model, out_dir)
    return "transformers.ViTMAEForPreTraining"


TASK = TaskSpec(name="mae", config=MAEConfig, primary_metric="baseline_gain",
                load_data=load_data, build=build, evaluate=evaluate, export=export)
