"""The ``xformer`` command: ``pretrain`` and ``export``.

Problems with the user's input are printed as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from xformer.errors import XformerError


def cmd_pretrain(args: argparse.Namespace) -> None:
    from xformer.config import load_recipe
    from xformer.pretrain import pretrain

    cfg = load_recipe(args.recipe, args.set)
    if args.out:
        cfg.out_dir = args.out
    result = pretrain(cfg, resume=args.resume)
    val = " ".join(f"{k}={v:.4f}" for k, v in result["val"].items())
    print(f"done: step {result['step']}, run dir {cfg.out_dir}; val {val}")


def cmd_export(args: argparse.Namespace) -> None:
    from xformer.interop.hf_bert import export_bert
    from xformer.loading import load, load_tokenizer

    model = load(args.run_dir)
    export_bert(model, args.out_dir, tokenizer=load_tokenizer(args.run_dir))
    print(f"exported {args.run_dir} to {args.out_dir} (transformers.BertForPreTraining format)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a model from a YAML recipe")
    p.add_argument("recipe", help="recipe file, e.g. recipes/bert_small.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--out", help="run directory (default: recipe's out_dir or runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.set_defaults(func=cmd_pretrain)

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
