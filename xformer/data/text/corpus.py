"""Reading a text corpus: local Parquet / text / JSON-lines files, a catalogue name, or a dataset on the HF hub.

A corpus is a sequence of records: the rows of its Parquet files, the lines of its JSON-lines files and the
blank-line-separated documents of its text files, file after file. A record's text is one document (blank
for a null or whitespace-only value). Every reader streams, so nothing holds a whole file: Parquet in
record batches (reading only the row groups asked for), text and JSON-lines files line by line, the hub in
batches.

- :func:`read_documents`: the non-blank documents as a list, for corpora that fit in memory.
- :func:`corpus_parts` counts each file's records (Parquet from the file metadata, other files in one
  streaming pass) and :func:`read_records` streams any ranges of them, numbered across the corpus: how
  the shards of BERT pretraining data are read in parallel (:mod:`xformer.data.text.shards`). A text or
  JSON-lines file is read from its start up to the last record asked for; Parquet skips to its row groups.
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

from xformer.data.cache import publish_dir
from xformer.data.sources import (  # the private helpers word every reader's errors alike
    CORPUS_SUFFIXES,
    Source,
    _first_line,
    _read_error,
    _unicode_error,
    check_text_type,
    check_text_values,
    file_stats,
    jsonl_records,
    load_hub,
    open_parquet,
    pick_column,
    resolve,
)
from xformer.errors import XformerError

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket), then whitespace,
# then something that starts a sentence: an upper-case letter, a digit or an opening quote/bracket.
SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[A-Z0-9À-ÖØ-Þ\"'“‘(\[])"
)
BATCH_RECORDS = 1024  # records per batch the readers yield
HUB_PART_BATCHES = 100  # batches per Parquet file of a hub corpus's local copy


def resolve_source(source: str | list[str], split: str = "train") -> list[Path] | str:
    """The local corpus files ``source`` names (in order, without duplicates; for a catalogue name, those of
    ``split``), or the HF hub dataset name."""
    src = resolve(source, "data.source", CORPUS_SUFFIXES, split)
    return src.name if src.kind == "hub" else src.files


# ----------------------------------------------------------------------------- readers


def _batched(values: Iterable, size: int) -> Iterator[list]:
    it = iter(values)
    while batch := list(islice(it, size)):
        yield batch


def _parquet_file(path: Path, column: str) -> pq.ParquetFile:
    """``path`` opened, checked to hold a text column ``column``."""
    pf = open_parquet(path)
    schema = pf.schema_arrow
    pick_column(schema.names, column, (), "text_column", str(path))
    check_text_type(schema.field(column).type, column, str(path), "text_column")
    return pf


def _parquet_values(path: Path, column: str, start: int, stop: int | None) -> Iterator[list]:
    """The ``column`` values of rows [start, stop) in batches, reading only the row groups that hold them."""
    pf = _parquet_file(path, column)
    meta = pf.metadata
    stop = meta.num_rows if stop is None else min(stop, meta.num_rows)
    first = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])  # (G+1,)
    groups = [g for g in range(meta.num_row_groups) if first[g] < stop and first[g + 1] > start]
    if not groups:
        return
    row = int(first[groups[0]])
    try:
        for batch in pf.iter_batches(BATCH_RECORDS, row_groups=groups, columns=[column]):
            lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
            row += batch.num_rows
            if lo < hi:
                batch = batch.slice(lo, hi - lo)
                batch.validate(full=True)  # e.g. strings that are not UTF-8, which Parquet readers pass through
                yield batch.column(0).to_pylist()
            if row >= stop:
                return
    except (OSError, pa.ArrowException) as err:
        raise XformerError(f"{path}: corrupt Parquet data ({_first_line(err)})") from None


def _text_documents(path: Path) -> Iterator[str]:
    """The documents of a text file, read line by line: lines of only whitespace separate them."""
    lines: list[str] = []
    offset = 0  # bytes read so far
    try:
        with path.open("rb") as f:
            for raw in f:
                try:
                    line = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
                except UnicodeDecodeError as err:
                    raise _unicode_error(path, err, f" at offset {offset + err.start}") from None
                if "\x00" in line:
                    at = offset + raw.index(0)
                    raise XformerError(f"{path}: not UTF-8 text (binary data: a NUL character at offset {at})")
                offset += len(raw)
                if line.strip(" \t\r\f\v\n"):
                    lines.append(line)
                elif lines:
                    yield "".join(lines)
                    lines = []
    except OSError as err:
        raise _read_error(path, err) from None
    if lines:
        yield "".join(lines)


def _jsonl_values(path: Path, column: str) -> Iterator:
    for lineno, record in jsonl_records(path):
        where = f"{path} line {lineno}"
        pick_column(list(record), column, (), "text_column", where, field_name="key")
        check_text_values([record[column]], column, where, "text_column")
        yield record[column]


def _file_values(path: Path, column: str, start: int = 0, stop: int | None = None) -> Iterator[list]:
    """The texts (str or None) of records [start, stop) of one corpus file, in batches."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_values(path, column, start, stop)
    else:
        values = _jsonl_values(path, column) if suffix in (".jsonl", ".json") else _text_documents(path)
        yield from _batched(islice(values, start, stop), BATCH_RECORDS)


def _hub_batches(src: Source, column: str) -> Iterator[list]:
    """The ``column`` values of a hub split in batches: a streamed ``IterableDataset`` (no length, only what
    is read is downloaded) is read the same way as a downloaded one."""
    ds = load_hub(src)
    where = f"HF dataset {src.name!r}"
    for i, batch in enumerate(ds.iter(batch_size=BATCH_RECORDS)):
        if i == 0:  # a stream may not know its columns before the first batch
            pick_column(list(batch), column, (), "text_column", where)
        check_text_values(batch[column], column, where, "text_column")
        yield batch[column]


def read_documents(
    source: str | list[str],
    text_column: str = "text",
    split: str = "train",
    max_documents: int | None = None,
) -> list[str]:
    """Read the documents of a corpus, dropping empty ones.

    ``source`` is a file, directory, glob (or a list of them) of ``.parquet`` (column
    ``text_column``), ``.txt``/``.text`` (documents separated by blank lines) or ``.jsonl``/``.json``
    (one object per line) files; or a catalogue name or HF hub dataset name, read with ``split``. At most
    ``max_documents`` documents are returned, in file order (only those are read).
    """
    src = resolve(source, "data.source", CORPUS_SUFFIXES, split)
    if src.kind == "hub":
        batches = _hub_batches(src, text_column)
    else:
        batches = (values for path in src.files for values in _file_values(path, text_column))
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
        if path.suffix.lower() == ".parquet":
            rows = _parquet_file(path, text_column).metadata.num_rows
            count = rows if room is None else min(rows, room)
        else:
            count = sum(map(len, _file_values(path, text_column, 0, room)))
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
            for values in _file_values(part.path, text_column, number - first, min(int(inside[-1, 1]), end) - first):
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
    into ``folder/part-NNNNN.parquet`` (published whole, see :func:`~xformer.data.cache.publish_dir`)."""
    if not folder.is_dir():
        src = resolve(source, "data.source", CORPUS_SUFFIXES, split)
        values = (t for batch in _hub_batches(src, text_column) for t in batch)
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
