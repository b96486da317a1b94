"""The ``xformer`` command: ``train`` / ``pretrain`` / ``finetune`` a recipe; ``sweep`` and ``report``;
``eval``, ``zeroshot``, ``retrieval`` and ``export`` a run.

Problems with the user's input are printed as one ``error:`` line with exit code 2. A command's code is
imported when it runs, so ``xformer --help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from xformer import __version__
from xformer.errors import XformerError, os_error_line

DESCRIPTION = """\
xformer pretrains and fine-tunes transformer encoders (BERT, ModernBERT-style encoders, ViT, CLIP) from YAML
recipes: each run writes checkpoints, metrics.jsonl and its resolved config.yaml into a run directory, which
the other commands evaluate, compare and export to HF transformers."""

EPILOG = """\
examples:
  xformer pretrain recipes/bert_tiny.yaml --set train.max_steps=100
  xformer train recipes/vit_cifar_cpu.yaml --out runs/vit_try --resume
  xformer eval runs/bert_sst2 --data sst2-sentences:validation
  xformer zeroshot runs/clip_small --max-images 500
  xformer export runs/bert_tiny exported/bert_tiny
  xformer report runs/a runs/b
  xformer COMMAND --help    (the options of one command)

environment:
  XFORMER_DATA         where catalogue datasets are looked for first (then ../shared/data)
  XFORMER_CACHE        the cache of tokenizers, shards and decoded images (default ~/.cache/xformer)
  HF_HUB_OFFLINE=1     never reach the HF hub (HF_DATASETS_OFFLINE too); HF_HOME: the hub's cache
  WANDB_API_KEY        with train.wandb.enabled: log online (else offline)
  CUDA_VISIBLE_DEVICES the GPUs a run may use; torchrun sets RANK, WORLD_SIZE, LOCAL_RANK for several

Ctrl-C or SIGTERM stops a run after its current step (with a checkpoint when the last is older than
train.save_on_signal_after seconds); continue it with --resume."""


def _add_recipe_commands(sub) -> None:
    for name, text in (("train", "train a model from a YAML recipe"),
                       ("pretrain", "pretrain from a YAML recipe (task bert_pretraining or mae)"),
                       ("finetune", "fine-tune from model.init (an HF checkpoint or a run) with a YAML recipe")):
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="recipe file, e.g. recipes/bert_small.yaml")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set train.max_steps=100 (repeatable)")
        p.add_argument("--out", help="run directory (default: recipe's out_dir or runs/<recipe name>)")
        p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
        p.set_defaults(handler="xformer.commands.recipe:cmd_train")


def _add_sweep_commands(sub) -> None:
    p = sub.add_parser("sweep", help="run every combination of a grid of recipe values, then report")
    p.add_argument("recipe", help="recipe file (its sweep section, if any, adds grid values and variants)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to try for a recipe key, e.g. --grid train.lr=1e-3,3e-4 (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--out", help="sweep directory (default: recipe's out_dir or runs/<recipe name>)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs trained at once, each in its own process with the CPU cores shared out; a run whose "
                        "model.init is another run of the sweep waits for it (default: 1, one after another)")
    p.set_defaults(handler="xformer.commands.sweep:cmd_sweep")

    p = sub.add_parser("report", help="report.md and plots comparing runs")
    p.add_argument("run_dirs", nargs="+", help="run directories, or sweep directories holding runs")
    p.add_argument("--out", help="where report.md goes (default: the one directory given, else .)")
    p.set_defaults(handler="xformer.commands.report:cmd_report")


def _add_glue_command(sub) -> None:
    p = sub.add_parser("glue", help="fine-tune a model (or, with --study, several) on GLUE under one fixed "
                                    "protocol, several seeds; writes glue.json, glue.md and a chart")
    p.add_argument("model", nargs="?",
                   help="a run directory, a checkpoint directory, an HF directory or hf:<dir or hub id>")
    p.add_argument("--study", metavar="FILE", help="instead of MODEL: a study file (recipes/studies/glue_small.yaml):"
                   " each of its models in turn, then study.md, their side-by-side table with pretraining costs")
    p.add_argument("--models", metavar="A,B", help="with --study: these models of the study only")
    p.add_argument("--tasks", metavar="T1,T2", help="GLUE tasks (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte; "
                   "default: every one whose data is here or on the hub)")
    p.add_argument("--seeds", type=int, help="runs per task, train.seed 0..N-1 (default: 3)")
    p.add_argument("--from-scratch", action="store_true",
                   help="the baseline: MODEL's architecture and tokenizer with random weights")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the protocol, every run")
    p.add_argument("--out", help="output folder (default: runs/glue/<model name>, with --study runs/glue/<study "
                   "file name>)")
    p.add_argument("--recipe", help="the protocol (default: recipes/glue.yaml)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="(task, seed) runs trained at once, each in its own process with the CPU cores shared out "
                        "(default: 1, one after another in this process)")
    p.set_defaults(handler="xformer.commands.glue_study:cmd_glue_or_study")


def _add_eval_command(sub) -> None:
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
    p.set_defaults(handler="xformer.commands.on_runs:cmd_eval")


def _add_clip_commands(sub) -> None:
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
    p.set_defaults(handler="xformer.commands.on_runs:cmd_zeroshot")

    p = sub.add_parser("retrieval", help="image<->text retrieval recall@1/5/10 with an image-text (CLIP) run")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--data", required=True, help="image-caption pairs: HF dataset name or Parquet files/globs")
    p.add_argument("--split", default="test", help="split of an HF dataset (default: test)")
    p.set_defaults(handler="xformer.commands.on_runs:cmd_retrieval")


def build_parser() -> argparse.ArgumentParser:
    """The ``xformer`` argument parser; each command sets ``handler``, the ``module:function`` that runs it."""
    parser = argparse.ArgumentParser(prog="xformer", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"xformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_recipe_commands(sub)
    _add_sweep_commands(sub)
    _add_glue_command(sub)
    _add_eval_command(sub)
    _add_clip_commands(sub)
    p = sub.add_parser("export", help="export a run to HF transformers format")
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("out_dir", help="new directory for the HF model and tokenizer")
    p.add_argument("--format", choices=("ViTModel",), default=None,
                   help="the HF class to write instead of the task's own: ViTModel, the run's ViT encoder alone "
                        "(an MAE's, a ViT classifier's)")
    p.set_defaults(handler="xformer.commands.on_runs:cmd_export")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``xformer`` command; the exit code (2: an error in the user's input, 130: Ctrl-C, 143: SIGTERM).
    SIGTERM ends a command as Ctrl-C does (:mod:`xformer.train.signals`)."""
    from xformer.train.signals import Stopped, terminate_as_interrupt

    args = build_parser().parse_args(argv)
    terminate_as_interrupt()
    try:
        module, name = args.handler.split(":")
        getattr(importlib.import_module(module), name)(args)
    except XformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder, a file where a folder is expected: never a traceback
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"stopped: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
