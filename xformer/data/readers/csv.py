"""CSV and TSV files (a header row names the columns), streamed with ``pyarrow.csv``.

Column types are inferred (a label column of digits is read as integers), except that a text column is
always read as strings, so a column of numbers can be a text. TSV is read without quoting: GLUE's TSV
files hold unbalanced quotes (``"a stray quote`` opening a field), which a quoting reader would run on to
the next quote, swallowing rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property

import pyarrow as pa
import pyarrow.csv as pacsv

from xformer.data.readers.base import BATCH_ROWS, FileReader, first_line, read_error
from xformer.errors import XformerError

BLOCK_BYTES = 1 << 20  # bytes pyarrow reads (and infers types from) at a time


class CsvReader(FileReader):
    """A comma-separated file with a header row; fields may be quoted with ``"``."""

    delimiter = ","
    quoting = True
    format = "CSV"

    def open(self, columns: Sequence[str] | None = None, text_column: str | None = None) -> pacsv.CSVStreamingReader:
        """A streaming reader of ``columns`` (all when None), ``text_column`` as strings."""
        parse = pacsv.ParseOptions(delimiter=self.delimiter, quote_char='"' if self.quoting else False)
        convert = pacsv.ConvertOptions(
            include_columns=list(columns) if columns is not None else None,
            column_types={text_column: pa.string()} if text_column is not None else None,
        )
        try:
            return pacsv.open_csv(self.path, pacsv.ReadOptions(block_size=BLOCK_BYTES), parse, convert)
        except OSError as err:
            if err.errno is not None:  # the OS refused: missing, no permission
                raise read_error(self.path, err) from None
            raise self.malformed(err) from None
        except pa.ArrowException as err:
            raise self.malformed(err) from None

    def malformed(self, err: Exception) -> XformerError:
        """The one-line error for a file pyarrow cannot read as this format."""
        return XformerError(f"{self.path}: not a readable {self.format} file ({first_line(err)})")

    @cached_property
    def columns(self) -> list[str]:
        return self.open().schema.names

    def batches(
        self, columns: Sequence[str], start: int = 0, stop: int | None = None, text_column: str | None = None
    ) -> Iterator[dict[str, list]]:
        names = list(dict.fromkeys(columns))
        reader = self.open(names, text_column)
        row = 0  # number of the next batch's first row
        while stop is None or row < stop:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as err:
                raise self.malformed(err) from None
            lo, hi = max(start - row, 0), batch.num_rows if stop is None else min(stop - row, batch.num_rows)
            row += batch.num_rows
            for at in range(lo, hi, BATCH_ROWS):
                part = batch.slice(at, min(BATCH_ROWS, hi - at))
                yield {c: part.column(c).to_pylist() for c in names}


class TsvReader(CsvReader):
    """A tab-separated file with a header row; quotes are ordinary characters (see the module doc)."""

    delimiter = "\t"
    quoting = False
    format = "TSV"
