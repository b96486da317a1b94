"""Does the GPU wait on the host? A torch.profiler look at the trainer's own training steps.

For each target the real training path is built as ``xformer train`` builds it (task data, model,
:class:`xformer.train.loop.Trainer` with its background prefetch, pinned copies and on-device
augmentation), warmed up (compilation included), then ``--steps`` calls of ``Trainer.train_step`` are
profiled. Reported per target:

- ``gpu_idle_fraction``: the share of the profiled window (first to last GPU activity) in which no
  kernel, copy or memset runs on the GPU: gaps where the GPU waits on the host. ``gpu_waits_on_host``
  is ``gpu_idle_fraction > --idle-threshold`` (default 5%).
- ``largest_gaps_us`` and the time in gaps of 100 us or more;
- ``host``: on the training thread, the mean wall time of a ``train_step`` call before any sync (the
  host's cost to enqueue a step), and of the wait for the next micro-batch (``data_wait``: how long the
  step blocks on the background read); in the background thread, the mean time to read (and pin) one
  micro-batch (``data_read``). A read slower than a GPU step would put data loading on the critical path;
- the top-10 CUDA kernels by total time, the host-to-device copies by kind (pinned or pageable), and the
  top-10 host ops by self CPU time.

Targets: ``bert`` is ``recipes/bert_base.yaml`` (batch 256 x 128 tokens, its defaults otherwise) on a
synthetic corpus written here (no Wikipedia on the GPU machine; ``model.vocab_size=30522`` keeps the real
MLM head), ``vit`` is ``recipes/vit_cifar.yaml`` on CIFAR-10 (``--data-root`` or ``$XFORMER_DATA``).

    python bench/gpu_profile.py --json runs/profile.json                      # both targets, on the GPU
    python bench/gpu_profile.py --targets vit --data-root gpu_data --steps 10
    python bench/gpu_profile.py --dry-run                                     # arguments and files only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"bert": REPO / "recipes" / "bert_base.yaml", "vit": REPO / "recipes" / "vit_cifar.yaml"}


def merge_busy(intervals: list[tuple[float, float]]) -> tuple[float, float, float, list[float]]:
    """Union of (start, end) intervals -> (window start, window end, busy time, the gaps between them)."""
    if not intervals:
        return 0.0, 0.0, 0.0, []
    spans = sorted(intervals)
    busy, gaps = 0.0, []
    cur_s, cur_e = spans[0]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            gaps.append(s - cur_e)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    return spans[0][0], cur_e, busy, gaps


def synthetic_corpus(path: Path, n_docs: int, seed: int = 0) -> None:
    """Documents of Zipf-distributed pseudo-words (a 20,000-word lexicon), written as Parquet ``text``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    lexicon = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(20000)]
    cum_weights = list(itertools.accumulate(1 / (i + 1) for i in range(len(lexicon))))
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(10, 30)):
            words = rng.choices(lexicon, cum_weights=cum_weights, k=rng.randint(5, 20))
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    pq.write_table(pa.table({"text": docs}), path)


def build_trainer(target: str, overrides: list[str], work: Path):
    """The trainer of ``target`` as ``xformer train`` would build it (without starting ``fit``)."""
    import torch

    from xformer import distributed
    from xformer.commands.recipe import load_recipe
    from xformer.tasks import get_task
    from xformer.train.loop import Trainer

    base = [f"out_dir={work / target / 'run'}"]
    if target == "bert":
        corpus = work / "bert_corpus.parquet"
        if not corpus.exists():
            synthetic_corpus(corpus, 1200)
        base += [f"data.source={corpus}", f"data.cache_dir={work / 'bert_cache'}", "data.val_documents=20",
                 "model.vocab_size=30522"]
    cfg = load_recipe(RECIPES[target], base + overrides)
    spec = get_task(cfg.task)
    dist = distributed.setup(cfg.train.device)
    data = spec.load_data(cfg, None)
    torch.manual_seed(cfg.train.seed)
    built = spec.build(cfg, data)
    cfg = cfg.model_copy(update={"model": built.model_config})
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, built.model, built.task, cfg.out_dir, dist), cfg


def profile_target(target: str, overrides: list[str], work: Path, warmup: int, steps: int,
                   idle_threshold: float) -> dict:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    t_build = time.perf_counter()
    trainer, cfg = build_trainer(target, overrides, work)
    device = trainer.dist.device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    record = {"target": target, "recipe": str(RECIPES[target].relative_to(REPO)), "overrides": overrides,
              "device": torch.cuda.get_device_name(device) if cuda else str(device),
              "batch_size": cfg.train.batch_size, "compile": cfg.train.compile, "prefetch": cfg.train.prefetch,
              "attn_backend": next((m.backend for m in trainer.model.modules() if hasattr(m, "requested_backend")), None),
              "build_s": time.perf_counter() - t_build}

    # the training thread's waits for data and the background thread's reads, timed on this trainer
    waits, reads = [], []

    def timed(fn, into):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            into.append(time.perf_counter() - t0)
            return out
        return wrapper

    trainer.batches.read_ahead = timed(trainer.batches.read_ahead, waits)
    trainer.batches.read = timed(trainer.batches.read, reads)

    t0 = time.perf_counter()
    for step in range(warmup):
        trainer.train_step(step)
    sync()
    record["warmup_s"] = time.perf_counter() - t0
    waits.clear()
    reads.clear()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    enqueue = []
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for step in range(warmup, warmup + steps):
            t_step = time.perf_counter()
            with record_function("train_step"):
                trainer.train_step(step)
            enqueue.append(time.perf_counter() - t_step)
        sync()
        wall = time.perf_counter() - t0
    trainer.batches.close()  # the background read of the step after the last

    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    record.update({"steps": steps, "wall_s": wall, "step_s": wall / steps,
                   "host": {"enqueue_step_s": mean(enqueue), "data_wait_s": mean(waits), "data_read_s": mean(reads),
                            "reads": len(reads)}})
    events = prof.events()
    host_ops = defaultdict(float)
    for e in events:
        if e.device_type == DeviceType.CPU and e.name != "train_step":
            host_ops[e.name] += e.self_cpu_time_total
    record["top_host_ops_us"] = [{"name": n[:160], "self_cpu_us": round(t)}
                                 for n, t in sorted(host_ops.items(), key=lambda kv: -kv[1])[:10]]
    if not cuda:
        record["note"] = "no CUDA device: GPU idle time and kernels not measured"
        return record

    kernels = defaultdict(lambda: [0.0, 0])
    intervals, copies = [], defaultdict(float)
    for e in events:
        # kernels, copies and memsets; not the GPU-side span of the train_step annotation
        if e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False) or e.name == "train_step":
            continue
        start, end = e.time_range.start, e.time_range.end
        intervals.append((start, end))
        kernels[e.name][0] += end - start
        kernels[e.name][1] += 1
        if e.name.startswith("Memcpy"):
            copies[e.name] += end - start
    w0, w1, busy, gaps = merge_busy(intervals)
    window = max(w1 - w0, 1e-9)
    total_kernel = sum(t for t, _ in kernels.values()) or 1e-9
    idle = 1 - busy / window
    big = [g for g in gaps if g >= 100]
    record.update({
        "gpu_window_us": window, "gpu_busy_us": busy, "gpu_idle_fraction": idle,
        "gpu_waits_on_host": idle > idle_threshold, "idle_threshold": idle_threshold,
        "gaps_over_100us": {"count": len(big), "total_us": sum(big)},
        "largest_gaps_us": sorted(gaps, reverse=True)[:5],
        "gpu_busy_per_step_s": busy / steps / 1e6,
        "memcpy_us": dict(copies),
        "top_kernels": [{"name": n[:160], "total_us": round(t), "calls": c, "share": t / total_kernel}
                        for n, (t, c) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:10]],
    })
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", default="bert,vit", help="comma list of bert, vit")
    p.add_argument("--warmup", type=int, default=5, help="unprofiled steps first (compilation happens here)")
    p.add_argument("--steps", type=int, default=8, help="profiled steps per target")
    p.add_argument("--bert-set", action="append", default=[], metavar="KEY=VALUE", help="override for bert")
    p.add_argument("--vit-set", action="append", default=[], metavar="KEY=VALUE", help="override for vit")
    p.add_argument("--data-root", default=None, help="sets $XFORMER_DATA (where cifar10/ is found)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--idle-threshold", type=float, default=0.05)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and files, build nothing")
    args = p.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.target_list or (bad := [t for t in args.target_list if t not in RECIPES]):
        p.error(f"--targets {args.targets!r}: choose from {', '.join(RECIPES)}")
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data_root:
        os.environ["XFORMER_DATA"] = str(Path(args.data_root).resolve())
    missing = [str(RECIPES[t]) for t in args.target_list if not RECIPES[t].is_file()]
    if missing:
        print(f"error: missing recipe {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"dry run: targets {args.target_list}, warmup {args.warmup}, steps {args.steps}: arguments OK")
        return 0
    results, failed = {}, False
    with tempfile.TemporaryDirectory(prefix="gpu_profile_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for target in args.target_list:
            overrides = args.bert_set if target == "bert" else args.vit_set
            try:
                results[target] = profile_target(target, overrides, work, args.warmup, args.steps, args.idle_threshold)
            except Exception as err:  # report it, profile the other target
                failed = True
                line = (str(err).strip().splitlines() or [""])[0]
                results[target] = {"target": target, "error": f"{type(err).__name__}: {line}"[:300]}
            r = results[target]
            if "error" in r:
                print(f"{target}: failed: {r['error']}")
            elif "gpu_idle_fraction" in r:
                print(f"{target}: step {r['step_s'] * 1e3:.1f} ms, GPU busy {r['gpu_busy_per_step_s'] * 1e3:.1f} ms/step, "
                      f"idle {100 * r['gpu_idle_fraction']:.1f}% -> GPU waits on host: {r['gpu_waits_on_host']}; "
                      f"host enqueue {r['host']['enqueue_step_s'] * 1e3:.1f} ms, data wait "
                      f"{(r['host']['data_wait_s'] or 0) * 1e3:.2f} ms, read {(r['host']['data_read_s'] or 0) * 1e3:.1f} ms")
                for k in r["top_kernels"]:
                    print(f"    {100 * k['share']:5.1f}%  {k['total_us'] / 1e3:8.2f} ms  {k['calls']:5d}x  {k['name'][:100]}")
            else:
                print(f"{target}: step {r['step_s'] * 1e3:.1f} ms ({r.get('note', '')})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
