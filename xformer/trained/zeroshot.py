"""Zero-shot classification and image-text retrieval for CLIP-style models, following clip_benchmark.

Zero-shot: every class name is put into each prompt template; a class's prompt embeddings are
normalised, averaged and renormalised into one classifier row; an image goes to the class whose row
is most similar. Reported: top-1, top-5 and mean per-class recall. Retrieval: image->text (an image
is found when any of its captions is in the top K) and text->image recall@1/5/10.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xformer.data.image.augment import normalize, resize
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
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def preprocess(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float (B, C, size, size), resized bilinearly (antialiased)."""
    return normalize(resize(images.float() / 255, size), mean, std)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, transform: Callable, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> unit embeddings (N, E) on the CPU, ``batch_size`` at a time (a progress
    bar on a terminal)."""
    out = []
    with tqdm(total=len(images), desc="encoding images", unit="img", disable=None) as bar:
        for i in range(0, len(images), batch_size):
            out.append(model.encode_image(transform(images[i:i + batch_size].to(device))).float().cpu())
            bar.update(len(out[-1]))
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, texts: list[str], tokenize: Callable, batch_size: int, device: torch.device) -> torch.Tensor:
    """Texts -> unit embeddings (M, E) on the CPU; ``tokenize(texts)`` gives (input_ids, attention_mask)."""
    out = []
    with tqdm(total=len(texts), desc="encoding texts", unit="text", disable=None) as bar:
        for i in range(0, len(texts), batch_size):
            ids, mask = tokenize(texts[i:i + batch_size])
            out.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
            bar.update(len(out[-1]))
    return torch.cat(out)


def check_class_names(classes: Sequence[str], where: str) -> None:
    """XformerError unless ``classes`` are names a prompt can be built from: one or more distinct,
    non-empty strings, not all of them numbers (a Parquet without ClassLabel metadata gives "0".."9")."""
    if isinstance(classes, str) or not classes:
        raise XformerError(f"{where}: zero-shot needs a list of class names, got {classes!r}")
    if all(_is_number(c) for c in classes):
        shown = ", ".join(map(str, classes[:4])) + (", ..." if len(classes) > 4 else "")
        raise XformerError(f"{where}: the class names are numbers ({shown}), which make meaningless prompts; "
                           f"pass the names with --classes (CLI) or eval.classes (recipe)")
    bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if bad:
        raise XformerError(f"{where}: class name {bad[0]!r} is not a name; class names are non-empty strings")
    twice = next((c for i, c in enumerate(classes) if c in classes[:i]), None)
    if twice is not None:
        raise XformerError(f"{where}: class name {twice!r} appears twice; each class needs its own name")


def _is_number(name) -> bool:
    if isinstance(name, str):
        return _NUMBER.fullmatch(name.strip()) is not None
    return isinstance(name, (int, float)) and not isinstance(name, bool)


def check_templates(templates: Sequence[str], where: str) -> None:
    """XformerError unless ``templates`` is a non-empty list of strings that each contain ``{c}``; a warning
    (once per template and process) for a template with other braces (``{}``, ``{label}``, ``{C}``, the
    outer braces of ``{{c}}``): only ``{c}`` is replaced, so they would reach the text encoder as written."""
    if isinstance(templates, str) or not templates:
        raise XformerError(f"{where}: zero-shot needs a list of prompt templates containing '{{c}}', got {templates!r}")
    for template in templates:
        others = _other_placeholders(template) if isinstance(template, str) else []
        if not isinstance(template, str) or "{c}" not in template:
            hint = f"; {others[0]} is not replaced: write {{c}}" if others else ""
            raise XformerError(
                f"{where}: prompt template {template!r} has no '{{c}}' (where the class name goes){hint}")
        if others and template not in _WARNED:
            _WARNED.add(template)
            print(f"warning: {where}: prompt template {template!r} has {', '.join(others)} besides {{c}}: only {{c}} "
                  f"is replaced by the class name, the rest reaches the text encoder as written", file=sys.stderr)


_WARNED: set[str] = set()  # templates already warned about in this process (every evaluation checks them)
_BRACES = re.compile(r"\{[^{}]*\}|[{}]")  # a placeholder, or a lone brace


def _other_placeholders(template: str) -> list[str]:
    """The braces of ``template`` other than its ``{c}`` placeholders, as written (``{}``, ``{label}``, ``{``)."""
    parts = template.split("{c}")  # what is left once every {c} is replaced
    return list(dict.fromkeys(m.group() for part in parts for m in _BRACES.finditer(part)))


def prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template with ``{c}`` replaced by each class name, class by class. Other braces are kept as
    they are (no ``str.format``): ``"{x} {c}"`` -> ``"{x} cat"``."""
    return [t.replace("{c}", c) for c in classes for t in templates]


def zeroshot_classifier(model, classes: Sequence[str], templates: Sequence[str], tokenize: Callable,
                        device: torch.device, batch_size: int = 256, where: str = "zero-shot") -> torch.Tensor:
    """(K, E): for each class, the renormalised mean of its normalised prompt embeddings."""
    check_class_names(classes, where)
    check_templates(templates, where)
    emb = encode_texts(model, prompts(classes, templates), tokenize, batch_size, device)
    emb = emb.view(len(classes), len(templates), -1)
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


# ----------------------------------------------------------------------------- scores


def zeroshot_eval(model, images, labels, classes, templates, tokenize, transform, device, batch_size=256,
                  where: str = "zero-shot") -> dict:
    """Zero-shot scores of uint8 ``images`` (N, C, H, W) with class indices ``labels`` (N,); ``where``
    names the data in errors."""
    check_class_names(classes, where)
    check_templates(templates, where)
    if len(images) == 0:
        raise XformerError(f"{where}: no images to classify")
    if len(labels) != len(images):
        raise XformerError(f"{where}: {len(images)} images but {len(labels)} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
        raise XformerError(f"{where}: labels go from {int(labels.min())} to {int(labels.max())} "
                           f"but there are {len(classes)} class names")
    classifier = zeroshot_classifier(model, classes, templates, tokenize, device, batch_size, where)  # (K, E)
    image_embeds = encode_images(model, images, transform, batch_size, device)  # (N, E)
    return classification_scores(image_embeds @ classifier.t(), labels)


def retrieval_eval(model, dataset, tokenize, transform, device, batch_size=256) -> dict:
    """Recall@1/5/10 both ways on a :class:`~xformer.data.image.captions.CaptionDataset`."""
    texts, owners = dataset.pairs()
    image_embeds = encode_images(model, dataset.images, transform, batch_size, device)
    text_embeds = encode_texts(model, texts, tokenize, batch_size, device)
    return retrieval_scores(image_embeds, text_embeds, owners)
