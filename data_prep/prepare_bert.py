"""Prepare (tokenize and cache) the BERT pretraining examples of a recipe ahead of training.

    python data_prep/prepare_bert.py RECIPE [--set key=value ...] [--cache-dir DIR] [--num-workers N]

Training with the same recipe (and cache directory) then finds the examples in the cache. The shards are
built by N processes (default: data.num_workers, else one per core); a killed run resumes from the
finished shards when started again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xformer.data.text.pretraining import prepare_pretraining_data
from xformer.errors import XformerError, os_error_line
from xformer.commands.recipe import load_recipe


def main(argv: list[str] | None = None) -> int:
    """Prepare a recipe's pretraining examples; the exit code (2 with one ``error:`` line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="YAML recipe whose data section to prepare")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--cache-dir", help="default: data.cache_dir, $XFORMER_CACHE or ~/.cache/xformer")
    parser.add_argument("--num-workers", type=int, help="processes building shards (sets data.num_workers)")
    args = parser.parse_args(argv)
    try:
        workers = [] if args.num_workers is None else [f"data.num_workers={args.num_workers}"]
        cfg = load_recipe(args.recipe, args.set + workers)
        t0 = time.perf_counter()
        data = prepare_pretraining_data(cfg.data, Path(args.cache_dir) if args.cache_dir else None)
    except XformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, a read-only cache, a file where a folder is expected: nothing published
        print(f"error: {os_error_line(err, 'preparing the cache:')}", file=sys.stderr)
        return 2
    print(f"cache: {data.cache_path}")
    for name, split in (("train", data.train), ("val", data.val)):
        print(f"{name}: {len(split)} examples, {split.meta['num_tokens']} tokens, {split.meta['documents']} documents, "
              f"{len(split.meta['shards'])} shards")
    print(f"vocab: {len(data.tokenizer)} tokens; took {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
