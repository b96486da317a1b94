"""Sharded pretraining data: the corpus cut into shards, each read, tokenized and turned into examples by
one worker process and written as its own memory-mapped arrays; resumable, published whole, read back
as one dataset.

A training shard is a contiguous range of at most ``data.shard_documents`` corpus records of one file,
less the held-out ones; all held-out records make one validation shard. A worker reads its records itself
(:func:`~xformer.data.text.corpus.read_records`), so the parent never holds the text, tokenizes them
(:func:`tokenize_documents`) and hands the tokens to the objective's builder (sentence pairs:
:func:`xformer.data.text.pretraining.build_nsp_shard`; packed sequences:
:func:`xformer.data.text.packing.build_packed_shard`), which writes the shard's arrays. Every shard draws from
its own seed (from ``data.seed``, its split and its number), so the examples depend on the shards and
never on how many processes built them.

While it is prepared, cache entry ENTRY is built beside its final place::

    .ENTRY.partial/train/shard-00000/        a finished shard: the builder's arrays + meta.json
    .ENTRY.partial/train/.shard-00001.<pid>/ a shard being built, renamed to shard-00001 when complete
    .ENTRY.partial/val/shard-00000/

A rerun after a kill skips the finished shards and removes half-built ones. A finished shard's meta.json
records the size of each of its files, and a shard whose files differ (deleted, truncated) is built again.
When all are built, each split gets a meta.json (its index: the shards, their example counts, totals and
settings), the entry its sizes.json (:func:`xformer.data.cache.record_sizes`), and .ENTRY.partial is renamed
to ENTRY in one step; a published entry is never written again. One found damaged when opened is moved back
to .ENTRY.partial (:func:`xformer.data.cache.open_entry`), so that only its damaged shards are built again.

``data.num_workers`` processes build the shards (None: one per core), never more than there are training
shards to build. With one, the shards are built in this process (the tokenizer using its own threads);
otherwise in a pool of spawned processes (fork and the tokenizer's Rust thread pool do not mix), each
tokenizing single-threaded as the processes already fill the cores. A worker that dies (killed, out of
memory) stops the preparation with an error; the finished shards are kept for the rerun. Ctrl-C or SIGTERM
stops at once (pool workers are terminated, not waited for), keeping the finished shards.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from xformer.data.configs import DataConfig
from xformer.data.cache import DamagedCacheError, file_sizes, log, record_sizes, size_mismatch
from xformer.data.text.corpus import CorpusPart, read_records, split_sentences
from xformer.errors import XformerError

SPLITS = ("train", "val")
LOG_EVERY = 10.0  # seconds between progress lines


# ----------------------------------------------------------------------------- tokenizing


@dataclass
class TokenizedCorpus:
    """Documents as sentences as token ids, flat: sentence s is tokens[sent_starts[s]:sent_starts[s+1]]."""

    tokens: np.ndarray  # (total,) int32
    sent_starts: np.ndarray  # (S+1,) int64
    doc_starts: np.ndarray  # (D+1,) int64: document d holds sentences doc_starts[d]:doc_starts[d+1]


def tokenize_documents(documents: Iterable[str], tokenizer: Tokenizer, batch_documents: int = 64) -> TokenizedCorpus:
    """Split documents into sentences and tokenize them, a batch of documents at a time (only token ids
    are kept). ``tokenizer`` is a backend tokenizer without truncation or padding."""
    token_parts, length_parts, sentence_counts = [], [], []
    docs = iter(documents)
    while batch := list(islice(docs, batch_documents)):
        sentences = []
        for doc in batch:
            doc_sentences = split_sentences(doc)
            sentence_counts.append(len(doc_sentences))
            sentences.extend(doc_sentences)
        ids = [e.ids for e in tokenizer.encode_batch_fast(sentences, add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        token_parts.append(np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())))
        length_parts.append(lengths)
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
    sentence_doc = np.repeat(np.arange(len(sentence_counts)), sentence_counts)  # (S,)
    keep = lengths > 0  # a sentence of only dropped characters has no tokens
    lengths, sentence_doc = lengths[keep], sentence_doc[keep]
    sent_starts = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=sent_starts[1:])
    doc_starts = np.zeros(len(sentence_counts) + 1, np.int64)
    np.cumsum(np.bincount(sentence_doc, minlength=len(sentence_counts)), out=doc_starts[1:])
    tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, np.int32)
    return TokenizedCorpus(tokens, sent_starts, doc_starts)


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ShardJob:
    """One shard: the corpus records a worker reads (``ranges`` of record numbers, less ``skip``)."""

    split: str  # "train" | "val"
    index: int
    ranges: tuple[tuple[int, int], ...]  # [start, stop) record numbers, sorted
    skip: tuple[int, ...] = ()  # records inside the ranges that belong to the other split

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    def seed(self, seed: int) -> int:
        """This shard's own seed, drawn from ``seed`` (data.seed), its split and its number."""
        return int(np.random.SeedSequence([seed, SPLITS.index(self.split), self.index]).generate_state(1)[0])


def plan_shards(parts: list[CorpusPart], val_ids: np.ndarray, shard_documents: int) -> list[ShardJob]:
    """The validation shard (all of ``val_ids``; none if empty), then each file's records in training
    shards of ``shard_documents``, the held-out ones skipped."""
    val = [ShardJob("val", 0, tuple((int(v), int(v) + 1) for v in val_ids))] if len(val_ids) else []
    train: list[ShardJob] = []
    first = 0
    for part in parts:
        for lo in range(first, first + part.records, shard_documents):
            hi = min(lo + shard_documents, first + part.records)
            skip = val_ids[(val_ids >= lo) & (val_ids < hi)]
            train.append(ShardJob("train", len(train), ((lo, hi),), tuple(skip.tolist())))
        first += part.records
    return val + train  # the validation shard first: it reads from every file holding held-out records


# ----------------------------------------------------------------------------- building


@dataclass(frozen=True)
class ShardContext:
    """What every shard of one preparation shares; sent to each worker once."""

    work: Path  # the unpublished cache entry
    parts: tuple[CorpusPart, ...]
    cfg: DataConfig
    tokenizer_json: str  # the backend tokenizer, serialized
    cls_id: int
    sep_id: int
    dtype: str  # of input_ids: "uint16" or "int32"
    # the objective's builder: (shard dir, tokens, record number of each document, seed, context) -> stats
    build: Callable[[Path, TokenizedCorpus, np.ndarray, int, ShardContext], dict]


def build_shard(job: ShardJob, ctx: ShardContext) -> dict:
    """Read, tokenize and build one shard; it appears in ``ctx.work`` only once complete. Returns its meta."""
    t0 = time.perf_counter()
    tokenizer = Tokenizer.from_str(ctx.tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    record_ids = []

    def texts() -> Iterator[str]:
        for ids, batch in read_records(ctx.parts, job.ranges, ctx.cfg.text_column, job.skip):
            record_ids.append(ids)
            yield from batch

    corpus = tokenize_documents(texts(), tokenizer)
    doc_ids = np.concatenate(record_ids) if record_ids else np.zeros(0, np.int64)  # (D,)
    target = ctx.work / job.split / job.name
    tmp = target.with_name(f".{job.name}.{os.getpid()}")
    tmp.mkdir()
    meta = ctx.build(tmp, corpus, doc_ids, job.seed(ctx.cfg.seed), ctx)
    meta = dict(meta, documents=len(doc_ids), input_tokens=len(corpus.tokens), seconds=time.perf_counter() - t0)
    meta["files"] = file_sizes(tmp)  # checked when a rerun reuses the shard
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    _rename(tmp, target)
    return meta


def _finished(shard: Path) -> bool:
    """Whether ``shard`` is a finished shard whose files are those its meta.json records; a damaged one is
    removed (with a warning) to be built again."""
    if not shard.is_dir():
        return False
    try:
        meta = json.loads((shard / "meta.json").read_text())
        problem = size_mismatch(shard, meta.get("files", {}))  # a shard from before sizes were recorded: none
    except (OSError, ValueError, AttributeError) as err:
        problem = f"its meta.json is unreadable ({err})"
    if problem is None:
        return True
    log(f"warning: shard {shard} is damaged ({problem}): building it again")
    shutil.rmtree(shard)
    return False


def _rename(work: Path, target: Path) -> None:
    """Move finished ``work`` to ``target`` in one step; if another process got there first, keep theirs."""
    try:
        os.rename(work, target)
    except OSError:
        if not target.is_dir():  # not another process publishing it first
            raise
        shutil.rmtree(work)


_CONTEXT: ShardContext | None = None  # a pool worker's context, set once by _start_worker


def _start_worker(ctx: ShardContext) -> None:
    global _CONTEXT
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _CONTEXT = ctx


def _build_in_worker(job: ShardJob) -> tuple[ShardJob, dict]:
    return job, build_shard(job, _CONTEXT)


def run_shards(jobs: list[ShardJob], ctx: ShardContext, num_workers: int) -> list[dict]:
    """Build the shards of ``jobs`` not yet finished in ``ctx.work`` with up to ``num_workers`` processes;
    the meta of every job's shard, in job order."""
    for split in SPLITS:
        folder = ctx.work / split
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".shard-*"):  # half-built by a killed run
            shutil.rmtree(stale)
    todo = [job for job in jobs if not _finished(ctx.work / job.split / job.name)]
    workers = max(1, min(num_workers, sum(job.split == "train" for job in todo)))  # the validation shard is small
    if len(todo) < len(jobs):
        log(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} shards are already built")
    if todo:
        log(f"building {len(todo)} shards in {workers} process{'es' * (workers > 1)} ...")
    t0 = t_log = time.perf_counter()
    tokens = 0

    def report(built: Iterator[tuple[ShardJob, dict]]) -> None:
        nonlocal tokens, t_log
        for k, (job, meta) in enumerate(built, 1):
            tokens += meta["input_tokens"]
            now = time.perf_counter()
            if now - t_log > LOG_EVERY or k == len(todo):
                log(f"{k}/{len(todo)} shards built (last: {job.split} {job.name}, {meta['documents']} documents); "
                    f"{tokens / 1e6:.1f}M tokens in {now - t0:.0f}s ({tokens / (now - t0) / 1e6:.2f}M tokens/s)")
                t_log = now

    try:
        if workers == 1:
            report((job, build_shard(job, ctx)) for job in todo)
        else:
            _build_in_pool(todo, ctx, workers, report)
    except KeyboardInterrupt:
        built = sum((ctx.work / job.split / job.name).is_dir() for job in jobs)
        log(f"interrupted: {built} of {len(jobs)} shards are built and kept in {ctx.work} (a rerun resumes from "
            f"them); the shards being built are dropped")
        raise
    return [json.loads((ctx.work / job.split / job.name / "meta.json").read_text()) for job in jobs]


def _build_in_pool(todo: list[ShardJob], ctx: ShardContext, workers: int,
                   report: Callable[[Iterator[tuple[ShardJob, dict]]], None]) -> None:
    """Build ``todo`` in a pool of ``workers`` spawned processes, handing each finished shard to ``report``.
    On Ctrl-C / SIGTERM the workers are terminated at once (their half-built shards are removed by the
    next run), not waited for."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _start_worker, (ctx,))
    futures = [pool.submit(_build_in_worker, job) for job in todo]
    try:
        report(future.result() for future in as_completed(futures))
    except BrokenProcessPool:
        raise XformerError(
            f"data.num_workers={workers}: a worker process died while building shards (killed, e.g. out of "
            f"memory?); the finished shards are kept: run again to resume, with fewer workers or a smaller "
            f"data.shard_documents={ctx.cfg.shard_documents}"
        ) from None
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in set(multiprocessing.active_children()) - before:  # this pool's workers
            worker.terminate()
        raise
    finally:  # on an error, shards not started are dropped; those running finish and are kept
        pool.shutdown(wait=True, cancel_futures=True)


def publish_shards(work: Path, target: Path, jobs: list[ShardJob], metas: list[dict], meta: dict) -> None:
    """Write each split's index (``<split>/meta.json``: ``meta``, its shards and their example counts, the
    totals) into ``work`` and rename it to ``target``; if another process published first, theirs is kept."""
    for split in SPLITS:
        done = [(job, m) for job, m in zip(jobs, metas) if job.split == split]
        index = dict(meta, shards=[job.name for job, _ in done], examples=[m["num_examples"] for _, m in done])
        for total in ("num_examples", "num_tokens", "documents", "input_tokens"):
            index[total] = sum(m[total] for _, m in done)
        (work / split / "meta.json").write_text(json.dumps(index, indent=2))
    record_sizes(work)
    _rename(work, target)


# ----------------------------------------------------------------------------- reading


class ShardedDataset:
    """A split's shards read back: ``meta`` (the split's index) and each shard's ``input_ids``,
    memory-mapped (one open file per shard). Example i is in shard s where starts[s] <= i < starts[s+1].

    A file that cannot be read is a :class:`~xformer.data.cache.DamagedCacheError` naming the cache entry."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text())
            self.max_seq_len: int = self.meta["max_seq_len"]
            self.pad_token_id: int = self.meta["pad_token_id"]
            names = list(self.meta["shards"])
            examples = np.asarray(self.meta["examples"], np.int64)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self.damaged(f"{self.path.name}/meta.json is unreadable ({type(err).__name__}: {err})") from None
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if len(names) > limit // 2:
            raise XformerError(
                f"{self.path}: {len(names)} shards need as many open files, over half the open-file limit of "
                f"{limit}; raise it (ulimit -n) or prepare again with a larger data.shard_documents"
            )
        self.input_ids = [self.array(name, "input_ids", mmap=True) for name in names]
        self.starts = np.zeros(len(names) + 1, np.int64)  # (S+1,)
        np.cumsum(examples, out=self.starts[1:])

    def damaged(self, reason: str) -> DamagedCacheError:
        """The error for this split's cache entry (its parent folder) being damaged."""
        return DamagedCacheError(self.path.parent, reason)

    def array(self, shard: str, name: str, mmap: bool = False) -> np.ndarray:
        """Array ``name`` of ``shard`` (memory-mapped with ``mmap``); an unreadable one is :meth:`damaged`."""
        file = self.path / shard / f"{name}.npy"
        try:
            return np.load(file, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, EOFError) as err:
            raise self.damaged(f"{file.relative_to(self.path.parent)} is unreadable ({err})") from None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _load(self, name: str, dtype: type = np.int64) -> np.ndarray:
        """Per-example array ``name`` of every shard, concatenated, in memory."""
        arrays = [self.array(shard, name) for shard in self.meta["shards"]]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype)

    def _by_shard(self, idx: np.ndarray) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
        """(positions in ``idx``, shard, example indices within it) for each shard examples ``idx`` are in."""
        shard = np.searchsorted(self.starts, idx, side="right") - 1  # (B,)
        for s in np.unique(shard):
            rows = np.flatnonzero(shard == s)
            yield rows, int(s), idx[rows] - self.starts[s]
