"""Rows of an image source, labelled or not: Parquet files, an image folder or an HF hub dataset.

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


def _pick_columns(reader: Reader, cfg: ImageDataConfig, labelled: bool = True) -> tuple[str, str | None]:
    """The (image, label) columns: the configured ones, else auto-detected (an image column by name,
    else the first column of encoded images); the label None when not ``labelled`` (images alone)."""
    names, typed = reader.columns, reader.image_columns
    image = reader.pick(cfg.image_column, IMAGE_COLUMNS + tuple(n for n in names if n in typed), "image_column")
    if image not in typed:
        raise XformerError(
            f"{reader.where}: column {image!r} does not hold encoded images ({{bytes, path}} structs or bytes); "
            f"set data.image_column (columns: {', '.join(names)})"
        )
    return image, reader.pick(cfg.label_column, LABEL_COLUMNS, "label_column") if labelled else None


# ----------------------------------------------------------------------------- rows


@dataclass
class RowReader:
    """A source ready to decode: identity for the cache key, row count and an iterator of rows."""

    identity: list
    count: int
    class_names: list[str] | None
    rows: Iterator[tuple[str, bytes | str, object]]  # (where, encoded image or path, label or None)
    label_column: str | None = "label"  # for messages; None: images alone


def _payload(value: dict | bytes | str | None) -> bytes | str | None:
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def _rows(
    readers: list[Reader], image: str, label: str | None, limit: int | None
) -> Iterator[tuple[str, bytes | str, object]]:
    """(where, encoded image or path, raw label or None without ``label``) of the first ``limit`` rows of
    ``readers``, in order."""
    done = 0
    columns = [image] if label is None else [image, label]
    for reader in readers:
        left = None if limit is None else limit - done
        if left == 0:
            return
        row = 0
        for batch in reader.batches(columns, 0, left):
            labels = batch[label] if label is not None else [None] * len(batch[image])
            for value, y in zip(batch[image], labels):
                yield f"{reader.where} row {row}", _payload(value), y
                row, done = row + 1, done + 1


def open_rows(src: Source, cfg: ImageDataConfig, limit: int | None, labelled: bool = True) -> RowReader:
    """The rows of ``src``: (where, encoded image, raw label), at most ``limit``; every file of it must
    have the image and label columns found in the first. Not ``labelled``: the image column alone is read
    (a label column, if any, is ignored) and each row's label is None."""
    readers = open_readers(src, EXAMPLE_PARQUET)
    image, label = _pick_columns(readers[0], cfg, labelled)
    columns = [c for c in (image, label) if c is not None]
    for reader in readers[1:]:
        missing = [c for c in columns if c not in reader.columns]
        if missing:
            raise XformerError(f"{reader.where}: no column {missing[0]!r} (columns: {', '.join(reader.columns)})")
    count = sum(reader.count(limit) for reader in readers)
    identity = [reader.identity for reader in readers] + columns
    rows = _rows(readers, image, label, limit)
    names = readers[0].class_names(label) if label is not None else None
    return RowReader(identity, min(count, limit or count), names, rows, label)


# ----------------------------------------------------------------------------- decoding


def decode_image(payload: bytes | str, image_size: int | None) -> np.ndarray:
    """One encoded image (bytes or a file path) as (H, W, 3) uint8 RGB, resized (bicubic) to ``image_size``."""
    with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return np.asarray(im)
