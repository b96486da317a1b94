"""The commands on a trained run: ``xformer eval``, ``zeroshot``, ``retrieval`` and ``export``.

Each finds the run's task and hands the run to it: ``eval`` to the task's ``evaluate`` (any task),
``zeroshot`` and ``retrieval`` to the contrastive task's (with the CLIP options), ``export`` to the task's
``export``; the commands write and print what comes back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xformer.errors import XformerError
from xformer.train.checkpoint import atomic_write_text
from xformer.trained.evaluate import absent_warning, metric_lines, save_eval
from xformer.trained.zeroshot import CIFAR10_TEMPLATES
from xformer.tasks import contrastive, get_task, read_run_config
from xformer.tasks.base import TaskSpec


def run_spec(run_dir: str) -> TaskSpec | None:
    """The task spec of the run (or checkpoint) at ``run_dir``; None for an HF directory."""
    path = Path(run_dir)
    if path.is_dir() and not (path / "config.yaml").is_file() and (path / "config.json").is_file():
        return None
    return get_task(read_run_config(path).task)


def cmd_eval(args: argparse.Namespace) -> None:
    """``xformer eval RUN --data ...``: the task's metrics, printed and written to ``RUN/eval_<data>.json``."""
    spec = run_spec(args.run_dir)
    if spec is None or spec.evaluate is None:
        raise XformerError(f"{args.run_dir}: xformer eval evaluates the runs of xformer train (a run or checkpoint "
                           f"directory), not " + (f"{spec.name} runs" if spec else "an HF directory"))
    if args.max_documents is not None and args.max_documents <= 0:
        raise XformerError(f"--max-documents {args.max_documents}: give a positive number")
    metrics = spec.evaluate(Path(args.run_dir), args.data, args.split, args.max_documents)
    path = save_eval(args.run_dir, args.data, args.split, metrics)
    print("\n".join(metric_lines(metrics)))
    print(f"wrote {path}")
    if (absent := absent_warning(metrics, args.data)) is not None:
        print(absent, file=sys.stderr)


def scores_path(run_dir: str, kind: str, source, max_images: int | None, count: int) -> Path:
    """``RUN/<kind>_<source name>.json``, or ``..._first<N>.json`` for the first N images of a larger set (a
    partial result never overwrites a whole one)."""
    name = Path(source if isinstance(source, str) else source[0]).stem.replace(":", "_")  # cifar10:train
    partial = f"_first{count}" if max_images is not None and count >= max_images else ""
    return Path(run_dir) / f"{kind}_{name}{partial}.json"


def _write_scores(run_dir: str, kind: str, source, scores: dict, max_images: int | None = None) -> None:
    """:func:`scores_path`: the source, the number of images and the scores; one line printed."""
    count = scores.pop("images")
    out = scores_path(run_dir, kind, source, max_images, count)
    atomic_write_text(out, json.dumps({"source": source, "images": count, "max_images": max_images, **scores},
                                      indent=2))
    print(f"{kind} {source}: {count} images, " + ", ".join(f"{k} {v:.2%}" for k, v in scores.items()) + f" -> {out}")


def cmd_zeroshot(args: argparse.Namespace) -> None:
    """``xformer zeroshot``: zero-shot scores of a CLIP run, written to ``RUN/zeroshot_<source name>.json``
    (``..._first<N>.json`` with ``--max-images N``)."""
    if args.max_images is not None and args.max_images <= 0:
        raise XformerError(f"--max-images {args.max_images}: give a positive number of images")
    scores = contrastive.evaluate(Path(args.run_dir), args.data, args.split, args.max_images, mode="zeroshot",
                                  classes=args.classes, templates=args.template or CIFAR10_TEMPLATES)
    prefix = contrastive.ZEROSHOT_PREFIX
    _write_scores(args.run_dir, "zeroshot", args.data, {k.removeprefix(prefix): v for k, v in scores.items()},
                  args.max_images)


def cmd_retrieval(args: argparse.Namespace) -> None:
    """``xformer retrieval``: image-text recall@K of a CLIP run, written to ``RUN/retrieval_<source name>.json``."""
    scores = contrastive.evaluate(Path(args.run_dir), args.data, args.split, mode="retrieval")
    _write_scores(args.run_dir, "retrieval", args.data, scores)


def cmd_export(args: argparse.Namespace) -> None:
    """``xformer export RUN OUT``: the task's HF export; ``--format ViTModel``: the run's ViT encoder alone."""
    if args.format == "ViTModel":
        from xformer.interop.hf_vit import export_vit_encoder
        from xformer.trained.loading import load

        model = load(args.run_dir)
        print(f"exporting the encoder of {args.run_dir} to {args.out_dir} ...", file=sys.stderr)
        export_vit_encoder(model, Path(args.out_dir))
        print(f"exported the encoder of {args.run_dir} to {args.out_dir} (transformers.ViTModel format)")
        return
    spec = run_spec(args.run_dir)
    if spec is None or spec.export is None:
        what = "an HF directory" if spec is None else f"{spec.name} runs"
        raise XformerError(f"{args.run_dir}: no HF export for {what} "
                           f"(bert_pretraining, image_classification (ViT) and contrastive runs export)")
    print(f"exporting {args.run_dir} to {args.out_dir} ...", file=sys.stderr)  # a big model takes a while
    kind = spec.export(Path(args.run_dir), Path(args.out_dir))
    print(f"exported {args.run_dir} to {args.out_dir} ({kind} format)")
