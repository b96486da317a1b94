"""Plain text files: documents separated by blank lines, read line by line."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from xformer.data.readers.base import FileReader, read_error, row_batches, unicode_error
from xformer.errors import XformerError


class TextReader(FileReader):
    """A text file as one column of documents: lines of only whitespace separate them. A text file names no
    columns, so its one column (listed as ``text``) answers to whatever name a caller reads it by."""

    named_columns = False

    @property
    def columns(self) -> list[str]:
        return ["text"]

    def pick(self, configured: str | None, candidates: Iterable[str], option: str, text: bool = False) -> str:
        return "text"

    def documents(self) -> Iterator[str]:
        """The documents, read line by line (a leading BOM is dropped); not UTF-8 or binary: an error."""
        lines: list[str] = []
        offset = 0  # bytes read so far
        try:
            with self.path.open("rb") as f:
                for raw in f:
                    try:
                        line = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
                    except UnicodeDecodeError as err:
                        raise unicode_error(self.path, err, f" at offset {offset + err.start}") from None
                    if "\x00" in line:
                        at = offset + raw.index(0)
                        raise XformerError(f"{self.path}: not UTF-8 text (binary data: a NUL character at offset {at})")
                    offset += len(raw)
                    if line.strip(" \t\r\f\v\n"):
                        lines.append(line)
                    elif lines:
                        yield "".join(lines)
                        lines = []
        except OSError as err:
            raise read_error(self.path, err) from None
        if lines:
            yield "".join(lines)

    def batches(
        self, columns: Sequence[str], start: int = 0, stop: int | None = None, text_column: str | None = None
    ) -> Iterator[dict[str, list]]:
        for batch in row_batches(([d] for d in self.documents()), ["text"], start, stop):
            yield {c: batch["text"] for c in columns}
