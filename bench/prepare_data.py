"""Pretraining-data preparation at scale: wall time, tokens/s and peak memory of ``prepare_pretraining_data``
with 1 and 2 workers, on 1 and 4 copies of one corpus, all with the same tokenizer.

    python bench/prepare_data.py                          # ../shared/data/wiki/train-00000-of-00008.parquet
    python bench/prepare_data.py --max-documents 2000     # a quick run on its first 2000 documents
    python bench/prepare_data.py --source ../shared/data/wiki --copies 1 --workers 1 2 4

The source is Parquet (a file, folder or glob). The copies are symlinks in a temporary folder (each its
own path, so each configuration is a new corpus to the cache); with ``--max-documents`` the first N
documents of the source are first written to one Parquet file, which is then copied. The tokenizer is
trained once (``data_prep/train_tokenizer.py`` on the copied files, or ``--tokenizer DIR``) and passed to
every configuration, so runs only prepare examples.

Each configuration runs in a fresh process (this script with ``--run``) with an empty cache, so memory
peaks do not mix; this process imports neither xformer nor pyarrow, as Linux carries a parent's max RSS
over into the processes it starts. Memory is reported three ways: ``main`` and ``worker``, the kernel's
max RSS of the preparing process and of its largest worker (``getrusage`` SELF / CHILDREN, in the run);
``tree``, the peak of the summed RSS of the run's whole process tree, sampled from /proc every 20 ms
(shared library pages count once per process). Tokens are the corpus tokens tokenized
(``input_tokens``), over the preparation's wall time (process start-up and imports excluded). The memory
ratio, 4 copies over 1 copy at the same worker count, must stay <= 1.3: memory is bounded by a shard,
not by the corpus.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKI_SHARD = REPO.parent / "shared" / "data" / "wiki" / "train-00000-of-00008.parquet"
PAGE = os.sysconf("SC_PAGE_SIZE")
RATIO_LIMIT = 1.3


def run_one(spec: dict) -> dict:
    """One configuration, in this (fresh) process: prepare, then report sizes, time and max RSS."""
    from xformer.data.configs import DataConfig, TokenizerConfig
    from xformer.data.text.pretraining import prepare_pretraining_data

    cfg = DataConfig(source=spec["source"], tokenizer=TokenizerConfig(path=spec["tokenizer"]),
                     num_workers=spec["workers"], max_seq_len=spec["seq_len"], objective=spec["objective"],
                     val_documents=spec["val_documents"], shard_documents=spec["shard_documents"])
    t0 = time.perf_counter()
    data = prepare_pretraining_data(cfg, Path(spec["cache"]))
    seconds = time.perf_counter() - t0
    train, val = data.train.meta, data.val.meta
    return {
        "documents": train["documents"] + val["documents"], "shards": len(train["shards"]) + len(val["shards"]),
        "input_tokens": train["input_tokens"] + val["input_tokens"], "examples": len(data.train) + len(data.val),
        "seconds": seconds,
        "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def tree_rss(pid: int) -> int:
    """Summed resident memory (bytes) of process ``pid`` and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError):
            continue
        todo += parents.get(p, [])
    return total


def measure(spec: dict, log: Path) -> dict:
    """Run ``spec`` in a fresh process, sampling its process tree's memory until it ends."""
    with open(log, "ab") as err, tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, __file__, "--run", json.dumps(spec)], stdout=out, stderr=err)
        peak = 0
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            sys.exit(f"configuration {spec} failed (exit {proc.returncode}); see {log}")
        out.seek(0)
        return dict(json.loads(out.read().decode().splitlines()[-1]), tree_mb=peak / 2**20)


def source_files(source: str) -> list[Path]:
    """The Parquet files ``source`` names: a file, a folder or a glob."""
    path = Path(source).expanduser()
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else sorted(map(Path, glob.glob(str(path))))
    if not files:
        sys.exit(f"--source {source}: no Parquet files")
    return files


def write_base(source: str, max_documents: int, out: Path) -> None:
    """The first ``max_documents`` non-blank texts of ``source`` as one Parquet file ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = (text for file in source_files(source) for batch in pq.ParquetFile(file).iter_batches(columns=["text"])
             for text in batch.column(0).to_pylist() if text and text.strip())
    pq.write_table(pa.table({"text": list(islice(texts, max_documents))}), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(WIKI_SHARD), help="Parquet file/folder/glob (default: a wiki shard)")
    parser.add_argument("--max-documents", type=int, help="use the source's first N documents only")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="data.num_workers values")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 4], help="copies of the corpus")
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: train one on the corpus, once)")
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--tokenizer-chars", type=int, default=20_000_000, help="its training sample, characters")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--objective", choices=["mlm_nsp", "mlm"], default="mlm_nsp")
    parser.add_argument("--val-documents", type=int, default=100)
    parser.add_argument("--shard-documents", type=int, default=1000)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: one configuration, as JSON
    parser.add_argument("--write-base", help=argparse.SUPPRESS)  # internal: write the --max-documents file
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))))
        return 0
    if args.write_base:
        write_base(args.source, args.max_documents, Path(args.write_base))
        return 0

    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        log = tmp / "runs.log"
        files = source_files(args.source)
        if args.max_documents is not None:  # in its own process: the runs would inherit its peak memory
            files = [tmp / "base.parquet"]
            subprocess.run([sys.executable, __file__, "--source", args.source, "--max-documents",
                            str(args.max_documents), "--write-base", str(files[0])], check=True)
        tokenizer = args.tokenizer
        if tokenizer is None:
            tokenizer = str(tmp / "tokenizer")
            sets = [f"data.tokenizer.vocab_size={args.vocab_size}",
                    f"data.tokenizer.train_chars={args.tokenizer_chars}"]
            subprocess.run([sys.executable, str(REPO / "data_prep" / "train_tokenizer.py"), "--source",
                            *map(str, files), "--out", tokenizer, *(a for s in sets for a in ("--set", s))],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = f" (first {args.max_documents} documents)" if args.max_documents else ""
        print(f"source: {args.source}{first}")
        print(f"tokenizer: {tokenizer}; seq_len {args.seq_len}, objective {args.objective}, "
              f"{args.shard_documents} documents per shard; cores: {os.cpu_count()}")
        head = f"{'copies':>6} {'workers':>7} {'documents':>9} {'shards':>6} {'tokens':>11} {'seconds':>8} " \
               f"{'tokens/s':>9} {'main MB':>8} {'worker MB':>9} {'tree MB':>8}"
        print(head)
        results = {}
        for copies in args.copies:
            folder = tmp / f"copies-{copies}"
            folder.mkdir()
            for k in range(copies):
                for path in files:
                    (folder / f"copy{k}-{path.name}").symlink_to(path.resolve())
            for workers in args.workers:
                spec = {"source": str(folder), "tokenizer": tokenizer, "workers": workers, "seq_len": args.seq_len,
                        "objective": args.objective, "val_documents": args.val_documents,
                        "shard_documents": args.shard_documents, "cache": str(tmp / f"cache-{copies}-{workers}")}
                r = results[copies, workers] = measure(spec, log)
                print(f"{copies:>6} {workers:>7} {r['documents']:>9} {r['shards']:>6} {r['input_tokens']:>11,} "
                      f"{r['seconds']:>8.1f} {r['input_tokens'] / r['seconds']:>9,.0f} {r['main_mb']:>8.0f} "
                      f"{r['worker_mb']:>9.0f} {r['tree_mb']:>8.0f}", flush=True)
        lo, hi = min(args.copies), max(args.copies)
        ok = True
        for workers in args.workers if lo != hi else []:
            a, b = results[lo, workers], results[hi, workers]
            tree = b["tree_mb"] / a["tree_mb"]
            largest = max(b["main_mb"], b["worker_mb"]) / max(a["main_mb"], a["worker_mb"])
            ok &= tree <= RATIO_LIMIT and largest <= RATIO_LIMIT
            print(f"memory ratio {hi} copies / {lo} copy, {workers} worker{'s' * (workers > 1)}: tree {tree:.2f}, "
                  f"largest process {largest:.2f} (limit {RATIO_LIMIT})")
    print("memory bounded: yes" if ok else "memory bounded: NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
