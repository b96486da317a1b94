"""BERT pretraining examples (sentence pairs for MLM + NSP), created once and cached on disk.

The procedure is the original BERT one (``create_pretraining_data.py``): per document, gather
consecutive sentences into a chunk until it reaches a target length; segment A is the first k
sentences, segment B is either the rest of the chunk (label 0) or text from another, random
document (label 1, and the unused sentences are put back); the pair is trimmed to the target.
The short-target draw is made per chunk, and pairs are trimmed to that target.
Before anything is cached, the training examples' NSP labels are checked (:func:`check_nsp_labels`).

Because sentences of a document are consecutive in one flat token array, every A and B is a
contiguous token range, so an example is four integers until it is written out. The cache holds
flat numpy arrays, memory-mapped at load time::

    input_ids  (total,)  uint16 | int32   [CLS] A [SEP] B [SEP] of every example, back to back
    offsets    (N+1,)    int64            example i is input_ids[offsets[i]:offsets[i+1]]
    a_lengths  (N,)      int32            length of [CLS] A [SEP] (token type 0)
    nsp_labels (N,)      uint8            0: B follows A, 1: B is random (HF convention)
    doc_ids    (N,)      int32            corpus index of the document A came from
    b_doc_ids  (N,)      int32            corpus index of the document B came from
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from xformer.config import DataConfig
from xformer.data.cache import default_cache_dir, log, publish_dir
from xformer.data.corpus import corpus_fingerprint, read_documents, split_sentences
from xformer.data.tokenizer import (
    build_tokenizer,
    tokenizer_cache_path,
    tokenizer_fingerprint,
)
from xformer.errors import XformerError

FORMAT_VERSION = 1
NSP_TOLERANCE = 0.1  # a measured random-B share further than this from data.nsp_random_prob is warned about


def holdout_split(num_documents: int, val_documents: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded choice of held-out documents: (train indices, val indices), both sorted."""
    if val_documents >= num_documents:
        raise XformerError(
            f"data.val_documents={val_documents} leaves no training documents: the corpus has {num_documents}"
        )
    val = np.sort(np.random.default_rng(seed).choice(num_documents, size=val_documents, replace=False))
    return np.setdiff1d(np.arange(num_documents), val), val


# ----------------------------------------------------------------------------- tokenizing


@dataclass
class TokenizedCorpus:
    """Documents as sentences as token ids, flat: sentence s is tokens[sent_starts[s]:sent_starts[s+1]]."""

    tokens: np.ndarray  # (total,) int32
    sent_starts: np.ndarray  # (S+1,) int64
    doc_starts: np.ndarray  # (D+1,) int64: document d holds sentences doc_starts[d]:doc_starts[d+1]


def tokenize_documents(
    documents: list[str], tokenizer: PreTrainedTokenizerFast, batch_documents: int = 256
) -> TokenizedCorpus:
    """Split every document into sentences and tokenize them in large batches (multi-threaded)."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy we may reconfigure
    backend.no_truncation()
    backend.no_padding()
    token_parts, length_parts, sentence_counts = [], [], []
    for start in range(0, len(documents), batch_documents):
        sentences = []
        for doc in documents[start : start + batch_documents]:
            doc_sentences = split_sentences(doc)
            sentence_counts.append(len(doc_sentences))
            sentences.extend(doc_sentences)
        ids = [e.ids for e in backend.encode_batch_fast(sentences, add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        token_parts.append(np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())))
        length_parts.append(lengths)
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
    sentence_doc = np.repeat(np.arange(len(documents)), sentence_counts)  # (S,)
    keep = lengths > 0  # a sentence of only dropped characters has no tokens
    lengths, sentence_doc = lengths[keep], sentence_doc[keep]
    sent_starts = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=sent_starts[1:])
    doc_starts = np.zeros(len(documents) + 1, np.int64)
    np.cumsum(np.bincount(sentence_doc, minlength=len(documents)), out=doc_starts[1:])
    tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, np.int32)
    return TokenizedCorpus(tokens, sent_starts, doc_starts)


# ----------------------------------------------------------------------------- example creation


def _trim_counts(len_a: int, len_b: int, target: int) -> tuple[int, int]:
    """Tokens to remove from A and B so that len_a + len_b <= target.

    Equal to removing one token at a time from the longer segment (from B on a tie), as BERT does.
    """
    excess = len_a + len_b - target
    if excess <= 0:
        return 0, 0
    gap = len_a - len_b
    if gap > 0:
        first_a, first_b = min(excess, gap), 0
    else:
        first_a, first_b = 0, min(excess, -gap)
    rest = excess - first_a - first_b  # segments are equal now: B, A, B, A, ...
    return first_a + rest // 2, first_b + (rest + 1) // 2


def create_examples(
    corpus: TokenizedCorpus,
    max_seq_len: int,
    short_seq_prob: float,
    nsp_random_prob: float,
    dupe_factor: int,
    seed: int,
) -> np.ndarray:
    """Sentence-pair examples as token ranges: (N, 7) int64 rows of
    (a_start, a_end, b_start, b_end, nsp_label, doc, b_doc), in a seeded random order."""
    rng = random.Random(seed)
    starts = corpus.sent_starts.tolist()
    bounds = corpus.doc_starts.tolist()
    docs = [d for d in range(len(bounds) - 1) if bounds[d + 1] > bounds[d]]  # documents with sentences
    max_tokens = max_seq_len - 3  # room for [CLS], [SEP], [SEP]

    def draw_target() -> int:
        return rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens

    rows = []
    for _ in range(dupe_factor):
        for di, d in enumerate(docs):
            end = bounds[d + 1]
            chunk_start = i = bounds[d]
            chunk_len, target = 0, draw_target()
            while i < end:
                chunk_len += starts[i + 1] - starts[i]
                i += 1
                if i < end and chunk_len < target:
                    continue
                n = i - chunk_start  # sentences in the chunk
                k = 1 if n == 1 else rng.randint(1, n - 1)  # sentences in A
                a0, a1 = starts[chunk_start], starts[chunk_start + k]
                if len(docs) > 1 and (n == 1 or rng.random() < nsp_random_prob):
                    j = rng.randrange(len(docs) - 1)
                    b_doc = docs[j + (j >= di)]  # uniform over the other documents
                    s, b_end = rng.randrange(bounds[b_doc], bounds[b_doc + 1]), bounds[b_doc + 1]
                    e = s + 1
                    while e < b_end and starts[e] - starts[s] < target - (a1 - a0):
                        e += 1
                    b0, b1, label = starts[s], starts[e], 1
                    i = chunk_start + k  # put the unused sentences back
                elif n > 1:
                    b0, b1, label, b_doc = a1, starts[i], 0, d
                else:  # a one-sentence chunk and no other document to pair it with
                    chunk_start, chunk_len, target = i, 0, draw_target()
                    continue
                cut_a, cut_b = _trim_counts(a1 - a0, b1 - b0, target)
                front_a = bin(rng.getrandbits(cut_a)).count("1")  # each cut from the front w.p. 1/2
                front_b = bin(rng.getrandbits(cut_b)).count("1")
                a0, a1 = a0 + front_a, a1 - (cut_a - front_a)
                b0, b1 = b0 + front_b, b1 - (cut_b - front_b)
                rows.append((a0, a1, b0, b1, label, d, b_doc))
                chunk_start, chunk_len, target = i, 0, draw_target()
    examples = np.array(rows, dtype=np.int64).reshape(-1, 7)
    return examples[np.random.default_rng(seed).permutation(len(examples))]


def check_nsp_labels(examples: np.ndarray, corpus: TokenizedCorpus, cfg: DataConfig) -> None:
    """Refuse training examples that teach NSP nothing; warn when their share of random B is off.

    ``examples`` are :func:`create_examples` rows of the training ``corpus``. With ``nsp_random_prob``
    strictly between 0 and 1 both labels must occur; either way a measured share of random B further
    than NSP_TOLERANCE from ``nsp_random_prob`` is reported in one warning line.
    """
    sentences = np.diff(corpus.doc_starts)  # (D,) sentences per training document
    docs = int((sentences > 0).sum())
    single = int((sentences == 1).sum())
    where = f"data.source {cfg.source!r}"
    if len(examples) == 0:
        raise XformerError(
            f"{where}: no BERT examples: the {len(sentences)} training documents hold {int(sentences.sum())} "
            f"sentences in all; NSP needs documents of several sentences, or several documents"
        )
    p, n = cfg.nsp_random_prob, len(examples)
    share = float(examples[:, 4].mean())
    measured = f"NSP labels are {share:.0%} 'random' ({n:,} examples)"
    if 0 < p < 1 and share in (0.0, 1.0):
        if share == 0 and docs < 2:
            cause = (f"the training split has {docs} document{'s' * (docs != 1)} with sentences, so B never comes "
                     f"from another document; use several (data.val_documents={cfg.val_documents} are held out)")
        elif share == 0:
            cause = "too few examples for a random B to be drawn; use a larger corpus"
        elif single == docs:
            cause = ("every document has one sentence, so B never follows A in its own document; use documents "
                     "of several sentences (a text file's documents are separated by blank lines)")
        else:
            cause = (f"every chunk holds a single sentence, so B never follows A in its own document: the "
                     f"sentences fill data.max_seq_len={cfg.max_seq_len}; raise it")
        raise XformerError(f"{where}: {measured}: {cause}")
    if abs(share - p) > NSP_TOLERANCE:
        cause = (f"one-sentence chunks always take a random B ({single} of {docs} training documents have one "
                 f"sentence)" if share > p else "too few examples for the share to settle")
        log(f"warning: {where}: {measured}, not the {p:.0%} of data.nsp_random_prob: {cause}")


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [starts[0], ..., starts[0]+lengths[0]-1, starts[1], ...]."""
    first = np.cumsum(lengths) - lengths  # (N,) position of each range in the output
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))


def write_examples(
    path: Path, corpus: TokenizedCorpus, examples: np.ndarray, doc_ids: np.ndarray,
    tokenizer: PreTrainedTokenizerFast, meta: dict, chunk: int = 1 << 16,
) -> None:
    """Write ``[CLS] A [SEP] B [SEP]`` of every example into the cache arrays in ``path``."""
    path.mkdir(parents=True)
    a0, a1, b0, b1 = (examples[:, c] for c in range(4))
    a_lengths = a1 - a0 + 2  # [CLS] A [SEP]
    lengths = a_lengths + b1 - b0 + 1  # + B [SEP]
    offsets = np.zeros(len(examples) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    dtype = np.uint16 if len(tokenizer) < 65536 else np.int32
    out = np.lib.format.open_memmap(path / "input_ids.npy", mode="w+", dtype=dtype, shape=(int(offsets[-1]),))
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    for lo in range(0, len(examples), chunk):
        sl = slice(lo, lo + chunk)
        begin = offsets[:-1][sl]  # (n,) where each example starts in input_ids
        out[begin] = cls_id
        out[begin + a_lengths[sl] - 1] = sep_id
        out[offsets[1:][sl] - 1] = sep_id
        out[_ranges(begin + 1, a1[sl] - a0[sl])] = corpus.tokens[_ranges(a0[sl], a1[sl] - a0[sl])]
        out[_ranges(begin + a_lengths[sl], b1[sl] - b0[sl])] = corpus.tokens[_ranges(b0[sl], b1[sl] - b0[sl])]
    out.flush()
    del out
    np.save(path / "offsets.npy", offsets)
    np.save(path / "a_lengths.npy", a_lengths.astype(np.int32))
    np.save(path / "nsp_labels.npy", examples[:, 4].astype(np.uint8))
    np.save(path / "doc_ids.npy", doc_ids[examples[:, 5]].astype(np.int32))
    np.save(path / "b_doc_ids.npy", doc_ids[examples[:, 6]].astype(np.int32))
    meta = dict(meta, num_examples=len(examples), num_tokens=int(offsets[-1]), pad_token_id=tokenizer.pad_token_id)
    (path / "meta.json").write_text(json.dumps(meta, indent=2))


# ----------------------------------------------------------------------------- dataset


class PretrainingDataset:
    """Cached BERT examples, memory-mapped; :meth:`batch` pads a set of them into tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.max_seq_len: int = self.meta["max_seq_len"]
        self.pad_token_id: int = self.meta["pad_token_id"]
        self.input_ids = self._load("input_ids")  # (total,) every example, back to back
        self.offsets = self._load("offsets")  # (N+1,)
        self.a_lengths = self._load("a_lengths")  # (N,) length of [CLS] A [SEP]
        self.nsp_labels = self._load("nsp_labels")  # (N,) 1: B is random
        self.doc_ids = self._load("doc_ids")  # (N,) document of A
        self.b_doc_ids = self._load("b_doc_ids")  # (N,) document of B

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.nsp_labels)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Examples ``indices`` padded to the longest (rounded up to a multiple of 8, at most max_seq_len)."""
        idx = np.asarray(indices, dtype=np.int64)  # (B,)
        starts = self.offsets[idx]
        lengths = self.offsets[idx + 1] - starts  # (B,)
        T = min(-(-int(lengths.max()) // 8) * 8, self.max_seq_len)
        pos = np.arange(T)
        real = pos[None, :] < lengths[:, None]  # (B, T)
        input_ids = np.full((len(idx), T), self.pad_token_id, dtype=np.int64)
        input_ids[real] = self.input_ids[(starts[:, None] + pos[None, :])[real]]
        token_type_ids = (pos[None, :] >= self.a_lengths[idx][:, None]) & real  # (B, T) 1 for B [SEP]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids.astype(np.int64)),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "next_sentence_label": torch.from_numpy(self.nsp_labels[idx].astype(np.int64)),  # (B,)
        }


@dataclass
class PretrainingData:
    """Train and validation examples, the tokenizer that made them, and where they are cached."""

    train: PretrainingDataset
    val: PretrainingDataset
    tokenizer: PreTrainedTokenizerFast
    cache_path: Path


EXAMPLE_SETTINGS = {"max_seq_len", "short_seq_prob", "nsp_random_prob", "dupe_factor", "val_documents", "seed"}


def _examples_key(cfg: DataConfig, corpus: str, tokenizer: PreTrainedTokenizerFast) -> str:
    settings = {
        "format": FORMAT_VERSION,
        "corpus": corpus,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        **cfg.model_dump(include=EXAMPLE_SETTINGS),
    }
    return "bert-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def prepare_pretraining_data(cfg: DataConfig, cache_dir: Path | None = None) -> PretrainingData:
    """Read, split, tokenize and turn ``cfg.source`` into cached BERT examples (or load the cache).

    A cache hit only stats the source files and loads the tokenizer.
    """
    if cfg.source is None:
        raise XformerError("data.source is required: Parquet/text/JSON-lines files or globs, or an HF dataset name")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(cfg)
    corpus = corpus_fingerprint(cfg.source, cfg.text_column, cfg.split, cfg.max_documents)
    corpus_key = f"{corpus}-val{cfg.val_documents}-seed{cfg.seed}"  # the tokenizer sees train documents only

    documents = None

    def read() -> tuple[list[str], np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        log(f"reading {cfg.source} ...")
        docs = read_documents(cfg.source, cfg.text_column, cfg.split, cfg.max_documents)
        train_ids, val_ids = holdout_split(len(docs), cfg.val_documents, cfg.seed)
        chars = sum(map(len, docs))
        log(f"read {len(docs)} documents ({chars / 1e6:.1f}M chars) in {time.perf_counter() - t0:.1f}s")
        return docs, train_ids, val_ids

    if cfg.tokenizer.path is None and not tokenizer_cache_path(cfg.tokenizer, root, corpus_key).is_dir():
        documents, train_ids, val_ids = read()
        tokenizer = build_tokenizer(cfg.tokenizer, [documents[i] for i in train_ids], root, corpus_key)
    else:
        tokenizer = build_tokenizer(cfg.tokenizer, None, root, corpus_key)

    path = root / "pretraining" / _examples_key(cfg, corpus, tokenizer)
    if path.is_dir():
        log(f"using cached examples {path}")
    else:
        if documents is None:
            documents, train_ids, val_ids = read()
        meta = {
            "source": cfg.source, "corpus": corpus, "tokenizer": tokenizer_fingerprint(tokenizer),
            "vocab_size": len(tokenizer), **cfg.model_dump(include=EXAMPLE_SETTINGS),
        }
        with publish_dir(path) as work:  # checked before it is published: a bad cache is never written
            for split, ids in (("train", train_ids), ("val", val_ids)):
                t0 = time.perf_counter()
                tokenized = tokenize_documents([documents[i] for i in ids], tokenizer)
                t1 = time.perf_counter()
                sentences, tokens = len(tokenized.sent_starts) - 1, len(tokenized.tokens)
                log(f"{split}: {sentences} sentences, {tokens} tokens in {t1 - t0:.1f}s")
                examples = create_examples(
                    tokenized, cfg.max_seq_len, cfg.short_seq_prob, cfg.nsp_random_prob, cfg.dupe_factor, cfg.seed
                )
                if split == "train":
                    check_nsp_labels(examples, tokenized, cfg)
                write_examples(work / split, tokenized, examples, ids, tokenizer, dict(meta, documents=len(ids)))
                log(f"{split}: {len(examples)} examples in {time.perf_counter() - t1:.1f}s")
        log(f"cached examples in {path}")
    return PretrainingData(PretrainingDataset(path / "train"), PretrainingDataset(path / "val"), tokenizer, path)
