"""Evaluating a trained run (``xformer eval``) and a classifier's final report.

- :func:`data_kind` tells what a data source holds (texts, labelled texts, labelled images, image-caption
  pairs) from its columns, without reading its rows, so a task can refuse data it cannot evaluate on in
  one line (:func:`check_data`).
- :func:`task_scores` runs a trainer-side task's ``prepare`` / ``loss`` / ``metrics`` over every row of a
  dataset, its random draws (MLM masks) from one fixed seed: two evaluations give the same numbers.
- :func:`save_eval` writes ``RUN/eval_<data>.json`` (the name from :func:`eval_name`) and
  :func:`metric_lines` prints the metrics as ``name value`` lines.
- :func:`classification_report`: loss, accuracy, per-class accuracy, confusion matrix (JSON + PNG).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xformer.train.checkpoint import atomic_write_text
from xformer.data.image.captions import CAPTION_COLUMNS
from xformer.data.image.sources import IMAGE_COLUMNS
from xformer.data.image.sources import LABEL_COLUMNS as IMAGE_LABEL_COLUMNS
from xformer.data.sources import GLOB_CHARS, source_columns
from xformer.data.text.texts import LABEL_COLUMNS as TEXT_LABEL_COLUMNS
from xformer.data.text.texts import TEXT_COLUMNS
from xformer.errors import XformerError
from xformer.train.metrics import finite_or_none

TEXTS = "texts without labels"
LABELLED_TEXTS = "labelled texts"
LABELLED_IMAGES = "labelled images"
CAPTIONED_IMAGES = "image-caption pairs"
IMAGES = "images without labels or captions"
ROLES = {  # a column's role -> the names it is detected by
    "text": TEXT_COLUMNS,
    "label": tuple(dict.fromkeys(TEXT_LABEL_COLUMNS + IMAGE_LABEL_COLUMNS)),
    "image": IMAGE_COLUMNS,
    "caption": CAPTION_COLUMNS,
}


# ----------------------------------------------------------------------------- what the data holds


@dataclass(frozen=True)
class DataKind:
    """What a source holds: one of the kinds above, or None when its columns do not tell; its columns."""

    kind: str | None
    columns: tuple[str, ...]


def data_kind(source, split: str = "train", data_cfg=None) -> DataKind:
    """What ``source`` (its ``split``) holds, from its column names (and types): a column has a role when
    ``data_cfg`` (a run's data config) names it in ``<role>_column``, else when it has one of the role's
    usual names (:data:`ROLES`) or, for images, holds encoded images. Reads no rows (an HF dataset outside
    the catalogue is loaded to see its columns)."""
    names, image_typed = source_columns(source, split, "--data")

    def has(role: str) -> bool:
        configured = getattr(data_cfg, f"{role}_column", None)
        if configured is not None:
            return configured in names
        return any(n in ROLES[role] for n in names) or (role == "image" and bool(image_typed))

    if has("image"):
        kind = LABELLED_IMAGES if has("label") else CAPTIONED_IMAGES if has("caption") else IMAGES
    elif has("text"):
        kind = LABELLED_TEXTS if has("label") else TEXTS
    else:
        kind = None
    return DataKind(kind, tuple(names))


def check_data(run_dir, task: str, source, split: str, accepted: tuple[str, ...], wants: str,
               data_cfg=None) -> DataKind:
    """:func:`data_kind` of ``source``; a one-line error when it is known and not one of ``accepted``."""
    found = data_kind(source, split, data_cfg)
    if found.kind is not None and found.kind not in accepted:
        raise XformerError(f"{run_dir}: a {task} run evaluates on {wants}, and --data {source} holds {found.kind} "
                           f"(columns: {', '.join(found.columns)})")
    return found


def eval_name(source, split: str = "train") -> str:
    """The ``<data>`` of ``eval_<data>.json``: for a catalogue or HF hub name, the name and the split
    (``sst2-sentences:validation`` -> ``sst2-sentences_validation``, ``owner/name`` -> ``owner_name_train``);
    for local files, folders and globs, the stem of the first one before any wildcard
    (``data/test.parquet`` -> ``test``, ``shards/*.parquet`` -> ``shards``). Characters other than letters,
    digits, ``.``, ``_`` and ``-`` become ``_``."""
    first = str(source if isinstance(source, str) else source[0])
    local = Path(first).expanduser().exists() or any(c in first for c in GLOB_CHARS)
    if local or not isinstance(source, str):
        name = Path(re.split(r"[*?\[]", first)[0].rstrip("/")).stem
    else:
        name, _, in_value = first.partition(":")
        name = f"{name}_{in_value or split}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "data"


# ----------------------------------------------------------------------------- scores


@torch.no_grad()
def task_scores(model, task, dataset, batch_size: int, device: torch.device, seed: int = 0) -> tuple[dict, dict]:
    """(metrics, summed counts) of a trainer-side ``task`` (:class:`~xformer.tasks.base.Task`) over every
    row of ``dataset``, ``batch_size`` rows at a time; its random draws come from one generator seeded with
    ``seed``, so the same data gives the same numbers every time."""
    model.eval()
    generator = torch.Generator(device).manual_seed(seed)
    counts: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluating", unit="batch", disable=None):
        rows = np.arange(start, min(len(dataset), start + batch_size))
        batch = task.prepare({k: t.to(device) for k, t in dataset.batch(rows).items()}, generator, train=False)
        _, found = task.loss(model, batch, task.normalizers(batch))
        for k, v in found.items():
            counts[k] = counts[k] + v if k in counts else v
    summed = {k: v.item() for k, v in counts.items()}
    return task.metrics(summed), summed


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
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluating", unit="batch", disable=None):
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
    return {
        "images": n,
        "loss": loss_sum / max(n, 1),
        "acc": float(confusion.diag().sum()) / max(n, 1),
        **per_class_accuracy(confusion, class_names),
        "class_names": class_names,
        "confusion": confusion.tolist(),  # rows: true class, columns: predicted class
    }


def per_class_accuracy(confusion: torch.Tensor, class_names: list[str]) -> dict:
    """``per_class_acc`` (class name -> accuracy; None for a class the data holds no example of: it was not
    measured, and 0.0 would read as every example missed) and ``absent_classes`` (those classes' names)."""
    seen = confusion.sum(1)  # (K,) examples of each true class
    absent = [name for name, count in zip(class_names, seen.tolist()) if count == 0]
    rates = (confusion.diag() / seen.clamp(min=1)).tolist()
    per_class = {name: None if count == 0 else rate for name, rate, count in zip(class_names, rates, seen.tolist())}
    return {"per_class_acc": per_class, "absent_classes": absent}


def absent_note(absent: list[str], total: int) -> str:
    """``"; 2 of 10 classes absent from the data (cat, dog)"``, or "" when every class is present."""
    if not absent:
        return ""
    shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
    return f"; {len(absent)} of {total} classes absent from the data ({shown}), not scored"


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
    measured = [(c, a) for c, a in report["per_class_acc"].items() if a is not None]  # absent classes: no score
    worst = min(measured, key=lambda kv: kv[1])
    absent = report.get("absent_classes", [])
    print(f"{name} (all {report['images']:,} images): loss {report['loss']:.4f}, accuracy {report['acc']:.2%} "
          f"(lowest: {worst[0]} {worst[1]:.2%}{absent_note(absent, len(report['per_class_acc']))}) -> "
          f"{out_dir / f'eval_{name}.json'}"
          + ("" if png else " (pip install matplotlib for the confusion-matrix PNG)"))


# ----------------------------------------------------------------------------- xformer eval output


def save_eval(run_dir: str | Path, source, split: str, metrics: dict) -> Path:
    """Write ``RUN_DIR/eval_<data>.json`` (:func:`eval_name`; strict JSON: a non-finite number is null)
    atomically: the data, the split and ``metrics``; a report with a confusion matrix also gets
    ``confusion_<data>.png`` (when matplotlib is installed). Returns the JSON's path."""
    name = eval_name(source, split)
    path = Path(run_dir) / f"eval_{name}.json"
    record = finite_or_none({"data": source, "split": split, **metrics})
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False))
    if "confusion" in metrics:
        plot_confusion(metrics, Path(run_dir) / f"confusion_{name}.png", name)
    return path


def metric_lines(metrics: dict) -> list[str]:
    """``name value`` for every number of ``metrics`` (floats with 4 decimals); lists, dicts and text are
    left to the JSON."""
    return [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def absent_warning(metrics: dict, source) -> str | None:
    """The warning line for the classes ``source`` holds no example of (``metrics["absent_classes"]``), or
    None: their accuracy is not measured, which a reader of the numbers alone would take for 0%."""
    absent = metrics.get("absent_classes") or []
    if not absent:
        return None
    shown = ", ".join(map(str, absent[:10])) + (", ..." if len(absent) > 10 else "")
    return (f"warning: --data {source}: no examples of {len(absent)} of the run's classes ({shown}): "
            f"absent, not scored (null in the JSON's per-class figures)")
