"""Zero-shot classification and image-text retrieval for CLIP-style models, following clip_benchmark.

Zero-shot: every class name is put into each prompt template; a class's prompt embeddings are
normalised, averaged and renormalised into one classifier row; an image goes to the class whose row
is most similar. Reported: top-1, top-5 and mean per-class recall. Retrieval: image->text (an image
is found when any of its captions is in the top K) and text->image recall@1/5/10.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from xformer.data.augment import _resize, normalize
from xformer.errors import XformerError

# CIFAR-10's class names and 18 prompt templates, as clip_benchmark (after OpenAI CLIP / SLIP) uses them.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_TEMPLATES = [
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
    "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.",
    "a photo of the {c}.", "a blurry photo of the {c}.", "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.", "a high contrast photo of the {c}.", "a bad photo of the {c}.",
    "a good photo of the {c}.", "a photo of the small {c}.", "a photo of the big {c}.",
]
RECALL_AT = (1, 5, 10)


def preprocess(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float (B, C, size, size), resized bilinearly (antialiased)."""
    return normalize(_resize(images.float() / 255, size), mean, std)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, transform: Callable, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> unit embeddings (N, E) on the CPU, ``batch_size`` at a time."""
    out = [model.encode_image(transform(images[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, texts: list[str], tokenize: Callable, batch_size: int, device: torch.device) -> torch.Tensor:
    """Texts -> unit embeddings (M, E) on the CPU; ``tokenize(texts)`` gives (input_ids, attention_mask)."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = tokenize(texts[i:i + batch_size])
        out.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)


def zeroshot_classifier(model, classes: Sequence[str], templates: Sequence[str], tokenize: Callable,
                        device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """(K, E): for each class, the renormalised mean of its normalised prompt embeddings."""
    if not classes or not templates or any("{c}" not in t for t in templates):
        raise XformerError("zero-shot needs class names and templates that each contain '{c}'")
    prompts = [t.format(c=c) for c in classes for t in templates]
    emb = encode_texts(model, prompts, tokenize, batch_size, device).view(len(classes), len(templates), -1)
    return F.normalize(F.normalize(emb, dim=-1).mean(dim=1), dim=-1)


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1, top-5 (top-K for fewer classes) accuracy and mean per-class recall of logits (N, K)."""
    k = min(5, logits.size(1))
    top = logits.topk(k, dim=1).indices  # (N, k)
    top1 = top[:, 0] == labels
    recalls = [top1[labels == c].float().mean() for c in labels.unique()]
    return {"top1": top1.float().mean().item(), f"top{k}": (top == labels[:, None]).any(1).float().mean().item(),
            "mean_per_class_recall": torch.stack(recalls).mean().item()}


def retrieval_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor, owners: torch.Tensor,
                     ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """Recall@K both ways for images (N, E) and captions (M, E); ``owners`` (M,) is each caption's image."""
    sim = text_embeds @ image_embeds.t()  # (M, N)
    scores = {}
    t2i_rank = (sim > sim.gather(1, owners[:, None])).sum(1)  # (M,) images scoring above the right one
    # image -> text: the best rank among an image's own captions
    sim_i = sim.t()  # (N, M)
    own = torch.zeros_like(sim_i, dtype=torch.bool)
    own[owners, torch.arange(len(owners))] = True
    best_own = sim_i.masked_fill(~own, float("-inf")).max(dim=1).values  # (N,)
    i2t_rank = (sim_i > best_own[:, None]).sum(1)  # (N,)
    for k in ks:
        scores[f"i2t_R@{k}"] = (i2t_rank < k).float().mean().item()
    for k in ks:
        scores[f"t2i_R@{k}"] = (t2i_rank < k).float().mean().item()
    return scores


# ----------------------------------------------------------------------------- on a trained run


def _load_run(run_dir: str | Path):
    from xformer.config import ContrastiveConfig, load_yaml, parse_config
    from xformer.data.captions import Tokenize
    from xformer.loading import load, load_tokenizer

    run_dir = Path(run_dir)
    model = load(run_dir)
    if not hasattr(model, "encode_text"):
        raise XformerError(f"{run_dir}: a {type(model).__name__}, not an image-text (CLIP) model")
    cfg_path = run_dir / "config.yaml" if (run_dir / "config.yaml").is_file() else run_dir.parent.parent / "config.yaml"
    cfg = parse_config(load_yaml(cfg_path), str(cfg_path))
    assert isinstance(cfg, ContrastiveConfig)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = cfg.model.vision.image_size
    transform = lambda x: preprocess(x, size, cfg.data.mean, cfg.data.std)
    return model.to(device), Tokenize(load_tokenizer(run_dir), cfg.data.max_text_len), transform, device, cfg


def zeroshot_run(run_dir: str | Path, source, split: str = "test", classes: list[str] | None = None,
                 templates: list[str] | None = None, max_images: int | None = None, batch_size: int = 256) -> dict:
    """Zero-shot classification of a labelled image source with a trained run; writes
    ``RUN_DIR/zeroshot_<source name>.json`` and returns the scores."""
    from xformer.config import ImageDataConfig
    from xformer.data.images import load_image_data

    model, tokenize, transform, device, _ = _load_run(run_dir)
    data = load_image_data(ImageDataConfig(source=source, split=split, val_size=0, max_images=max_images))
    scores = zeroshot_eval(model, data.train.images, data.train.labels, classes or data.class_names,
                           templates or CIFAR10_TEMPLATES, tokenize, transform, device, batch_size)
    name = Path(source if isinstance(source, str) else source[0]).stem
    out = Path(run_dir) / f"zeroshot_{name}.json"
    out.write_text(json.dumps({"source": source, "images": len(data.train), **scores}, indent=2))
    print(f"zero-shot {source}: {len(data.train)} images, " + ", ".join(f"{k} {v:.2%}" for k, v in scores.items())
          + f" -> {out}")
    return scores


def zeroshot_eval(model, images, labels, classes, templates, tokenize, transform, device, batch_size=256) -> dict:
    """Zero-shot scores of uint8 ``images`` (N, C, H, W) with class indices ``labels`` (N,)."""
    if int(labels.max()) >= len(classes):
        raise XformerError(f"labels go up to {int(labels.max())} but there are {len(classes)} class names")
    classifier = zeroshot_classifier(model, classes, templates, tokenize, device, batch_size)  # (K, E)
    image_embeds = encode_images(model, images, transform, batch_size, device)  # (N, E)
    return classification_scores(image_embeds @ classifier.t(), labels)


def retrieval_eval(model, dataset, tokenize, transform, device, batch_size=256) -> dict:
    """Recall@1/5/10 both ways on a :class:`~xformer.data.captions.CaptionDataset`."""
    texts, owners = dataset.pairs()
    image_embeds = encode_images(model, dataset.images, transform, batch_size, device)
    text_embeds = encode_texts(model, texts, tokenize, batch_size, device)
    return retrieval_scores(image_embeds, text_embeds, owners)


def retrieval_run(run_dir: str | Path, source, split: str = "test", batch_size: int = 256) -> dict:
    """Image-text retrieval on an image-caption source with a trained run; writes
    ``RUN_DIR/retrieval_<source name>.json`` and returns the scores."""
    from xformer.data.captions import CaptionDataset, _load_pairs
    from xformer.data.pretraining import default_cache_dir

    model, tokenize, transform, device, cfg = _load_run(run_dir)
    images, captions = _load_pairs(source, split, "--data", cfg.data, default_cache_dir(cfg.data))
    dataset = CaptionDataset(images, captions, tokenize)
    scores = retrieval_eval(model, dataset, tokenize, transform, device, batch_size)
    name = Path(source if isinstance(source, str) else source[0]).stem
    out = Path(run_dir) / f"retrieval_{name}.json"
    out.write_text(json.dumps({"source": source, "images": len(dataset), **scores}, indent=2))
    print(f"retrieval {source}: {len(dataset)} images, " + ", ".join(f"{k} {v:.2%}" for k, v in scores.items())
          + f" -> {out}")
    return scores
