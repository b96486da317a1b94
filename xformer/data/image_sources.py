"""Where labelled images come from: Parquet files, image folders or HF dataset names.

Resolves a ``data.*source`` entry, detects the image and label columns, reads class names from
HF ``ClassLabel`` metadata, and yields rows of (where, encoded image, raw label) for decoding.
"""

from __future__ import annotations

import glob
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from xformer.config import ImageDataConfig
from xformer.data.corpus import GLOB_CHARS, HUB_NAME
from xformer.errors import XformerError

IMAGE_COLUMNS = ("img", "image", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
EXAMPLE_PARQUET = "../shared/data/cifar10/train.parquet"


# ----------------------------------------------------------------------------- sources


@dataclass
class ImageSource:
    """What one config key names: Parquet files, an image folder or an HF hub dataset split."""

    key: str  # the config key, for messages: "data.source"
    kind: str  # "parquet" | "folder" | "hub"
    files: list[Path]  # Parquet files; for a folder, its image files
    name: str = ""  # hub name or folder path
    split: str = ""  # hub split


def _is_hub_name(entry: str) -> bool:
    return HUB_NAME.match(entry) is not None and Path(entry).suffix.lower() not in (".parquet", *IMAGE_SUFFIXES)


def _parquet_files(entry: str, key: str) -> list[Path]:
    path = Path(entry).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise XformerError(f"{key} {entry!r}: not a .parquet file (or an image folder, or an HF dataset name)")
        return [path]
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise XformerError(f"{key} {entry!r}: folder has no .parquet files and no class sub-folders with images")
        return files
    if any(c in entry for c in GLOB_CHARS):
        files = sorted(p for p in map(Path, glob.glob(str(path), recursive=True)) if p.suffix.lower() == ".parquet")
        if not files:
            raise XformerError(f"{key} {entry!r}: the pattern matches no .parquet files")
        return files
    raise XformerError(f"{key} {entry!r}: no such file or folder")


def _folder_files(root: Path) -> list[Path] | None:
    """The images of a class-per-sub-folder tree, sorted by class then path; None if it is not one."""
    files = [
        p for sub in sorted(d for d in root.iterdir() if d.is_dir())
        for p in sorted(sub.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]
    return files or None


def resolve_image_source(source: str | list[str], key: str, split: str) -> ImageSource:
    """Classify ``source`` (the value of config key ``key``) as Parquet files, an image folder or a hub name."""
    entries = [source] if isinstance(source, str) else list(source)
    if not entries:
        raise XformerError(f"{key} is an empty list")
    if len(entries) == 1:
        path = Path(entries[0]).expanduser()
        if path.is_dir() and not any(path.rglob("*.parquet")):
            files = _folder_files(path)
            if files is None:
                raise XformerError(
                    f"{key} {entries[0]!r}: folder has no .parquet files and no class sub-folders with images "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                )
            return ImageSource(key, "folder", files, name=str(path))
        if not path.exists() and _is_hub_name(entries[0]):
            return ImageSource(key, "hub", [], name=entries[0], split=split)
    files: list[Path] = []
    for entry in entries:
        files.extend(p for p in _parquet_files(str(entry), key) if p not in files)
    return ImageSource(key, "parquet", files)


# ----------------------------------------------------------------------------- columns


def _is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return t.get_field_index("bytes") >= 0
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _pick_columns(
    names: list[str], is_image: dict[str, bool], cfg: ImageDataConfig, where: str
) -> tuple[str, str]:
    """The (image, label) columns: the configured ones, else auto-detected."""
    listing = ", ".join(names)
    for option, value in (("image_column", cfg.image_column), ("label_column", cfg.label_column)):
        if value is not None and value not in names:
            raise XformerError(f"{where}: no column {value!r} (columns: {listing}); set data.{option}")
    image = cfg.image_column or next((c for c in IMAGE_COLUMNS if c in names), None)
    image = image or next((c for c in names if is_image[c]), None)
    if image is None:
        raise XformerError(f"{where}: no image column found (columns: {listing}); set data.image_column")
    if not is_image[image]:
        raise XformerError(
            f"{where}: column {image!r} does not hold encoded images ({{bytes, path}} structs or bytes); "
            f"set data.image_column (columns: {listing})"
        )
    label = cfg.label_column or next((c for c in LABEL_COLUMNS if c in names), None)
    if label is None:
        raise XformerError(f"{where}: no label column found (columns: {listing}); set data.label_column")
    return image, label


def _class_label_names(schema: pa.Schema, column: str) -> list[str] | None:
    """ClassLabel names of ``column`` from the ``huggingface`` metadata that datasets writes, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        return None
    feature = info.get("info", {}).get("features", {}).get(column, {})
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


def _payload(value: dict | bytes | None) -> bytes | str | None:
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def _parquet_reader(src: ImageSource, cfg: ImageDataConfig, limit: int | None) -> RowReader:
    schema = pq.read_schema(src.files[0])
    names = schema.names
    is_image = {n: _is_image_type(schema.field(n).type) for n in names}
    image, label = _pick_columns(names, is_image, cfg, str(src.files[0]))
    for path in src.files[1:]:
        missing = [c for c in (image, label) if c not in pq.read_schema(path).names]
        if missing:
            raise XformerError(f"{path}: no column {missing[0]!r} (columns: {', '.join(pq.read_schema(path).names)})")
    count = sum(pq.ParquetFile(p).metadata.num_rows for p in src.files)
    identity = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in src.files] + [image, label]

    def rows() -> Iterator[tuple[str, bytes | str, object]]:
        done = 0
        for path in src.files:
            row = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=[image, label]):
                for value, y in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    if limit is not None and done >= limit:
                        return
                    yield f"{path} row {row}", _payload(value), y
                    row, done = row + 1, done + 1

    return RowReader(identity, min(count, limit or count), _class_label_names(schema, label), rows())


def _folder_reader(src: ImageSource, limit: int | None) -> RowReader:
    root = Path(src.name)
    files = src.files[:limit]
    class_names = sorted({p.relative_to(root).parts[0] for p in src.files})
    index = {name: i for i, name in enumerate(class_names)}
    stats = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    identity = [str(root.resolve()), *stats]
    rows = ((str(p), str(p), index[p.relative_to(root).parts[0]]) for p in files)
    return RowReader(identity, len(files), class_names, rows)


def _hub_reader(src: ImageSource, cfg: ImageDataConfig, limit: int | None) -> RowReader:
    import datasets

    try:
        ds = datasets.load_dataset(src.name, split=src.split)
    except Exception as err:  # no network, no such dataset or split: the user's fix is the same
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise XformerError(
            f"{src.key} {src.name!r}: not a local path, and the HF hub is unreachable or has no such dataset/split "
            f"({reason}); pass local Parquet files instead, e.g. {src.key}={EXAMPLE_PARQUET}"
        ) from None
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

    return RowReader(["hub", src.name, src.split, ds._fingerprint, image, label], len(ds), class_names, rows())


# ----------------------------------------------------------------------------- decoding and cache


def decode_image(payload: bytes | str, image_size: int | None) -> np.ndarray:
    """One encoded image (bytes or a file path) as (H, W, 3) uint8 RGB, resized (bicubic) to ``image_size``."""
    with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return np.asarray(im)


def open_reader(src: ImageSource, cfg: ImageDataConfig, limit: int | None) -> RowReader:
    """The rows of ``src``: (where, encoded image, raw label), at most ``limit``."""
    if src.kind == "hub":
        return _hub_reader(src, cfg, limit)
    if src.kind == "folder":
        return _folder_reader(src, limit)
    return _parquet_reader(src, cfg, limit)
