"""MLM-only examples (``data.objective: mlm``): documents packed into full-length sequences, with no NSP
and no padding, as RoBERTa and later recipes do.

A shard's documents, in corpus order, become one token stream with ``[SEP]`` after every document
(the document boundaries are kept; sentences are not paired). The stream is cut into rows of
``max_seq_len - 1`` tokens, each prefixed with ``[CLS]``, so every row is exactly ``max_seq_len`` tokens
and may span several documents. The tail of a shard's stream too short for a row (fewer than
``max_seq_len - 1`` tokens) is dropped. ``data.short_seq_prob``, ``nsp_random_prob`` and ``dupe_factor``
do not apply (masking is drawn anew every batch). A shard on disk::

    input_ids (N, max_seq_len) uint16 | int32   the rows
    doc_ids   (N,)             int32            corpus record the row's first token after [CLS] comes from
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from xformer.data.configs import DataConfig
from xformer.data.text.shards import ShardContext, ShardedDataset, TokenizedCorpus
from xformer.errors import XformerError


def pack_sequences(
    corpus: TokenizedCorpus, max_seq_len: int, cls_id: int, sep_id: int, dtype: str = "int32"
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (N, max_seq_len) of ``[CLS]`` + the stream of document tokens with ``[SEP]`` after each
    document, and (N,) the document (index into ``corpus``) of each row's first stream token."""
    doc_begin = corpus.sent_starts[corpus.doc_starts[:-1]]  # (D,) token range of each document
    doc_end = corpus.sent_starts[corpus.doc_starts[1:]]
    has_tokens = np.flatnonzero(doc_end > doc_begin)  # (D',) documents that enter the stream
    stream = np.insert(corpus.tokens, doc_end[has_tokens], sep_id)  # (total + D',)
    width = max_seq_len - 1
    n = len(stream) // width  # the tail that fills no row is dropped
    rows = np.empty((n, max_seq_len), dtype)
    rows[:, 0] = cls_id
    rows[:, 1:] = stream[: n * width].reshape(n, width)
    stream_begin = doc_begin[has_tokens] + np.arange(len(has_tokens))  # (D',) each one's start in the stream
    first_doc = np.searchsorted(stream_begin, np.arange(n) * width, side="right") - 1  # (N,)
    return rows, has_tokens[first_doc]


def build_packed_shard(
    out: Path, corpus: TokenizedCorpus, doc_ids: np.ndarray, seed: int, ctx: ShardContext
) -> dict:
    """A worker's builder for ``objective: mlm``: pack one shard into ``out`` (deterministic: ``seed`` is not
    used). Returns the shard's counts."""
    rows, first_doc = pack_sequences(corpus, ctx.cfg.max_seq_len, ctx.cls_id, ctx.sep_id, ctx.dtype)
    np.save(out / "input_ids.npy", rows)
    np.save(out / "doc_ids.npy", doc_ids[first_doc].astype(np.int32))
    return {"num_examples": len(rows), "num_tokens": rows.size}


def check_packed(stats: dict, cfg: DataConfig) -> None:
    """Refuse a training split with no packed sequence (``stats`` summed over its shards)."""
    if stats["num_examples"] == 0:
        raise XformerError(
            f"data.source {cfg.source!r}: no packed sequences: the {stats['documents']} training documents hold "
            f"{stats['input_tokens']} tokens, fewer than data.max_seq_len={cfg.max_seq_len} per shard; use a larger "
            f"corpus, a smaller data.max_seq_len or a larger data.shard_documents"
        )


class PackedDataset(ShardedDataset):
    """Packed MLM sequences from a split's shards: every row is ``max_seq_len`` real tokens, so a batch
    has no padding, an all-ones attention mask, all-zero token types and no NSP label."""

    @cached_property
    def doc_ids(self) -> np.ndarray:
        """(N,) the corpus record each row's first token after [CLS] comes from."""
        return self._load("doc_ids", np.int32)

    def seq_len(self, indices: np.ndarray) -> int:
        """The length of every batch: max_seq_len."""
        return self.max_seq_len

    def batch(self, indices: np.ndarray, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """Rows ``indices``: input_ids, token_type_ids (zeros) and attention_mask (ones), each (B, max_seq_len);
        ``seq_len``, the length shared with a larger batch, can only be max_seq_len."""
        if seq_len not in (None, self.max_seq_len):
            raise ValueError(f"packed rows are {self.max_seq_len} tokens long, not {seq_len}")
        idx = np.asarray(indices, dtype=np.int64)  # (B,)
        input_ids = np.empty((len(idx), self.max_seq_len), np.int64)
        for rows, s, local in self._by_shard(idx):
            input_ids[rows] = self.input_ids[s][local]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.zeros(input_ids.shape, dtype=torch.int64),
            "attention_mask": torch.ones(input_ids.shape, dtype=torch.int64),
        }
