"""Rows of a labelled image source: Parquet files, an image folder or an HF hub dataset.

Detects the image and label columns, takes class names from what the source records (HF ``ClassLabel``
metadata, an image folder's sub-folders), and yields rows of (where, encoded image, raw label) for
decoding. Every format is read through its reader (:mod:`xformer.data.readers`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from xformer.data.configs import ImageDataConfig
from xformer.data.readers import Reader
from xformer.data.sources import Source, open_readers
from xformer.errors import XformerError

IMAGE_COLUMNS = ("img", "image", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")
EXAMPLE_PARQUET = "../shared/data/cifar10/train.parquet"


# ----------------------------------------------------------------------------- columns


def _pick_columns(reader: Reader, cfg: ImageDataConfig) -> tuple[str, str]:
    """The (image, label) columns: the configured ones, else auto-detected (an image column by name,
    else the first column of encoded images)."""
    names, typed = reader.columns, reader.image_columns
    image = reader.pick(cfg.image_column, IMAGE_COLUMNS + tuple(n for n in names if n in typed), "image_column")
    if image not in typed:
        raise XformerError(
            f"{reader.where}: column {image!r} does not hold encoded images ({{bytes, path}} structs or bytes); "
            f"set data.image_column (columns: {', '.join(names)})"
        )
    return image, reader.pick(cfg.label_column, LABEL_COLUMNS, "label_column")


# ----------------------------------------------------------------------------- rows


@dataclass
class RowReader:
    """A source ready to decode: identity for the cache key, row count and an iterator of rows."""

    identity: list
    count: int
    class_names: list[str] | None
    rows: Iterator[tuple[str, bytes | str, object]]  # (where, encoded image or path, label)
    label_column: str = "label"  # for messages


def _payload(value: dict | bytes | str | None) -> bytes | str | None:
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def _rows(
    readers: list[Reader], image: str, label: str, limit: int | None
) -> Iterator[tuple[str, bytes | str, object]]:
    """(where, encoded image or path, raw label) of the first ``limit`` rows of ``readers``, in order."""
    done = 0
    for reader in readers:
        left = None if limit is None else limit - done
        if left == 0:
            return
        row = 0
        for batch in reader.batches([image, label], 0, left):
            for value, y in zip(batch[image], batch[label]):
                yield f"{reader.where} row {row}", _payload(value), y
                row, done = row + 1, done + 1


def open_rows(src: Source, cfg: ImageDataConfig, limit: int | None) -> RowReader:
    """The rows of ``src``: (where, encoded image, raw label), at most ``limit``; every file of it must
    have the image and label columns found in the first."""
    readers = open_readers(src, EXAMPLE_PARQUET)
    image, label = _pick_columns(readers[0], cfg)
    for reader in readers[1:]:
        missing = [c for c in (image, label) if c not in reader.columns]
        if missing:
            raise XformerError(f"{reader.where}: no column {missing[0]!r} (columns: {', '.join(reader.columns)})")
    count = sum(reader.count(limit) for reader in readers)
    identity = [reader.identity for reader in readers] + [image, label]
    rows = _rows(readers, image, label, limit)
    return RowReader(identity, min(count, limit or count), readers[0].class_names(label), rows, label)


# ----------------------------------------------------------------------------- decoding


def decode_image(payload: bytes | str, image_size: int | None) -> np.ndarray:
    """One encoded image (bytes or a file path) as (H, W, 3) uint8 RGB, resized (bicubic) to ``image_size``."""
    with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return np.asarray(im)
