"""Prepare (tokenize and cache) the BERT pretraining examples of a recipe ahead of training.

    python data_prep/prepare_bert.py RECIPE [--set key=value ...] [--cache-dir DIR]

Training with the same recipe (and cache directory) then finds the examples in the cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xformer.data.pretraining import prepare_pretraining_data
from xformer.errors import XformerError
from xformer.recipe import load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="YAML recipe whose data section to prepare")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--cache-dir", help="default: data.cache_dir, $XFORMER_CACHE or ~/.cache/xformer")
    args = parser.parse_args(argv)
    try:
        cfg = load_recipe(args.recipe, args.set)
        t0 = time.perf_counter()
        data = prepare_pretraining_data(cfg.data, Path(args.cache_dir) if args.cache_dir else None)
    except XformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"cache: {data.cache_path}")
    for name, split in (("train", data.train), ("val", data.val)):
        print(f"{name}: {len(split)} examples, {split.meta['num_tokens']} tokens, {split.meta['documents']} documents")
    print(f"vocab: {len(data.tokenizer)} tokens; took {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
