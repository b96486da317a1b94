"""The ``xformer`` command: ``train`` / ``pretrain`` / ``finetune`` a recipe; ``eval``, ``zeroshot``,
``retrieval`` and ``export`` a run.

Problems with the user's input are printed as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xformer.errors import XformerError


def run_recipe(args: argparse.Namespace, command: str) -> None:
    from xformer.commands.recipe import load_recipe
    from xformer.tasks import run

    cfg = load_recipe(args.recipe, args.set)
    if args.out:
        cfg.out_dir = args.out
    if command == "pretrain" and cfg.task != "bert_pretraining":
        raise XformerError(f"{args.recipe}: task {cfg.task} is not pretraining; use xformer train")
    if command == "finetune" and not _has_init(cfg.model):
        raise XformerError(f"{args.recipe}: finetune needs model.init (hf:<dir or hub id>, a run dir or a checkpoint)")
    result = run(cfg, resume=args.resume)
    val = " ".join(f"{k}={v:.4f}" for k, v in result["val"].items() if isinstance(v, (int, float)))
    print(f"done: step {result['step']}, run dir {cfg.out_dir}; val {val}")


def _has_init(model_cfg) -> bool:
    towers = [getattr(model_cfg, t, None) for t in ("vision", "text")]
    return any(getattr(m, "init", None) is not None for m in (model_cfg, *towers))


def cmd_zeroshot(args: argparse.Namespace) -> None:
    from xformer.tasks.contrastive import zeroshot_run
    from xformer.trained.zeroshot import CIFAR10_TEMPLATES

    zeroshot_run(args.run_dir, args.data, args.split, classes=args.classes, templates=args.template or CIFAR10_TEMPLATES,
                 max_images=args.max_images)


def cmd_retrieval(args: argparse.Namespace) -> None:
    from xformer.tasks.contrastive import retrieval_run

    retrieval_run(args.run_dir, args.data, args.split)


def cmd_sweep(args: argparse.Namespace) -> None:
    from xformer.commands.sweep import sweep

    sweep(args.recipe, args.set, args.grid, args.out)


def cmd_report(args: argparse.Namespace) -> None:
    from xformer.commands.report import write_report

    out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else ".")
    print(f"report: {write_report(args.run_dirs, out)}")


def _run_task(run_dir: str):
    """The task spec of the run (or checkpoint) at ``run_dir``."""
    from xformer.tasks import get_task, read_run_config

    path = Path(run_dir)
    if path.is_dir() and not (path / "config.yaml").is_file() and (path / "config.json").is_file():
        return None  # an HF directory
    return get_task(read_run_config(path).task)


def cmd_eval(args: argparse.Namespace) -> None:
    from xformer.trained.evaluate import metric_lines, save_eval

    spec = _run_task(args.run_dir)
    if spec is None or spec.evaluate is None:
        raise XformerError(f"{args.run_dir}: xformer eval evaluates the runs of xformer train (a run or checkpoint "
                           f"directory), not " + (f"{spec.name} runs" if spec else "an HF directory"))
    if args.max_documents is not None and args.max_documents <= 0:
        raise XformerError(f"--max-documents {args.max_documents}: give a positive number")
    metrics = spec.evaluate(Path(args.run_dir), args.data, args.split, args.max_documents)
    path = save_eval(args.run_dir, args.data, args.split, metrics)
    print("\n".join(metric_lines(metrics)))
    print(f"wrote {path}")


def cmd_export(args: argparse.Namespace) -> None:
    spec = _run_task(args.run_dir)
    if spec is None or spec.export is None:
        raise XformerError(f"{args.run_dir}: no HF export for {'an HF directory' if spec is None else spec.name + ' runs'} "
                           f"(bert_pretraining, image_classification (ViT) and contrastive runs export)")
    kind = spec.export(Path(args.run_dir), Path(args.out_dir))
    print(f"exported {args.run_dir} to {args.out_dir} ({kind} format)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in (("train", "train a model from a YAML recipe"),
                       ("pretrain", "pretrain a BERT from a YAML recipe (task bert_pretraining)"),
                       ("finetune", "fine-tune from model.init (an HF checkpoint or a run) with a YAML recipe")):
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="recipe file, e.g. recipes/bert_small.yaml")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set train.max_steps=100 (repeatable)")
        p.add_argument("--out", help="run directory (default: recipe's out_dir or runs/<recipe name>)")
        p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
        p.set_defaults(func=lambda args, command=name: run_recipe(args, command))

    p = sub.add_parser("sweep", help="run every combination of a grid of recipe values, then report")
    p.add_argument("recipe", help="recipe file (its sweep section, if any, adds grid values and variants)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to try for a recipe key, e.g. --grid train.lr=1e-3,3e-4 (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--out", help="sweep directory (default: recipe's out_dir or runs/<recipe name>)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="report.md and plots comparing runs")
    p.add_argument("run_dirs", nargs="+", help="run directories, or sweep directories holding runs")
    p.add_argument("--out", help="where report.md goes (default: the one directory given, else .)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="evaluate a run (any task) on a dataset; writes RUN/eval_<data>.json")
    p.add_argument("run_dir", help="run or checkpoint directory")
    p.add_argument("--data", required=True,
                   help="a catalogue name[:split], HF dataset name, files/globs or an image folder: text for "
                        "bert_pretraining, labelled texts for text_classification, labelled images for "
                        "image_classification, labelled images (zero-shot) or image-caption pairs (retrieval) "
                        "for contrastive")
    p.add_argument("--split", default="train", help="split of a catalogue or HF dataset (default: %(default)s)")
    p.add_argument("--max-documents", type=int, metavar="N",
                   help="the first N documents (texts, images) only (default: all)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("zeroshot", help="zero-shot classification with an image-text (CLIP) run")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--data", default="cifar10:train",
                   help="labelled images: a catalogue name[:split], HF dataset name, Parquet files/globs or an "
                        "image folder (default: %(default)s, the CIFAR-10 training images)")
    p.add_argument("--split", default="test", help="split of an HF dataset (default: test)")
    p.add_argument("--classes", nargs="+", help="class names (default: the dataset's)")
    p.add_argument("--template", action="append", help="a prompt template with {c} (repeatable; default: "
                   "the 18 CIFAR-10 templates of clip_benchmark)")
    p.add_argument("--max-images", type=int, help="the first N images only")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("retrieval", help="image<->text retrieval recall@1/5/10 with an image-text (CLIP) run")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--data", required=True, help="image-caption pairs: HF dataset name or Parquet files/globs")
    p.add_argument("--split", default="test", help="split of an HF dataset (default: test)")
    p.set_defaults(func=cmd_retrieval)

    p = sub.add_parser("export", help="export a run to HF transformers format")
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("out_dir", help="new directory for the HF model and tokenizer")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except XformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
