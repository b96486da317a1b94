"""Training throughput with and without the background prefetch of the next micro-batch, interleaved.

    python bench/prefetch_step_time.py                                   # bert_tiny on the shared Wikipedia
    python bench/prefetch_step_time.py --recipe recipes/cnn_cifar.yaml --steps 60 --set data.max_images=6000

Runs the recipe with ``train.prefetch=false`` and ``true`` in turn (``--rounds`` times each, in this
process, on the same prepared data cache), ``--steps`` steps each, logging every 10 steps, and prints the
median of the logged throughputs after the first log of each run (``tokens_per_s`` or ``images_per_s``)
and the ratio with / without.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from xformer.commands.recipe import load_recipe
from xformer.tasks import run


def throughput(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"][1:]  # the first window holds the warm-up
    key = "tokens_per_s" if "tokens_per_s" in train[0] else "images_per_s"
    return statistics.median(r[key] for r in train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/bert_tiny.yaml")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    results: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for prefetch in (False, True):
                out = Path(tmp) / f"run-{i}-{prefetch}"
                cfg = load_recipe(args.recipe, [*args.set, f"train.max_steps={args.steps}", "train.epochs=null",
                                                "train.log_every=10", f"train.eval_every={args.steps}",
                                                f"train.save_every={args.steps}", "train.eval_batches=1",
                                                "train.progress=false", f"train.prefetch={str(prefetch).lower()}",
                                                f"out_dir={out}"])
                run(cfg)
                results[prefetch].append(throughput(out))
    print(f"\n{args.recipe}, {args.steps} steps a run, median throughput after the first 10 steps:")
    for prefetch, values in results.items():
        print(f"prefetch={str(prefetch).lower():<5} " + " ".join(f"{v:,.0f}" for v in values))
    with_, without = statistics.median(results[True]), statistics.median(results[False])
    print(f"ratio with / without prefetch: {with_ / without:.3f}")


if __name__ == "__main__":
    main()
