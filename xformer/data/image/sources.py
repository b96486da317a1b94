"""Rows of a labelled image source: Parquet files, an image folder or an HF hub dataset.

Detects the image and label columns, reads class names from HF ``ClassLabel`` metadata, and yields
rows of (where, encoded image, raw label) for decoding. Sources are resolved by
:func:`xformer.data.sources.resolve`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from xformer.config import ImageDataConfig
from xformer.data.sources import (
    Source,
    file_stats,
    load_hub,
    open_parquet,
    parquet_batches,
    parquet_schema,
    pick_column,
)
from xformer.errors import XformerError

IMAGE_COLUMNS = ("img", "image", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")
EXAMPLE_PARQUET = "../shared/data/cifar10/train.parquet"


# ----------------------------------------------------------------------------- columns


def _is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return t.get_field_index("bytes") >= 0
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _pick_columns(
    names: list[str], is_image: dict[str, bool], cfg: ImageDataConfig, where: str
) -> tuple[str, str]:
    """The (image, label) columns: the configured ones, else auto-detected (an image column by name,
    else the first column of encoded images)."""
    candidates = IMAGE_COLUMNS + tuple(n for n in names if is_image[n])
    image = pick_column(names, cfg.image_column, candidates, "image_column", where)
    if not is_image[image]:
        raise XformerError(
            f"{where}: column {image!r} does not hold encoded images ({{bytes, path}} structs or bytes); "
            f"set data.image_column (columns: {', '.join(names)})"
        )
    label = pick_column(names, cfg.label_column, LABEL_COLUMNS, "label_column", where)
    return image, label


def _class_label_names(schema: pa.Schema, column: str) -> list[str] | None:
    """ClassLabel names of ``column`` from the ``huggingface`` metadata that datasets writes, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
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


# ----------------------------------------------------------------------------- readers


@dataclass
class RowReader:
    """A source ready to decode: identity for the cache key, row count and an iterator of rows."""

    identity: list
    count: int
    class_names: list[str] | None
    rows: Iterator[tuple[str, bytes | str, object]]  # (where, encoded image or path, label)
    label_column: str = "label"  # for messages; a folder has none


def _payload(value: dict | bytes | None) -> bytes | str | None:
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def _parquet_reader(src: Source, cfg: ImageDataConfig, limit: int | None) -> RowReader:
    schema = parquet_schema(src.files[0])
    names = schema.names
    is_image = {n: _is_image_type(t) for n, t in zip(names, schema.types)}
    image, label = _pick_columns(names, is_image, cfg, str(src.files[0]))
    for path in src.files[1:]:
        other = parquet_schema(path).names
        missing = [c for c in (image, label) if c not in other]
        if missing:
            raise XformerError(f"{path}: no column {missing[0]!r} (columns: {', '.join(other)})")
    count = sum(open_parquet(p).metadata.num_rows for p in src.files)
    identity = file_stats(src.files) + [image, label]

    def rows() -> Iterator[tuple[str, bytes | str, object]]:
        done = 0
        for path in src.files:
            row = 0
            for batch in parquet_batches(path, [image, label]):
                for value, y in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    if limit is not None and done >= limit:
                        return
                    yield f"{path} row {row}", _payload(value), y
                    row, done = row + 1, done + 1

    return RowReader(identity, min(count, limit or count), _class_label_names(schema, label), rows(), label)


def _folder_reader(src: Source, limit: int | None) -> RowReader:
    root = Path(src.name)
    files = src.files[:limit]
    class_names = sorted({p.relative_to(root).parts[0] for p in src.files})
    index = {name: i for i, name in enumerate(class_names)}
    stats = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    identity = [str(root.resolve()), *stats]
    rows = ((str(p), str(p), index[p.relative_to(root).parts[0]]) for p in files)
    return RowReader(identity, len(files), class_names, rows)


def _hub_reader(src: Source, cfg: ImageDataConfig, limit: int | None) -> RowReader:
    import datasets

    ds = load_hub(src, EXAMPLE_PARQUET)
    where = f"HF dataset {src.name!r} split {src.split!r}"
    is_image = {n: isinstance(f, datasets.Image) for n, f in ds.features.items()}
    image, label = _pick_columns(ds.column_names, is_image, cfg, where)
    feature = ds.features[label]
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    ds = ds.select_columns([image, label]).cast_column(image, datasets.Image(decode=False))

    def rows() -> Iterator[tuple[str, bytes | str, object]]:
        for start, batch in zip(range(0, len(ds), 1024), ds.iter(batch_size=1024)):
            for i, (value, y) in enumerate(zip(batch[image], batch[label])):
                yield f"{where} row {start + i}", _payload(value), y

    identity = ["hub", src.name, src.split, ds._fingerprint, image, label]
    return RowReader(identity, len(ds), class_names, rows(), label)


def open_reader(src: Source, cfg: ImageDataConfig, limit: int | None) -> RowReader:
    """The rows of ``src``: (where, encoded image, raw label), at most ``limit``."""
    if src.kind == "hub":
        return _hub_reader(src, cfg, limit)
    if src.kind == "folder":
        return _folder_reader(src, limit)
    return _parquet_reader(src, cfg, limit)


# ----------------------------------------------------------------------------- decoding


def decode_image(payload: bytes | str, image_size: int | None) -> np.ndarray:
    """One encoded image (bytes or a file path) as (H, W, 3) uint8 RGB, resized (bicubic) to ``image_size``."""
    with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return np.asarray(im)
