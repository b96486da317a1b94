"""Reading a text corpus: local data files of any format :mod:`xformer.data.readers` reads (Parquet, JSON
lines, CSV / TSV, plain text), a catalogue name, or a dataset on the HF hub.

A corpus is a sequence of records: the rows of its tables (Parquet, JSON-lines, CSV and TSV files: column
``data.text_column``) and the blank-line-separated documents of its text files, file after file. A
record's text is one document (blank for a null or whitespace-only value). Every reader streams, so
nothing holds a whole file: Parquet reads only the row groups asked for, the other files are read from
their start, the hub in batches.

- :func:`read_documents`: the non-blank documents as a list, for corpora that fit in memory.
- :func:`corpus_parts` counts each file's records (Parquet from the file metadata, other files in one
  streaming pass that checks their text) and :func:`read_records` streams any ranges of them, numbered
  across the corpus: how the shards of BERT pretraining data are read in parallel
  (:mod:`xformer.data.text.shards`). A file other than Parquet is read from its start up to the last
  record asked for; Parquet skips to its row groups.
- :func:`hub_corpus_files`: a hub corpus copied once to local Parquet, to be read like files.

Inside a document every line is a paragraph or a section title; :func:`split_sentences` cuts the
paragraphs into sentences for BERT's example creation. :func:`corpus_fingerprint` names a corpus for cache
keys from file stats alone, so a cache hit never has to read the text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xformer.data.cache import open_entry, publish_dir
from xformer.data.readers import DATA_SUFFIXES, Reader, reader_for
from xformer.data.sources import file_stats, open_readers, resolve
from xformer.errors import XformerError

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket), then whitespace,
# then something that starts a sentence: an upper-case letter, a digit or an opening quote/bracket.
SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[A-Z0-9À-ÖØ-Þ\"'“‘(\[])"
)
BATCH_RECORDS = 1024  # records per row group of a hub corpus's local copy
HUB_PART_BATCHES = 100  # batches per Parquet file of a hub corpus's local copy


def resolve_source(source: str | list[str], split: str = "train") -> list[Path] | str:
    """The local corpus files ``source`` names (in order, without duplicates; for a catalogue name, those of
    ``split``), or the HF hub dataset name."""
    src = resolve(source, "data.source", DATA_SUFFIXES, split)
    return src.name if src.kind == "hub" else src.files


# ----------------------------------------------------------------------------- reading


def _batched(values: Iterable, size: int) -> Iterator[list]:
    it = iter(values)
    while batch := list(islice(it, size)):
        yield batch


def _texts(reader: Reader, column: str, start: int = 0, stop: int | None = None) -> Iterator[list]:
    """The texts (str or None) of records [start, stop) of one corpus file or hub split, in batches."""
    column = reader.pick(column, (), "text_column", text=True)
    for batch in reader.batches([column], start, stop, text_column=column):
        yield batch[column]


def read_documents(
    source: str | list[str],
    text_column: str = "text",
    split: str = "train",
    max_documents: int | None = None,
) -> list[str]:
    """Read the documents of a corpus, dropping empty ones.

    ``source`` is a file, directory, glob (or a list of them) of ``.parquet``, ``.jsonl``/``.json`` (one
    object per line), ``.csv``/``.tsv`` (column ``text_column`` of each) or ``.txt``/``.text`` (documents
    separated by blank lines) files; or a catalogue name or HF hub dataset name, read with ``split``. At most
    ``max_documents`` documents are returned, in file order (only those are read).
    """
    src = resolve(source, "data.source", DATA_SUFFIXES, split)
    batches = (values for reader in open_readers(src) for values in _texts(reader, text_column))
    texts = (t for values in batches for t in values if t is not None and t.strip())
    docs = [d.strip() for d in islice(texts, max_documents)]
    if not docs:
        raise XformerError(f"data.source {source!r}: the corpus is empty (no non-blank documents)")
    return docs


# ----------------------------------------------------------------------------- records by number


@dataclass(frozen=True)
class CorpusPart:
    """One file of a corpus and how many of its records (its first ones) the corpus uses."""

    path: Path
    records: int


def corpus_parts(
    files: Sequence[Path], text_column: str = "text", max_documents: int | None = None
) -> list[CorpusPart]:
    """The record count of each file (the first ``max_documents`` records of the corpus in all, blank ones
    included): Parquet row counts from the file metadata, text and JSON-lines files counted in one
    streaming pass."""
    parts: list[CorpusPart] = []
    total = 0
    for path in files:
        room = None if max_documents is None else max_documents - total
        if room == 0:
            break
        reader = reader_for(path)
        count = reader.count(room, reader.pick(text_column, (), "text_column", text=True))
        parts.append(CorpusPart(path, count))
        total += count
    if total == 0:
        raise XformerError(f"data.source {', '.join(map(str, files))}: the corpus is empty (no records)")
    return parts


def read_records(
    parts: Sequence[CorpusPart], ranges: Sequence[tuple[int, int]], text_column: str = "text",
    skip: Sequence[int] = (),
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """The records in ``ranges`` (``[start, stop)`` record numbers across ``parts``, sorted, disjoint), less
    those numbered in ``skip``, in order, as batches of (record numbers (n,) int64, stripped texts); a blank
    record's text is ``''``. Each file is read once, from the first record asked for to the last."""
    spans = np.asarray(ranges, np.int64).reshape(-1, 2)  # (R, 2)
    skipped = np.asarray(skip, np.int64)
    first = 0  # number of the part's first record
    for part in parts:
        end = first + part.records
        inside = spans[(spans[:, 1] > first) & (spans[:, 0] < end)]
        if len(inside):
            number = max(int(inside[0, 0]), first)
            reader, stop = reader_for(part.path), min(int(inside[-1, 1]), end) - first
            for values in _texts(reader, text_column, number - first, stop):
                ids = number + np.arange(len(values))  # (n,)
                number += len(values)
                span = np.maximum(np.searchsorted(spans[:, 0], ids, side="right") - 1, 0)
                keep = (spans[span, 0] <= ids) & (ids < spans[span, 1]) & ~np.isin(ids, skipped)
                yield ids[keep], [(values[i] or "").strip() for i in np.flatnonzero(keep)]
        first = end


def hub_corpus_files(
    source: str, text_column: str, split: str, max_documents: int | None, folder: Path
) -> list[Path]:
    """The local copy of a hub corpus: its ``text_column`` (the first ``max_documents`` rows) streamed once
    into ``folder/part-NNNNN.parquet`` (published whole, see :func:`~xformer.data.cache.publish_dir`; a copy
    whose files are not as published, e.g. a part deleted, is copied again)."""
    if not open_entry(folder):
        src = resolve(source, "data.source", DATA_SUFFIXES, split)
        values = (t for reader in open_readers(src) for batch in _texts(reader, text_column) for t in batch)
        schema = pa.schema([(text_column, pa.string())])
        with publish_dir(folder) as work:
            writer = None
            try:
                for k, batch in enumerate(_batched(islice(values, max_documents), BATCH_RECORDS)):
                    if k % HUB_PART_BATCHES == 0:
                        if writer is not None:
                            writer.close()
                        writer = pq.ParquetWriter(work / f"part-{k // HUB_PART_BATCHES:05d}.parquet", schema)
                    writer.write_table(pa.table({text_column: pa.array(batch, pa.string())}))  # a row group
            finally:
                if writer is not None:
                    writer.close()
    return sorted(folder.glob("part-*.parquet"))


def corpus_fingerprint(
    source: str | list[str], text_column: str = "text", split: str = "train", max_documents: int | None = None
) -> str:
    """A short hash naming the corpus for cache keys: file paths, sizes and mtimes (or the hub name)."""
    resolved = resolve_source(source, split)
    identity = ["hub", resolved] if isinstance(resolved, str) else file_stats(resolved)
    payload = json.dumps([identity, text_column, split, max_documents])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def split_sentences(document: str) -> list[str]:
    """Split a document into sentences: each line is a paragraph or title, cut at sentence ends."""
    sentences: list[str] = []
    for line in document.splitlines():
        line = line.strip()
        if line:
            sentences.extend(s for s in SENTENCE_BREAK.split(line) if s)
    return sentences
