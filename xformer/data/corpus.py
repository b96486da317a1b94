"""Reading a text corpus: local Parquet / text / JSON-lines files, or a dataset on the HF hub.

A corpus is a list of documents (strings). Inside a document every line is a paragraph or a
section title; :func:`split_sentences` cuts the paragraphs into sentences for BERT's example
creation. :func:`corpus_fingerprint` names a corpus for cache keys from file stats alone, so a
cache hit never has to read the text.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from pathlib import Path

import pyarrow.parquet as pq

from xformer.errors import XformerError

SUPPORTED_SUFFIXES = (".parquet", ".txt", ".text", ".jsonl", ".json")
GLOB_CHARS = "*?["
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "wikitext" or "owner/name"

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket), then whitespace,
# then something that starts a sentence: an upper-case letter, a digit or an opening quote/bracket.
SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[A-Z0-9À-ÖØ-Þ\"'“‘(\[])"
)


def _is_hub_name(entry: str) -> bool:
    return HUB_NAME.match(entry) is not None and Path(entry).suffix.lower() not in SUPPORTED_SUFFIXES


def _resolve_entry(entry: str) -> list[Path]:
    """The files one source entry names: a file, a directory (its supported files) or a glob."""
    path = Path(entry).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        if not files:
            raise XformerError(f"data.source {entry!r}: directory has no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return files
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise XformerError(
                f"data.source {entry!r}: unsupported file type {path.suffix!r} "
                f"(supported: {', '.join(SUPPORTED_SUFFIXES)})"
            )
        return [path]
    if any(c in entry for c in GLOB_CHARS):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES]
        if not files:
            raise XformerError(f"data.source {entry!r}: the pattern matches no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return files
    raise XformerError(f"data.source {entry!r}: no such file or directory")


def resolve_source(source: str | list[str]) -> list[Path] | str:
    """The local files ``source`` names (in order, without duplicates), or the HF hub dataset name."""
    entries = [source] if isinstance(source, str) else list(source)
    if not entries:
        raise XformerError("data.source is an empty list")
    if isinstance(source, str) and not Path(source).expanduser().exists() and _is_hub_name(source):
        return source
    files: list[Path] = []
    for entry in entries:
        files.extend(p for p in _resolve_entry(str(entry)) if p not in files)
    return files


# ----------------------------------------------------------------------------- readers


def _read_parquet(path: Path, column: str, limit: int | None) -> list[str]:
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if column not in names:
        raise XformerError(f"{path}: no column {column!r} (columns: {', '.join(names)}); set data.text_column")
    texts: list[str] = []
    for batch in pf.iter_batches(batch_size=1024, columns=[column]):
        texts.extend(t for t in batch.column(0).to_pylist() if isinstance(t, str) and t.strip())
        if limit is not None and len(texts) >= limit:
            break
    return texts


def _read_text(path: Path) -> list[str]:
    """Documents are separated by one or more blank lines."""
    text = path.read_text(encoding="utf-8")
    return [d for d in re.split(r"\n[ \t\r\f\v]*\n", text) if d.strip()]


def _read_jsonl(path: Path, column: str, limit: int | None) -> list[str]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise XformerError(f"{path} line {lineno}: not a JSON object per line ({err.msg})") from None
            if not isinstance(record, dict) or column not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise XformerError(f"{path} line {lineno}: no key {column!r} (keys: {keys}); set data.text_column")
            text = record[column]
            if isinstance(text, str) and text.strip():
                texts.append(text)
                if limit is not None and len(texts) >= limit:
                    break
    return texts


def _read_hub(name: str, column: str, split: str) -> list[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # no network, no such dataset, no such split: all the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XformerError(
            f"data.source {name!r}: not a local path, and the dataset could not be loaded from the HF hub "
            f"({reason[:200]}); download it where the hub is reachable, e.g. "
            f"datasets.load_dataset({name!r}, split={split!r}).to_parquet('{name.replace('/', '_')}.parquet'), "
            f"and set data.source to the local Parquet file(s)"
        ) from None
    if column not in ds.column_names:
        raise XformerError(
            f"HF dataset {name!r}: no column {column!r} (columns: {', '.join(ds.column_names)}); set data.text_column"
        )
    return list(ds[column])


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
    resolved = resolve_source(source)
    if isinstance(resolved, str):
        docs = [d for d in _read_hub(resolved, text_column, split) if isinstance(d, str) and d.strip()]
    else:
        docs = []
        for path in resolved:
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
    if isinstance(resolved, str):
        identity = ["hub", resolved]
    else:
        identity = []
        for path in resolved:
            stat = path.stat()
            identity.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
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
