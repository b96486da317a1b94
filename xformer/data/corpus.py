"""Reading a text corpus: local Parquet / text / JSON-lines files, or a dataset on the HF hub.

A corpus is a list of documents (strings). Inside a document every line is a paragraph or a
section title; :func:`split_sentences` cuts the paragraphs into sentences for BERT's example
creation. :func:`corpus_fingerprint` names a corpus for cache keys from file stats alone, so a
cache hit never has to read the text.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from xformer.data.sources import (
    CORPUS_SUFFIXES,
    Source,
    check_text_type,
    check_text_values,
    file_stats,
    jsonl_records,
    load_hub,
    parquet_batches,
    parquet_schema,
    pick_column,
    read_text,
    resolve,
)
from xformer.errors import XformerError

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket), then whitespace,
# then something that starts a sentence: an upper-case letter, a digit or an opening quote/bracket.
SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[A-Z0-9À-ÖØ-Þ\"'“‘(\[])"
)


def resolve_source(source: str | list[str]) -> list[Path] | str:
    """The local corpus files ``source`` names (in order, without duplicates), or the HF hub dataset name."""
    src = resolve(source, "data.source", CORPUS_SUFFIXES)
    return src.name if src.kind == "hub" else src.files


# ----------------------------------------------------------------------------- readers


def _read_parquet(path: Path, column: str, limit: int | None) -> list[str]:
    schema = parquet_schema(path)
    pick_column(schema.names, column, (), "text_column", str(path))
    check_text_type(schema.field(column).type, column, str(path), "text_column")
    texts: list[str] = []
    for batch in parquet_batches(path, [column]):
        texts.extend(t for t in batch.column(0).to_pylist() if t is not None and t.strip())
        if limit is not None and len(texts) >= limit:
            break
    return texts


def _read_text(path: Path) -> list[str]:
    """Documents are separated by one or more blank lines."""
    return [d for d in re.split(r"\n[ \t\r\f\v]*\n", read_text(path)) if d.strip()]


def _read_jsonl(path: Path, column: str, limit: int | None) -> list[str]:
    texts: list[str] = []
    for lineno, record in jsonl_records(path):
        where = f"{path} line {lineno}"
        pick_column(list(record), column, (), "text_column", where, field_name="key")
        check_text_values([record[column]], column, where, "text_column")
        text = record[column]
        if text is not None and text.strip():
            texts.append(text)
            if limit is not None and len(texts) >= limit:
                break
    return texts


def _read_hub(src: Source, column: str) -> list[str]:
    ds = load_hub(src)
    where = f"HF dataset {src.name!r}"
    pick_column(ds.column_names, column, (), "text_column", where)
    texts = list(ds[column])
    check_text_values(texts, column, where, "text_column")
    return [t for t in texts if t is not None and t.strip()]


def read_documents(
    source: str | list[str],
    text_column: str = "text",
    split: str = "train",
    max_documents: int | None = None,
) -> list[str]:
    """Read the documents of a corpus, dropping empty ones.

    ``source`` is a file, directory, glob (or a list of them) of ``.parquet`` (column
    ``text_column``), ``.txt``/``.text`` (documents separated by blank lines) or ``.jsonl``/``.json``
    (one object per line) files; or an HF hub dataset name, loaded with ``split``. At most
    ``max_documents`` documents are returned, in file order.
    """
    src = resolve(source, "data.source", CORPUS_SUFFIXES, split)
    if src.kind == "hub":
        docs = _read_hub(src, text_column)
    else:
        docs = []
        for path in src.files:
            limit = None if max_documents is None else max_documents - len(docs)
            suffix = path.suffix.lower()
            if suffix == ".parquet":
                docs.extend(_read_parquet(path, text_column, limit))
            elif suffix in (".jsonl", ".json"):
                docs.extend(_read_jsonl(path, text_column, limit))
            else:
                docs.extend(_read_text(path))
            if max_documents is not None and len(docs) >= max_documents:
                break
    docs = [d.strip() for d in docs[:max_documents]]
    if not docs:
        raise XformerError(f"data.source {source!r}: the corpus is empty (no non-blank documents)")
    return docs


def corpus_fingerprint(
    source: str | list[str], text_column: str = "text", split: str = "train", max_documents: int | None = None
) -> str:
    """A short hash naming the corpus for cache keys: file paths, sizes and mtimes (or the hub name)."""
    resolved = resolve_source(source)
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
