"""BERT's sentence pairs for MLM + NSP (``data.objective: mlm_nsp``): one shard's examples, created,
checked and written, and the dataset that reads them back.

The procedure is the original BERT one (``create_pretraining_data.py``), run per shard: per document,
gather consecutive sentences into a chunk until it reaches a target length; segment A is the first k
sentences, segment B is either the rest of the chunk (label 0) or text from another, random document
(label 1, and the unused sentences are put back); the pair is trimmed to the target. The short-target
draw is made per chunk, and pairs are trimmed to that target. The random document for a "random" B is
drawn from the other documents of the same shard, not from the whole corpus (a shard is
``data.shard_documents`` consecutive records). Before anything is published, the training examples'
NSP labels are checked (:func:`check_nsp_labels`).

Because sentences of a document are consecutive in one flat token array, every A and B is a
contiguous token range, so an example is four integers until it is written out. Each shard holds flat
numpy arrays, memory-mapped at load time::

    input_ids  (total,)  uint16 | int32   [CLS] A [SEP] B [SEP] of every example, back to back
    offsets    (N+1,)    int64            example i is input_ids[offsets[i]:offsets[i+1]]
    a_lengths  (N,)      int32            length of [CLS] A [SEP] (token type 0)
    nsp_labels (N,)      uint8            0: B follows A, 1: B is random (HF convention)
    doc_ids    (N,)      int32            corpus record number of the document A came from
    b_doc_ids  (N,)      int32            corpus record number of the document B came from
"""

from __future__ import annotations

import random
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from xformer.data.configs import DataConfig
from xformer.data.cache import log
from xformer.data.text.shards import ShardContext, ShardedDataset, TokenizedCorpus
from xformer.errors import XformerError

NSP_TOLERANCE = 0.1  # a measured random-B share further than this from data.nsp_random_prob is warned about


def trim_counts(len_a: int, len_b: int, target: int) -> tuple[int, int]:
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
                cut_a, cut_b = trim_counts(a1 - a0, b1 - b0, target)
                front_a = bin(rng.getrandbits(cut_a)).count("1")  # each cut from the front w.p. 1/2
                front_b = bin(rng.getrandbits(cut_b)).count("1")
                a0, a1 = a0 + front_a, a1 - (cut_a - front_a)
                b0, b1 = b0 + front_b, b1 - (cut_b - front_b)
                rows.append((a0, a1, b0, b1, label, d, b_doc))
                chunk_start, chunk_len, target = i, 0, draw_target()
    examples = np.array(rows, dtype=np.int64).reshape(-1, 7)
    return examples[np.random.default_rng(seed).permutation(len(examples))]


def check_nsp_labels(stats: dict, cfg: DataConfig) -> None:
    """Refuse training examples that teach NSP nothing; warn when their share of random B is off.

    ``stats`` are the training shards' counts, summed. With ``nsp_random_prob`` strictly between 0 and 1
    both labels must occur; either way a measured share of random B further than NSP_TOLERANCE from
    ``nsp_random_prob`` is reported in one warning line.
    """
    docs, single = stats["documents_with_sentences"], stats["one_sentence_documents"]
    where = f"data.source {cfg.source!r}"
    if stats["sentences"] == 0:
        raise XformerError(f"{where}: the corpus is empty: its {stats['documents']} training documents hold no text")
    if stats["num_examples"] == 0:
        raise XformerError(
            f"{where}: no BERT examples: the {stats['documents']} training documents hold {stats['sentences']} "
            f"sentences in all; NSP needs documents of several sentences, or several documents"
        )
    p, n = cfg.nsp_random_prob, stats["num_examples"]
    share = stats["random"] / n
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
    cls_id: int, sep_id: int, dtype: str, chunk: int = 1 << 12,
) -> int:
    """Write ``[CLS] A [SEP] B [SEP]`` of every example into the shard arrays in ``path``; the token count."""
    a0, a1, b0, b1 = (examples[:, c] for c in range(4))
    a_lengths = a1 - a0 + 2  # [CLS] A [SEP]
    lengths = a_lengths + b1 - b0 + 1  # + B [SEP]
    offsets = np.zeros(len(examples) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = np.lib.format.open_memmap(path / "input_ids.npy", mode="w+", dtype=dtype, shape=(int(offsets[-1]),))
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
    return int(offsets[-1])


def build_nsp_shard(out: Path, corpus: TokenizedCorpus, doc_ids: np.ndarray, seed: int, ctx: ShardContext) -> dict:
    """A worker's builder for ``objective: mlm_nsp``: one shard's sentence pairs, written to ``out``.
    Returns the shard's counts (what :func:`check_nsp_labels` reads, summed)."""
    cfg = ctx.cfg
    examples = create_examples(corpus, cfg.max_seq_len, cfg.short_seq_prob, cfg.nsp_random_prob, cfg.dupe_factor, seed)
    num_tokens = write_examples(out, corpus, examples, doc_ids, ctx.cls_id, ctx.sep_id, ctx.dtype)
    sentences = np.diff(corpus.doc_starts)  # (D,) sentences per document
    return {
        "num_examples": len(examples), "num_tokens": num_tokens, "random": int(examples[:, 4].sum()),
        "sentences": int(sentences.sum()), "documents_with_sentences": int((sentences > 0).sum()),
        "one_sentence_documents": int((sentences == 1).sum()),
    }


# ----------------------------------------------------------------------------- dataset


class PretrainingDataset(ShardedDataset):
    """Sentence pairs from a split's shards; :meth:`batch` pads a set of them into tensors.

    The tokens stay memory-mapped; per example, 17 bytes are held in memory: where it starts in its
    shard's input_ids, its length, the length of ``[CLS] A [SEP]`` and its NSP label.
    """

    def __init__(self, path: str | Path):
        super().__init__(path)
        offsets = [self.array(name, "offsets") for name in self.meta["shards"]]
        self.token_starts = np.concatenate([o[:-1] for o in offsets] or [np.zeros(0, np.int64)])  # (N,)
        self.lengths = np.concatenate([np.diff(o) for o in offsets] or [np.zeros(0, np.int64)]).astype(np.int32)
        self.a_lengths = self._load("a_lengths", np.int32)  # (N,) length of [CLS] A [SEP]
        self.nsp_labels = self._load("nsp_labels", np.uint8)  # (N,) 1: B is random

    @cached_property
    def doc_ids(self) -> np.ndarray:
        """(N,) corpus record number of the document A came from."""
        return self._load("doc_ids", np.int32)

    @cached_property
    def b_doc_ids(self) -> np.ndarray:
        """(N,) corpus record number of the document B came from."""
        return self._load("b_doc_ids", np.int32)

    def example(self, i: int) -> np.ndarray:
        """The token ids of example ``i``: ``[CLS] A [SEP] B [SEP]``."""
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return np.asarray(self.input_ids[shard][self.token_starts[i] : self.token_starts[i] + self.lengths[i]])

    def seq_len(self, indices: np.ndarray) -> int:
        """The length :meth:`batch` pads examples ``indices`` to: the longest, rounded up to a multiple of 8,
        at most max_seq_len."""
        longest = int(self.lengths[np.asarray(indices, dtype=np.int64)].max())
        return min(-(-longest // 8) * 8, self.max_seq_len)

    def batch(self, indices: np.ndarray, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """Examples ``indices`` padded to :meth:`seq_len` of them (or to ``seq_len``, e.g. that of a larger
        batch they are part of): input_ids, token_type_ids, attention_mask (B, T), next_sentence_label (B,)."""
        idx = np.asarray(indices, dtype=np.int64)  # (B,)
        lengths = self.lengths[idx].astype(np.int64)
        T = self.seq_len(idx) if seq_len is None else seq_len
        pos = np.arange(T)
        real = pos[None, :] < lengths[:, None]  # (B, T)
        input_ids = np.full((len(idx), T), self.pad_token_id, dtype=np.int64)
        for rows, shard, _ in self._by_shard(idx):
            where = self.token_starts[idx[rows], None] + pos[None, :]  # (b, T) positions in the shard
            block = input_ids[rows]
            block[real[rows]] = self.input_ids[shard][where[real[rows]]]
            input_ids[rows] = block
        token_type_ids = (pos[None, :] >= self.a_lengths[idx][:, None]) & real  # (B, T) 1 for B [SEP]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids.astype(np.int64)),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "next_sentence_label": torch.from_numpy(self.nsp_labels[idx].astype(np.int64)),  # (B,)
        }
