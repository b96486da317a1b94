"""What every reader is: a table of rows read in batches of columns, and the one-line errors they share.

A reader stands for one data file, one image folder or one HF hub split. It tells its column names (and
which hold encoded images), picks a column by config key, counts its rows and yields any range of rows as
batches, each a ``{column: list of values}``. Everything above the readers (corpora, labelled texts,
images, captions, ``xformer eval``) reads through this interface only, so a new format is one reader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

from xformer.data.readers.columns import pick_column
from xformer.errors import XformerError

BATCH_ROWS = 1024  # rows per batch the readers yield


class Reader(ABC):
    """A table of rows. ``where`` names it in messages (a path, or the hub dataset and split)."""

    where: str
    named_columns = True  # False: the format has one unnamed column (plain text)
    holds_images = False  # True: a column can hold encoded images (bytes)

    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """The column names, in file order."""

    @property
    def image_columns(self) -> set[str]:
        """The columns that hold encoded images (by type, not by name)."""
        return set()

    @property
    @abstractmethod
    def identity(self) -> list:
        """What names the data for cache keys without reading it: file stats, or the hub name and split."""

    def pick(self, configured: str | None, candidates: Iterable[str], option: str, text: bool = False) -> str:
        """The column set by ``data.<option>`` (an error if absent), else the first of ``candidates`` it has.
        With ``text`` the column must hold text: checked here where the format types its columns."""
        return pick_column(self.columns, configured, candidates, option, self.where)

    def count(self, stop: int | None = None, text_column: str | None = None) -> int:
        """The number of rows, at most ``stop``. A format without a row count in its metadata reads through,
        checking ``text_column`` as :meth:`batches` does."""
        column = text_column or self.columns[0]
        return sum(len(batch[column]) for batch in self.batches([column], 0, stop, text_column))

    @abstractmethod
    def batches(
        self, columns: Sequence[str], start: int = 0, stop: int | None = None, text_column: str | None = None
    ) -> Iterator[dict[str, list]]:
        """Rows [start, stop) of ``columns`` as ``{column: values}`` batches of up to :data:`BATCH_ROWS` rows.
        ``text_column``, one of ``columns``, must hold strings (or nulls): an error naming where one is not."""

    def class_names(self, column: str) -> list[str] | None:
        """The class names the format records for a label ``column`` (HF ``ClassLabel``), if any."""
        return None


class FileReader(Reader):
    """A reader of one local file: named by its path, identified by its stats."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.where = str(path)

    @property
    def identity(self) -> list:
        """``[absolute path, size, mtime_ns]``."""
        stat = self.path.stat()
        return [str(self.path.resolve()), stat.st_size, stat.st_mtime_ns]


def row_batches(
    rows: Iterator[list], columns: Sequence[str], start: int, stop: int | None
) -> Iterator[dict[str, list]]:
    """Rows (one value per column each) [start, stop) of a streamed format gathered into column batches."""
    rows = islice(rows, start, stop)
    while chunk := list(islice(rows, BATCH_ROWS)):
        yield {c: [row[i] for row in chunk] for i, c in enumerate(columns)}


# ----------------------------------------------------------------------------- errors


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def read_error(path: Path, err: OSError) -> XformerError:
    """The one-line error for a file the OS would not read (missing, no permission)."""
    return XformerError(f"{path}: cannot read the file ({err.strerror or err})")


def unicode_error(path: Path, err: UnicodeDecodeError, offset: str = "") -> XformerError:
    """The one-line error for bytes that are not UTF-8; ``offset`` tells where (" at offset N", " in line N")."""
    return XformerError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x}{offset})")
