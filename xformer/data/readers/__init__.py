"""One reader per data format, chosen by one registry.

Every format is read through the same small interface (:class:`~xformer.data.readers.base.Reader`:
columns, row count, batches of columns), so the code above (corpora, labelled texts, images, captions,
``xformer eval``) never asks which format it reads. A local file's reader is chosen by its suffix in
:data:`READERS`; an image folder and an HF hub split have their own readers
(:class:`~xformer.data.readers.folder.FolderReader`, :class:`~xformer.data.readers.hub.HubReader`).
A new format is one reader class and one line in :data:`READERS`; the suffix lists below follow from it.
"""

from __future__ import annotations

from pathlib import Path

from xformer.data.readers.base import FileReader, Reader
from xformer.data.readers.csv import CsvReader, TsvReader
from xformer.data.readers.folder import FolderReader
from xformer.data.readers.hub import HubReader, load_hub
from xformer.data.readers.jsonl import JsonLinesReader
from xformer.data.readers.parquet import ParquetReader
from xformer.data.readers.text import TextReader
from xformer.errors import XformerError

READERS: dict[str, type[FileReader]] = {  # file suffix -> its reader
    ".parquet": ParquetReader,
    ".txt": TextReader,
    ".text": TextReader,
    ".jsonl": JsonLinesReader,
    ".json": JsonLinesReader,
    ".csv": CsvReader,
    ".tsv": TsvReader,
}
DATA_SUFFIXES = tuple(READERS)  # every format: what a corpus reads
TABLE_SUFFIXES = tuple(s for s, r in READERS.items() if r.named_columns)  # named columns: labelled texts
IMAGE_TABLE_SUFFIXES = tuple(s for s, r in READERS.items() if r.holds_images)  # encoded images: image sets
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # in an image folder


def reader_for(path: Path) -> FileReader:
    """The reader of a local data file, by its suffix."""
    reader = READERS.get(Path(path).suffix.lower())
    if reader is None:
        raise XformerError(f"{path}: unsupported file type {Path(path).suffix!r} (supported: {', '.join(READERS)})")
    return reader(Path(path))


__all__ = [
    "DATA_SUFFIXES",
    "IMAGE_SUFFIXES",
    "IMAGE_TABLE_SUFFIXES",
    "READERS",
    "TABLE_SUFFIXES",
    "FileReader",
    "FolderReader",
    "HubReader",
    "Reader",
    "load_hub",
    "reader_for",
]
