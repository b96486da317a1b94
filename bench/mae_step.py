"""Training-step time of MAE pretraining vs supervised ViT classification, same encoder, same batch.

One step = forward + loss + backward + an AdamW step. The MAE model is the recipe's (default
``recipes/mae_cifar.yaml``): its encoder sees only the kept patches (a quarter at mask_ratio 0.75) and a
light decoder all of them; the classifier is a :class:`~xformer.models.vit.ViTForImageClassification` of
the same encoder config (``encoder_config()``) with 10 classes, over every patch. Both train on the same
random batch (``--batch`` images of the recipe's size; MAE draws fresh masking noise each step), in this
process, timed interleaved (MAE, ViT, MAE, ...) after ``--warmup`` steps each so drift in machine load
hits both alike; bf16 autocast on CUDA, as the trainer's ``precision: auto``. Prints the median step
time of each, images/s, and the ratio MAE / ViT (the goal: at most 0.45).

Examples:
    python bench/mae_step.py --batch 64 --steps 10                        # CPU, recipes/mae_cifar.yaml
    python bench/mae_step.py --recipe recipes/mae_cifar_gpu.yaml --batch 512 --steps 30   # GPU
    python bench/mae_step.py --set model.depth=4 --set model.decoder_depth=1 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from xformer.commands.recipe import load_recipe
from xformer.losses import classification_loss
from xformer.models import ViTForImageClassification, build_model
from xformer.train.optimizer import build_optimizer, param_groups

NUM_CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/mae_cifar.yaml", help="an mae recipe (its model section)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    parser.add_argument("--batch", type=int, default=None, help="images a step (default: the recipe's batch)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each model first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); on a shared machine "
                        "1 keeps other work from stalling the thread pool")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        parser.error("--steps and --batch must be positive, --warmup not negative")
    return args


def stepper(model, optimizer, loss_of, device: torch.device):
    """One timed training step of ``model``: seconds for forward, ``loss_of(model)``, backward, AdamW."""
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            loss = loss_of(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_recipe(args.recipe, args.set)
    if cfg.task != "mae":
        raise SystemExit(f"{args.recipe}: task {cfg.task}, not mae")
    device, mcfg = torch.device(args.device), cfg.model
    batch = args.batch or cfg.train.batch_size
    torch.manual_seed(0)
    mae = build_model(mcfg).to(device).train()
    vit = ViTForImageClassification(mcfg.encoder_config().model_copy(update={"num_classes": NUM_CLASSES}))
    vit = vit.to(device).train()
    gen = torch.Generator(device=device).manual_seed(0)
    pixels = torch.randn(batch, mcfg.in_channels, mcfg.image_size, mcfg.image_size, device=device, generator=gen)
    labels = torch.randint(NUM_CLASSES, (batch,), device=device, generator=gen)
    targets = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()

    def mae_loss(model):
        noise = torch.rand(batch, mcfg.num_patches, device=device, generator=gen)  # fresh masks each step
        return model(pixel_values=pixels, noise=noise).loss

    def vit_loss(model):
        return classification_loss(model(pixel_values=pixels).logits, targets, labels)[0]

    steps = {name: stepper(model, build_optimizer(param_groups(model, cfg.train.weight_decay), cfg.train, device),
                           loss_of, device)
             for name, model, loss_of in (("mae", mae, mae_loss), ("vit", vit, vit_loss))}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name].append(step())
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "recipe": args.recipe, "overrides": args.set, "device": str(device), "batch": batch,
        "image_size": mcfg.image_size, "patch_size": mcfg.patch_size, "patches_seen": mcfg.num_kept,
        "patches": mcfg.num_patches, "encoder": {k: getattr(mcfg, k) for k in ("dim", "depth", "num_heads", "mlp_ratio")},
        "decoder": {k: getattr(mcfg, k) for k in ("decoder_dim", "decoder_depth", "decoder_num_heads")},
        "threads": torch.get_num_threads(), "steps": args.steps, "step_s": median, "images_per_s": {n: batch / s for n, s in median.items()},
        "ratio_mae_to_vit": median["mae"] / median["vit"],
    }
    print(f"{args.recipe} {' '.join(args.set)}: batch {batch} of {mcfg.image_size}x{mcfg.image_size}, "
          f"encoder {mcfg.dim}x{mcfg.depth}, MAE sees {mcfg.num_kept}/{mcfg.num_patches} patches, "
          f"decoder {mcfg.decoder_dim}x{mcfg.decoder_depth}; {device}, {torch.get_num_threads()} threads; median of "
          f"{args.steps} interleaved steps")
    for name in ("mae", "vit"):
        print(f"{name}: {median[name] * 1e3:8.1f} ms/step  {batch / median[name]:8,.0f} images/s")
    ratio = result["ratio_mae_to_vit"]
    print(f"MAE / ViT step time: {ratio:.3f} (goal <= 0.45: {'met' if ratio <= 0.45 else 'NOT met'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
