"""An image folder: one sub-folder of images per class, read as a table of (image path, class index)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from xformer.data.readers.base import Reader, row_batches


class FolderReader(Reader):
    """The images ``files`` of a class-per-sub-folder tree ``root``: column ``image`` holds each file's path,
    ``label`` its class index into the sorted sub-folder names."""

    holds_images = True

    def __init__(self, root: Path, files: list[Path]):
        self.root, self.files = Path(root), files
        self.where = str(root)
        self.names = sorted({p.relative_to(self.root).parts[0] for p in files})

    @property
    def columns(self) -> list[str]:
        return ["image", "label"]

    @property
    def image_columns(self) -> set[str]:
        return {"image"}

    @property
    def identity(self) -> list:
        """The folder, and each image's path in it, size and mtime."""
        stats = [[str(p.relative_to(self.root)), p.stat().st_size, p.stat().st_mtime_ns] for p in self.files]
        return [str(self.root.resolve()), *stats]

    def count(self, stop: int | None = None, text_column: str | None = None) -> int:
        return len(self.files[:stop])

    def batches(
        self, columns: Sequence[str], start: int = 0, stop: int | None = None, text_column: str | None = None
    ) -> Iterator[dict[str, list]]:
        index = {name: i for i, name in enumerate(self.names)}
        values = {"image": str, "label": lambda p: index[p.relative_to(self.root).parts[0]]}
        rows = ([values[c](p) for c in columns] for p in self.files)
        yield from row_batches(rows, columns, start, stop)

    def class_names(self, column: str) -> list[str] | None:
        return self.names if column == "label" else None
