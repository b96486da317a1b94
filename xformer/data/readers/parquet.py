"""Parquet files: columns and row counts from the footer, rows read only from the row groups asked for."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xformer.data.readers.base import BATCH_ROWS, FileReader, first_line, read_error
from xformer.data.readers.columns import check_text_type
from xformer.errors import XformerError


def is_image_type(dtype: pa.DataType) -> bool:
    """An Arrow type of encoded images: HF ``Image`` structs ``{bytes, path}``, or raw bytes."""
    if pa.types.is_struct(dtype):
        return dtype.get_field_index("bytes") >= 0
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)


class ParquetReader(FileReader):
    """A Parquet file; corrupt data (and strings that are not UTF-8) is an error naming the file."""

    holds_images = True

    @cached_property
    def file(self) -> pq.ParquetFile:
        """The file opened: an error naming it if it is not Parquet or cannot be read."""
        try:
            return pq.ParquetFile(self.path)
        except OSError as err:
            if err.errno is not None:  # the OS refused: missing, no permission
                raise read_error(self.path, err) from None
            raise XformerError(f"{self.path}: not a Parquet file ({first_line(err)})") from None
        except pa.ArrowException as err:
            raise XformerError(f"{self.path}: not a Parquet file ({first_line(err)})") from None

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema, with its metadata."""
        return self.file.schema_arrow

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    @property
    def image_columns(self) -> set[str]:
        return {f.name for f in self.schema if is_image_type(f.type)}

    def pick(self, configured: str | None, candidates: Iterable[str], option: str, text: bool = False) -> str:
        column = super().pick(configured, candidates, option)
        if text:
            check_text_type(self.schema.field(column).type, column, self.where, option)
        return column

    def count(self, stop: int | None = None, text_column: str | None = None) -> int:
        rows = self.file.metadata.num_rows
        return rows if stop is None else min(rows, stop)

    def batches(
        self, columns: Sequence[str], start: int = 0, stop: int | None = None, text_column: str | None = None
    ) -> Iterator[dict[str, list]]:
        if text_column is not None:
            check_text_type(self.schema.field(text_column).type, text_column, self.where)
        names = list(dict.fromkeys(columns))
        meta = self.file.metadata
        stop = meta.num_rows if stop is None else min(stop, meta.num_rows)
        first = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])  # (G+1,)
        groups = [g for g in range(meta.num_row_groups) if first[g] < stop and first[g + 1] > start]
        if not groups:
            return
        row = int(first[groups[0]])
        try:
            for batch in self.file.iter_batches(BATCH_ROWS, row_groups=groups, columns=names):
                lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
                row += batch.num_rows
                if lo < hi:
                    batch = batch.slice(lo, hi - lo)
                    batch.validate(full=True)  # e.g. strings that are not UTF-8, which Parquet readers pass through
                    yield {c: batch.column(c).to_pylist() for c in names}
                if row >= stop:
                    return
        except (OSError, pa.ArrowException) as err:
            raise XformerError(f"{self.path}: corrupt Parquet data ({first_line(err)})") from None

    def class_names(self, column: str) -> list[str] | None:
        """ClassLabel names of ``column`` from the ``huggingface`` metadata that datasets writes, if any."""
        raw = (self.schema.metadata or {}).get(b"huggingface")
        if raw is None:
            return None
        try:
            info = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        feature = info
        for key in ("info", "features", column):  # metadata written by other tools may be shaped otherwise
            feature = feature.get(key) if isinstance(feature, dict) else None
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
            return [str(n) for n in feature["names"]]
        return None
