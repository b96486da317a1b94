"""Final evaluation of a classifier: loss, accuracy, per-class accuracy, confusion matrix (JSON + PNG)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xformer.checkpoint import atomic_write_text
from xformer.errors import XformerError
from xformer.metrics import finite_or_none


@torch.no_grad()
def classification_report(model, dataset, augmenter, class_names: list[str], batch_size: int,
                          device: torch.device, autocast=contextlib.nullcontext) -> dict:
    """Evaluate ``model`` on every image of ``dataset`` (no augmentation); XformerError when there are
    no images or class names, or a label has no class name."""
    K = len(class_names)
    if K == 0 or len(dataset) == 0:
        raise XformerError(f"classification report: {'no class names' if K == 0 else 'no images'} to evaluate")
    model.eval()
    confusion = torch.zeros(K, K, dtype=torch.long)
    loss_sum = 0.0
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(np.arange(start, min(len(dataset), start + batch_size)))
        labels = batch["labels"].to(device)
        if int(labels.min()) < 0 or int(labels.max()) >= K:
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise XformerError(f"classification report: label {bad} has no class name ({K} class names)")
        with autocast():
            logits = model(pixel_values=augmenter.eval(batch["pixel_values"].to(device))).logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        pairs = labels * K + logits.argmax(-1)  # (B,) flat (true, predicted) index
        confusion += torch.bincount(pairs.cpu(), minlength=K * K).view(K, K)
    n = int(confusion.sum())
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    return {
        "images": n,
        "loss": loss_sum / max(n, 1),
        "acc": float(confusion.diag().sum()) / max(n, 1),
        "per_class_acc": dict(zip(class_names, per_class)),
        "class_names": class_names,
        "confusion": confusion.tolist(),  # rows: true class, columns: predicted class
    }


def plot_confusion(report: dict, path: Path, title: str) -> bool:
    """Write the confusion matrix as a PNG; False when matplotlib (an optional extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names, confusion = report["class_names"], np.array(report["confusion"])
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: accuracy {report['acc']:.2%}")
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return True


def write_report(report: dict, out_dir: str | Path, name: str) -> None:
    """``<out_dir>/eval_<name>.json`` (strict JSON: a non-finite loss is null) and ``confusion_<name>.png``;
    prints a one-line summary."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / f"eval_{name}.json", json.dumps(finite_or_none(report), indent=1, allow_nan=False))
    png = plot_confusion(report, out_dir / f"confusion_{name}.png", name)
    worst = min(report["per_class_acc"].items(), key=lambda kv: kv[1])
    print(f"{name}: {report['images']} images, loss {report['loss']:.4f}, accuracy {report['acc']:.2%} "
          f"(lowest: {worst[0]} {worst[1]:.2%}) -> {out_dir / f'eval_{name}.json'}"
          + ("" if png else " (pip install matplotlib for the confusion-matrix PNG)"))
