"""Train a BERT WordPiece tokenizer ahead of time and save it as an HF tokenizer directory.

    python data_prep/train_tokenizer.py [RECIPE] --out DIR [--source FILES...] [--set key=value ...]

Uses the recipe's ``data`` section (tokenizer settings, text column, held-out documents); the
held-out validation documents are left out of training, as ``prepare_pretraining_data`` does. The sample
(``data.tokenizer.train_documents`` documents, at most ``data.tokenizer.train_chars`` characters) is
streamed from the start of the corpus, which is never read whole. Point a recipe at the result with
``--set data.tokenizer.path=DIR``.
"""

from __future__ import annotations

import argparse
import sys
import time

from xformer.data.cache import default_cache_dir
from xformer.data.text.pretraining import plan_corpus, training_texts
from xformer.data.text.tokenizer import train_wordpiece
from xformer.errors import XformerError
from xformer.commands.recipe import load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", help="YAML recipe whose data section to use (default: defaults)")
    parser.add_argument("--out", required=True, help="directory to save the tokenizer to")
    parser.add_argument("--source", nargs="+", help="corpus files/globs or HF dataset name (overrides data.source)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args(argv)
    try:
        data = load_recipe(args.recipe, args.set).data
        if args.source:
            data.source = args.source[0] if len(args.source) == 1 else args.source
        if data.source is None:
            raise XformerError("data.source is required: pass --source or set it in the recipe")
        if data.tokenizer.path is not None:
            raise XformerError(f"data.tokenizer.path is set ({data.tokenizer.path!r}): there is no tokenizer to train")
        t0 = time.perf_counter()
        parts, val_ids = plan_corpus(data, default_cache_dir(data))
        train, tcfg = sum(p.records for p in parts) - len(val_ids), data.tokenizer
        print(f"training on the first of {train} training documents, at most {tcfg.train_documents or 'all'} "
              f"documents / {tcfg.train_chars or 'all'} characters ...", file=sys.stderr)
        tokenizer = train_wordpiece(training_texts(parts, val_ids, data.text_column), data.tokenizer)
        tokenizer.save_pretrained(args.out)
    except XformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"saved tokenizer ({len(tokenizer)} tokens) to {args.out} in {time.perf_counter() - t0:.0f}s; "
          f"use it with --set data.tokenizer.path={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
