"""Write the documents a pretraining recipe holds out for validation to one Parquet file, to evaluate
any run on exactly those documents with ``xformer eval RUN --data FILE``.

    python data_prep/held_out.py RECIPE OUT.parquet [--set key=value ...]

The held-out documents follow from the corpus, ``data.val_documents`` and ``data.seed`` alone, so runs of
any objective, model or tokenizer that share those settings held out the same documents. Blank records
are written as they are (``xformer eval`` skips them, as training does).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xformer.data.cache import default_cache_dir
from xformer.data.text.corpus import read_records
from xformer.data.text.pretraining import plan_corpus
from xformer.errors import XformerError
from xformer.commands.recipe import load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="YAML recipe of a bert_pretraining run")
    parser.add_argument("out", help="the Parquet file to write (one column, data.text_column)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args(argv)
    try:
        cfg = load_recipe(args.recipe, args.set)
        if cfg.task != "bert_pretraining":
            raise XformerError(f"{args.recipe}: a {cfg.task} recipe holds out no documents; give a bert_pretraining one")
        parts, val_ids = plan_corpus(cfg.data, default_cache_dir(cfg.data))
        ranges = [(int(i), int(i) + 1) for i in val_ids]
        texts = [t for _, batch in read_records(parts, ranges, cfg.data.text_column) for t in batch]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".tmp", delete=False) as tmp:
            pq.write_table(pa.table({cfg.data.text_column: texts}), tmp.name)
        os.replace(tmp.name, out)  # never a half-written file under the final name
    except (XformerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{out}: {len(texts)} held-out documents of {cfg.data.source} (val_documents={cfg.data.val_documents}, "
          f"seed={cfg.data.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
