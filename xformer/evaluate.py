"""Final evaluation of a classifier: loss, accuracy, per-class accuracy, confusion matrix (JSON + PNG)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xformer.checkpoint import atomic_write_text


@torch.no_grad()
def classification_report(model, dataset, augmenter, class_names: list[str], batch_size: int,
                          device: torch.device, autocast=contextlib.nullcontext) -> dict:
    """Evaluate ``model`` on every image of ``dataset`` (no augmentation)."""
    model.eval()
    K = len(class_names)
    confusion = torch.zeros(K, K, dtype=torch.long)
    loss_sum = 0.0
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(np.arange(start, min(len(dataset), start + batch_size)))
        labels = batch["labels"].to(device)
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
    """``<out_dir>/eval_<name>.json`` and ``confusion_<name>.png``; prints a one-line summary."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / f"eval_{name}.json", json.dumps(report, indent=1))
    png = plot_confusion(report, out_dir / f"confusion_{name}.png", name)
    worst = min(report["per_class_acc"].items(), key=lambda kv: kv[1])
    print(f"{name}: {report['images']} images, loss {report['loss']:.4f}, accuracy {report['acc']:.2%} "
          f"(lowest: {worst[0]} {worst[1]:.2%}) -> {out_dir / f'eval_{name}.json'}"
          + ("" if png else " (pip install matplotlib for the confusion-matrix PNG)"))


def evaluate_run(run_dir: str | Path, source: str, split: str | None = None) -> dict:
    """``xformer eval``: the run's model on every image of ``source`` (its ``split``); the report is
    written to ``RUN_DIR/eval_<source name>[_<split>].json`` (+ PNG)."""
    from xformer.config import ImageClassificationConfig, load_yaml, parse_config
    from xformer.data.augment import Augmenter
    from xformer.data.images import load_image_data
    from xformer.distributed import pick_device
    from xformer.errors import XformerError
    from xformer.loading import load

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml" if run_dir.is_dir() else run_dir
    cfg = parse_config(load_yaml(cfg_file), str(cfg_file))
    if not isinstance(cfg, ImageClassificationConfig):
        raise XformerError(f"{run_dir}: xformer eval needs an image_classification run, this is {cfg.task}")
    classes_file = run_dir / "classes.json"
    class_names = json.loads(classes_file.read_text()) if classes_file.is_file() else None
    data_cfg = cfg.data.model_copy(update={
        "source": source, "split": split or "train", "val_source": None, "val_size": 0,
        "test_source": None, "max_images": None,
    })
    data = load_image_data(data_cfg)
    if class_names is not None and data.class_names != class_names:
        raise XformerError(f"{source}: classes {data.class_names[:4]}... differ from the run's {class_names[:4]}...")
    device = pick_device("auto")
    model = load(run_dir).to(device)
    augmenter = Augmenter(cfg.augment, cfg.data.mean, cfg.data.std, len(data.class_names), cfg.model.image_size)
    report = classification_report(model, data.train, augmenter, data.class_names, cfg.train.batch_size, device)
    name = Path(str(source).split("*")[0].rstrip("/")).stem or "data"
    write_report(report, run_dir, f"{name}_{split}" if split else name)
    return report
