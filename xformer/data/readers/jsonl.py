"""JSON-lines files: one object per line, its keys the columns (the first object's keys are listed)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from itertools import islice

from xformer.data.readers.base import FileReader, read_error, row_batches, unicode_error
from xformer.data.readers.columns import check_text_values, pick_column
from xformer.errors import XformerError


class JsonLinesReader(FileReader):
    """A JSON-lines file read as a stream; blank lines are skipped, a record missing a key asked for is an
    error naming its line."""

    def records(self) -> Iterator[tuple[int, dict]]:
        """(line number, object) for every non-blank line."""
        try:
            with self.path.open("rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                    except UnicodeDecodeError as err:
                        raise unicode_error(self.path, err, f" in line {lineno}") from None
                    if line.strip():
                        yield lineno, self._parse(line, lineno)
        except OSError as err:
            raise read_error(self.path, err) from None

    def _parse(self, line: str, lineno: int) -> dict:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise XformerError(f"{self.path} line {lineno}: not a JSON object per line ({err.msg})") from None
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise XformerError(f"{self.path} line {lineno}: not a JSON object per line (a {kind})")
        return record

    @cached_property
    def first(self) -> tuple[int, dict] | None:
        """The first record and its line number; None for a file of no records."""
        return next(self.records(), None)

    @property
    def columns(self) -> list[str]:
        return [] if self.first is None else list(self.first[1])

    def pick(self, configured: str | None, candidates: Iterable[str], option: str, text: bool = False) -> str:
        """As :meth:`Reader.pick`, by the first record's keys; a file of no records has any column asked for."""
        if self.first is None:
            return configured if configured is not None else next(iter(candidates), option)
        where = f"{self.path} line {self.first[0]}"
        return pick_column(list(self.first[1]), configured, candidates, option, where, field_name="key")

    def count(self, stop: int | None = None, text_column: str | None = None) -> int:
        if text_column is not None:
            return super().count(stop, text_column)
        return sum(1 for _ in islice(self.records(), stop))

    def batches(
        self, columns: Sequence[str], start: int = 0, stop: int | None = None, text_column: str | None = None
    ) -> Iterator[dict[str, list]]:
        yield from row_batches(self._rows(columns, text_column), columns, start, stop)

    def _rows(self, columns: Sequence[str], text_column: str | None) -> Iterator[list]:
        for lineno, record in self.records():
            missing = next((c for c in columns if c not in record), None)
            if missing is not None:
                raise XformerError(f"{self.path} line {lineno}: no key {missing!r} (keys: {', '.join(record)})")
            if text_column is not None:
                check_text_values([record[text_column]], text_column, f"{self.path} line {lineno}")
            yield [record[c] for c in columns]
