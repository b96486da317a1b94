"""Paired comparison of two image-classification runs on the validation split they carved (the same split
when their data settings are the same): each one's accuracy, the images only one of them gets right, and the
exact McNemar test on those. Usage: python docs/studies/mae_cifar/paired.py RUN_A RUN_B"""

import sys

import numpy as np
import torch
from scipy.stats import binomtest

from xformer.data.image.images import load_image_data
from xformer.tasks.image_classification import _augmenter
from xformer.tasks.trained_run import load_run


def correct(run_dir: str) -> np.ndarray:
    """(N,) whether the run's model classifies each validation image right (no augmentation)."""
    run = load_run(run_dir, "image_classification")
    val = load_image_data(run.cfg.data).val
    augmenter = _augmenter(run.cfg, len(run.class_names), run.cfg.model.image_size)
    model, hits = run.model.eval(), []
    with torch.no_grad():
        for start in range(0, len(val), 500):
            batch = val.batch(np.arange(start, min(len(val), start + 500)))
            logits = model(pixel_values=augmenter.eval(batch["pixel_values"])).logits  # (B, classes)
            hits.append(logits.argmax(-1) == batch["labels"])
    return torch.cat(hits).numpy()


if __name__ == "__main__":
    a_dir, b_dir = sys.argv[1:3]
    a, b = correct(a_dir), correct(b_dir)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    print(f"{a_dir}: {a.mean():.4f}, {b_dir}: {b.mean():.4f}, {len(a)} images")
    print(f"right only by {a_dir}: {only_a}; only by {b_dir}: {only_b}; "
          f"exact McNemar p = {binomtest(only_a, only_a + only_b).pvalue:.2g}")
