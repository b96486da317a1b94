"""Train a BERT WordPiece tokenizer ahead of time and save it as an HF tokenizer directory.

    python data_prep/train_tokenizer.py [RECIPE] --out DIR [--source FILES...] [--set key=value ...] [--overwrite]

Uses the recipe's ``data`` section (tokenizer settings, text column, held-out documents); the
held-out validation documents are left out of training, as ``prepare_pretraining_data`` does. The sample
(``data.tokenizer.train_documents`` documents, at most ``data.tokenizer.train_chars`` characters) is
streamed from the start of the corpus, which is never read whole. Point a recipe at the result with
``--set data.tokenizer.path=DIR``. DIR appears whole (written beside it, then renamed); an existing
non-empty DIR is replaced only with ``--overwrite``, and never when it holds one of the corpus's files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from xformer.data.cache import default_cache_dir
from xformer.data.text.pretraining import plan_corpus, training_texts
from xformer.data.text.tokenizer import train_wordpiece
from xformer.errors import XformerError, os_error_line
from xformer.commands.recipe import load_recipe
from xformer.train.checkpoint import check_output


def save_whole(tokenizer, out: Path) -> None:
    """Save ``tokenizer`` to the folder ``out`` in one rename: a full disk or a kill leaves ``out`` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    old = work.with_name(f"{work.name}-old")
    try:
        tokenizer.save_pretrained(str(work / "new"))
        if out.exists():
            os.rename(out, old)  # asked for with --overwrite (check_output)
        os.rename(work / "new", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _named_files(source) -> list[str]:
    """The local files and folders ``data.source`` names as they are (globs and hub names are resolved later)."""
    return [s for s in ([source] if isinstance(source, str) else source or []) if Path(s).exists()]


def main(argv: list[str] | None = None) -> int:
    """Train and save a WordPiece tokenizer; the exit code (2 with one ``error:`` line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", help="YAML recipe whose data section to use (default: defaults)")
    parser.add_argument("--out", required=True, help="directory to save the tokenizer to")
    parser.add_argument("--source", nargs="+", help="corpus files/globs or HF dataset name (overrides data.source)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = parser.parse_args(argv)
    try:
        data = load_recipe(args.recipe, args.set).data
        if args.source:
            data.source = args.source[0] if len(args.source) == 1 else args.source
        if data.source is None:
            raise XformerError("data.source is required: pass --source or set it in the recipe")
        if data.tokenizer.path is not None:
            raise XformerError(f"data.tokenizer.path is set ({data.tokenizer.path!r}): there is no tokenizer to train")
        recipe = [args.recipe] if args.recipe else []
        check_output(args.out, [*recipe, *_named_files(data.source)], args.overwrite, what="--out")  # before reading
        t0 = time.perf_counter()
        parts, val_ids = plan_corpus(data, default_cache_dir(data))
        out = check_output(args.out, [*recipe, *(part.path for part in parts)], args.overwrite, what="--out")
        train, tcfg = sum(p.records for p in parts) - len(val_ids), data.tokenizer
        print(f"training on the first of {train} training documents, at most {tcfg.train_documents or 'all'} "
              f"documents / {tcfg.train_chars or 'all'} characters ...", file=sys.stderr)
        tokenizer = train_wordpiece(training_texts(parts, val_ids, data.text_column), data.tokenizer)
        save_whole(tokenizer, out)
    except XformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, a read-only folder, a file where a folder is expected
        print(f"error: {os_error_line(err, 'could not write the tokenizer:')}", file=sys.stderr)
        return 2
    print(f"saved tokenizer ({len(tokenizer)} tokens) to {args.out} in {time.perf_counter() - t0:.0f}s; "
          f"use it with --set data.tokenizer.path={args.out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
