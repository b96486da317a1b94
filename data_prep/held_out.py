"""Write the documents a pretraining recipe holds out for validation to one Parquet file, to evaluate
any run on exactly those documents with ``xformer eval RUN --data FILE``.

    python data_prep/held_out.py RECIPE OUT.parquet [--set key=value ...] [--overwrite]

The held-out documents follow from the corpus, ``data.val_documents`` and ``data.seed`` alone, so runs of
any objective, model or tokenizer that share those settings held out the same documents. Blank records
are written as they are (``xformer eval`` skips them, as training does). OUT is never one of the corpus's
files or the recipe; an existing OUT is replaced only with ``--overwrite``, and never left half-written.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xformer.data.cache import default_cache_dir
from xformer.data.text.corpus import read_records
from xformer.data.text.pretraining import plan_corpus
from xformer.errors import XformerError, os_error_line
from xformer.commands.recipe import load_recipe
from xformer.train.checkpoint import atomic_write_bytes, check_output


def _named_files(source) -> list[str]:
    """The local files and folders ``data.source`` names as they are (globs and hub names are resolved later)."""
    return [s for s in ([source] if isinstance(source, str) else source or []) if Path(s).exists()]


def main(argv: list[str] | None = None) -> int:
    """Write the held-out documents of a recipe; the exit code (2 with one ``error:`` line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="YAML recipe of a bert_pretraining run")
    parser.add_argument("out", help="the Parquet file to write (one column, data.text_column)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it exists (never a corpus file)")
    args = parser.parse_args(argv)
    try:
        cfg = load_recipe(args.recipe, args.set)
        if cfg.task != "bert_pretraining":
            raise XformerError(f"{args.recipe}: a {cfg.task} recipe holds out no documents; give a bert_pretraining one")
        named = [args.recipe, *_named_files(cfg.data.source)]
        check_output(args.out, named, args.overwrite, what="OUT")  # before reading a large corpus
        parts, val_ids = plan_corpus(cfg.data, default_cache_dir(cfg.data))
        out = check_output(args.out, [args.recipe, *(part.path for part in parts)], args.overwrite, what="OUT")
        ranges = [(int(i), int(i) + 1) for i in val_ids]
        texts = [t for _, batch in read_records(parts, ranges, cfg.data.text_column) for t in batch]
        buffer = io.BytesIO()
        pq.write_table(pa.table({cfg.data.text_column: texts}), buffer)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buffer.getvalue())  # never a half-written file under the final name
    except XformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be made: read-only, or a file in its place
        print(f"error: {os_error_line(err, 'OUT')}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(texts)} held-out documents of {cfg.data.source} (val_documents={cfg.data.val_documents}, "
          f"seed={cfg.data.seed})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
