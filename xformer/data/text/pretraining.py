"""BERT pretraining data, prepared once in parallel shards and cached on disk: sentence pairs for MLM +
NSP (``data.objective: mlm_nsp``, :mod:`xformer.data.text.sentence_pairs`) or packed full-length sequences
for MLM alone (``mlm``, :mod:`xformer.data.text.packing`).

The corpus is never held in memory. Its records are counted per file (Parquet: from the metadata) and
``data.val_documents`` of them, a seeded uniform choice by record number (:func:`held_out`; a blank
record chosen holds no examples), are held out for validation. The tokenizer is trained on a bounded
sample streamed from the training records (:func:`~xformer.data.text.tokenizer.tokenizer_sample`). Then
``data.num_workers`` processes each read, tokenize and write shards of at most ``data.shard_documents``
consecutive records; the held-out records are one more shard (:mod:`xformer.data.text.shards`: the layout,
resuming after a kill, atomic publishing). For sentence pairs, the document of a random B is drawn
from the same shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from xformer.data.configs import DataConfig
from xformer.data.cache import DamagedCacheError, default_cache_dir, discard_entry, log, open_entry
from xformer.data.text.corpus import (
    CorpusPart,
    corpus_fingerprint,
    corpus_parts,
    hub_corpus_files,
    read_documents,  # noqa: F401  (re-exported: callers import it from here)
    read_records,
    resolve_source,
)
from xformer.data.text.packing import PackedDataset, build_packed_shard, check_packed
from xformer.data.text.sentence_pairs import (  # noqa: F401  (create_examples re-exported)
    PretrainingDataset,
    build_nsp_shard,
    check_nsp_labels,
    create_examples,
)
from xformer.data.text.shards import (
    ShardContext,
    plan_shards,
    publish_shards,
    run_shards,
    tokenize_documents,  # noqa: F401  (re-exported: callers import it from here)
)
from xformer.data.text.tokenizer import build_tokenizer, tokenizer_fingerprint
from xformer.errors import XformerError

FORMAT_VERSION = 2  # 2: sharded (one folder per shard, a meta.json index per split)


def held_out(num_records: int, val_documents: int, seed: int) -> np.ndarray:
    """The record numbers held out for validation: a seeded uniform choice, sorted."""
    if val_documents >= num_records:
        raise XformerError(
            f"data.val_documents={val_documents} leaves no training documents: the corpus has {num_records} "
            f"records; lower data.val_documents"
        )
    return np.sort(np.random.default_rng(seed).choice(num_records, size=val_documents, replace=False))


def holdout_split(num_documents: int, val_documents: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded choice of held-out documents: (train indices, val indices), both sorted."""
    val = held_out(num_documents, val_documents, seed)
    return np.setdiff1d(np.arange(num_documents), val), val


# ----------------------------------------------------------------------------- preparing


@dataclass
class PretrainingData:
    """Train and validation examples, the tokenizer that made them, and where they are cached."""

    train: PretrainingDataset | PackedDataset
    val: PretrainingDataset | PackedDataset
    tokenizer: PreTrainedTokenizerFast
    cache_path: Path


EXAMPLE_SETTINGS = {"objective", "max_seq_len", "short_seq_prob", "nsp_random_prob", "dupe_factor",
                    "val_documents", "shard_documents", "seed"}


def _examples_key(cfg: DataConfig, corpus: str, tokenizer: PreTrainedTokenizerFast) -> str:
    settings = {
        "format": FORMAT_VERSION,
        "corpus": corpus,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        **cfg.model_dump(include=EXAMPLE_SETTINGS),
    }
    return "bert-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _build(
    cfg: DataConfig, path: Path, parts: list[CorpusPart], val_ids: np.ndarray, tokenizer: PreTrainedTokenizerFast,
    meta: dict,
) -> None:
    """Build the shards of cache entry ``path`` (resuming a killed build), check them and publish the entry."""
    ctx = ShardContext(
        work=_partial(path), parts=tuple(parts), cfg=cfg,
        tokenizer_json=tokenizer.backend_tokenizer.to_str(), cls_id=tokenizer.cls_token_id,
        sep_id=tokenizer.sep_token_id, dtype=meta["dtype"],
        build=build_packed_shard if cfg.objective == "mlm" else build_nsp_shard,
    )
    jobs = plan_shards(parts, val_ids, cfg.shard_documents)
    t0 = time.perf_counter()
    metas = run_shards(jobs, ctx, cfg.num_workers or len(os.sched_getaffinity(0)))  # the cores this process may use
    train = [m for job, m in zip(jobs, metas) if job.split == "train"]
    stats = {key: sum(m[key] for m in train) for key in train[0] if key not in ("seconds", "files")}
    check = check_packed if cfg.objective == "mlm" else check_nsp_labels
    try:
        check(stats, cfg)
    except XformerError:
        shutil.rmtree(ctx.work)  # the same data fails the same way: nothing to resume
        raise
    publish_shards(ctx.work, path, jobs, metas, meta)
    seconds = time.perf_counter() - t0
    log(f"train: {stats['num_examples']:,} examples, {stats['num_tokens']:,} tokens from {stats['documents']:,} "
        f"documents in {len(train)} shards ({seconds:.1f}s); cached in {path}")


def _partial(path: Path) -> Path:
    """Where cache entry ``path`` is built (:mod:`xformer.data.text.shards`)."""
    return path.with_name(f".{path.name}.partial")


def plan_corpus(cfg: DataConfig, root: Path) -> tuple[list[CorpusPart], np.ndarray]:
    """Each file's record count and the held-out record numbers of ``cfg.source``; a hub dataset is first
    copied to local Parquet under ``root/hub``. Reads no text from Parquet files (their metadata only)."""
    files = resolve_source(cfg.source, cfg.split)
    if isinstance(files, str):
        corpus = corpus_fingerprint(cfg.source, cfg.text_column, cfg.split, cfg.max_documents)
        files = hub_corpus_files(cfg.source, cfg.text_column, cfg.split, cfg.max_documents, root / "hub" / corpus)
    parts = corpus_parts(files, cfg.text_column, cfg.max_documents)
    total = sum(part.records for part in parts)
    log(f"corpus: {total:,} records in {len(parts)} files")
    return parts, held_out(total, cfg.val_documents, cfg.seed)


def training_texts(parts: list[CorpusPart], val_ids: np.ndarray, text_column: str) -> Iterator[str]:
    """The non-blank training documents in corpus order, streamed (the tokenizer's sample is their start)."""
    records = read_records(parts, [(0, sum(part.records for part in parts))], text_column, val_ids)
    return (text for _, texts in records for text in texts if text)


def prepare_pretraining_data(cfg: DataConfig, cache_dir: Path | None = None) -> PretrainingData:
    """Read, split, tokenize and turn ``cfg.source`` into cached pretraining examples (or load the cache).

    A cache hit only stats the source files and the entry's files (:func:`~xformer.data.cache.open_entry`)
    and loads the tokenizer. A damaged entry is built again, keeping its shards that are whole; so is one
    whose files turn out unreadable when read.
    """
    if cfg.source is None:
        raise XformerError("data.source is required: Parquet, text, JSON-lines, CSV or TSV files or globs, or an HF "
                           "dataset name")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(cfg)
    corpus = corpus_fingerprint(cfg.source, cfg.text_column, cfg.split, cfg.max_documents)
    corpus_key = f"{corpus}-val{cfg.val_documents}-seed{cfg.seed}"  # the tokenizer sees train documents only
    planned = None

    def texts() -> Iterator[str]:  # run only if the tokenizer is trained: a cache hit reads no corpus
        nonlocal planned
        planned = plan_corpus(cfg, root)
        yield from training_texts(*planned, cfg.text_column)

    tokenizer = build_tokenizer(cfg.tokenizer, texts(), root, corpus_key)

    path = root / "pretraining" / _examples_key(cfg, corpus, tokenizer)
    dataset = PackedDataset if cfg.objective == "mlm" else PretrainingDataset
    for attempt in range(2):
        if open_entry(path, salvage=_partial(path)):
            log(f"using cached examples {path}")
        else:
            parts, val_ids = planned or plan_corpus(cfg, root)
            planned = parts, val_ids
            meta = {
                "format": FORMAT_VERSION, "source": cfg.source, "corpus": corpus,
                "tokenizer": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer),
                "pad_token_id": tokenizer.pad_token_id, "dtype": "uint16" if len(tokenizer) < 65536 else "int32",
                **cfg.model_dump(include=EXAMPLE_SETTINGS),
            }
            _build(cfg, path, parts, val_ids, tokenizer, meta)
        try:
            return PretrainingData(dataset(path / "train"), dataset(path / "val"), tokenizer, path)
        except DamagedCacheError as err:
            if attempt or err.path != path:  # damaged again just after being built: not the cache's fault
                raise
            log(f"warning: cache entry {path} is damaged ({err.reason}): building it again")
            discard_entry(path, err.reason)
    raise AssertionError("unreachable: the second attempt returns or raises")
