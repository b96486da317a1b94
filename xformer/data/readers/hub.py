"""A split of an HF hub dataset (or a catalogue set's hub copy), read through the ``datasets`` library.

Loading is lazy: ``datasets`` is imported only when a hub source is read. A streamed split (an
``IterableDataset``: no length, only what is read is downloaded) is read the same way as a downloaded one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property

from xformer.data import catalog
from xformer.data.readers.base import BATCH_ROWS, Reader, first_line
from xformer.data.readers.columns import check_text_values
from xformer.errors import XformerError


def load_hub(key: str, name: str, split: str, example: str | None = None):
    """``datasets.load_dataset(name, split=split)`` (for a catalogue name, its hub copy with the local
    columns; an ``IterableDataset`` if it streams); when that fails (no network, no such dataset or split) a
    one-line error telling how to get local files, ``example`` being one for config key ``key``."""
    import datasets

    dataset = catalog.CATALOG.get(name)
    if dataset is not None:
        try:
            return catalog.load_from_hub(dataset, split)
        except Exception as err:  # no network, hub trouble: the user's fix is to fetch it
            raise catalog.not_found(key, name, dataset, split, f"the HF hub failed ({first_line(err)})") from None
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as err:  # no network, no such dataset or split: the user's fix is the same
        local = name.replace("/", "_") + ".parquet"
        fix = (f"download it where the hub is reachable with datasets.load_dataset({name!r}, "
               f"split={split!r}).to_parquet({local!r}) and pass the local path")
        if example is not None:
            fix += f", e.g. {key}={example}"
        raise XformerError(
            f"{key} {name!r}: not a local path, and the HF hub is unreachable or has no such "
            f"dataset/split ({first_line(err)}); {fix}"
        ) from None


class HubReader(Reader):
    """One split of a hub dataset, loaded when made. Image columns are read undecoded (``{bytes, path}``)."""

    holds_images = True

    def __init__(self, key: str, name: str, split: str, example: str | None = None):
        self.name, self.split = name, split
        self.where = f"HF dataset {name!r} split {split!r}"
        self.dataset = load_hub(key, name, split, example)

    @property
    def features(self) -> dict:
        """The column features; empty for a stream that does not know them before its first rows."""
        return getattr(self.dataset, "features", None) or {}

    @cached_property
    def columns(self) -> list[str]:
        if self.features:
            return list(self.features)
        return list(next(iter(self.dataset.iter(batch_size=1)), {}))

    @property
    def image_columns(self) -> set[str]:
        import datasets

        return {n for n, f in self.features.items() if isinstance(f, datasets.Image)}

    @property
    def identity(self) -> list:
        """``["hub", name, split, the dataset's fingerprint]`` (a stream has none)."""
        return ["hub", self.name, self.split, getattr(self.dataset, "_fingerprint", None)]

    def count(self, stop: int | None = None, text_column: str | None = None) -> int:
        if hasattr(self.dataset, "__len__"):
            return len(self.dataset) if stop is None else min(len(self.dataset), stop)
        return super().count(stop, text_column)

    def batches(
        self, columns: Sequence[str], start: int = 0, stop: int | None = None, text_column: str | None = None
    ) -> Iterator[dict[str, list]]:
        names = list(dict.fromkeys(columns))
        for batch in self.rows(names, start, stop).iter(batch_size=BATCH_ROWS):
            if text_column is not None:
                check_text_values(batch[text_column], text_column, self.where)
            yield {c: list(batch[c]) for c in names}

    def rows(self, columns: list[str], start: int, stop: int | None):
        """The dataset cut to rows [start, stop) and ``columns``, images left encoded."""
        import datasets

        ds = self.dataset
        if hasattr(ds, "__len__"):
            ds = ds.select(range(start, len(ds) if stop is None else min(stop, len(ds))))
        else:
            ds = ds.skip(start) if stop is None else ds.skip(start).take(stop - start)
        if self.features:
            ds = ds.select_columns(columns)
        for column in self.image_columns & set(columns):
            ds = ds.cast_column(column, datasets.Image(decode=False))
        return ds

    def class_names(self, column: str) -> list[str] | None:
        import datasets

        feature = self.features.get(column)
        return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
