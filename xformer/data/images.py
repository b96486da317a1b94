"""Labelled images for classification, decoded once and cached on disk as uint8 arrays.

A source (``data.source``, ``data.val_source``, ``data.test_source``) is one of:

* Parquet files, folders of them, or globs: an image column of encoded images (HF ``Image``
  structs ``{bytes, path}``, or raw bytes) and a label column (ints or strings);
* an image folder with one sub-folder per class (class names: the sorted folder names);
* an HF hub dataset name, loaded with ``datasets.load_dataset(name, split=...)``.

Every image is decoded with PIL, converted to RGB and (with ``data.image_size``) resized, once;
the result is cached under ``<cache_dir>/images/<key>``, named by the source files' paths, sizes
and mtimes and the settings that change the pixels, so a later run only maps the arrays::

    images.npy  (N, 3, H, W)  uint8
    labels.npy  (N,)          int64 | str   raw label values, mapped to class indices at load time
    meta.json                 class names (when the source names them), where it came from
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from xformer.config import ImageDataConfig
from xformer.data.corpus import GLOB_CHARS, HUB_NAME
from xformer.data.pretraining import default_cache_dir
from xformer.errors import XformerError

FORMAT_VERSION = 1
IMAGE_COLUMNS = ("img", "image", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
EXAMPLE_PARQUET = "../shared/data/cifar10/train.parquet"


def _log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- datasets


class ImageDataset:
    """Images (N, C, H, W) uint8 and their class indices (N,) int64, on the CPU."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """``{"pixel_values": (B, C, H, W) uint8, "labels": (B,) int64}`` for the rows ``indices``."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))  # (B,)
        return {"pixel_values": self.images[idx], "labels": self.labels[idx]}


@dataclass
class ImageData:
    """Train, validation (None with ``val_size=0``) and test (None unless asked for) images."""

    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset | None
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------- sources


@dataclass
class _Source:
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


def resolve_image_source(source: str | list[str], key: str, split: str) -> _Source:
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
            return _Source(key, "folder", files, name=str(path))
        if not path.exists() and _is_hub_name(entries[0]):
            return _Source(key, "hub", [], name=entries[0], split=split)
    files: list[Path] = []
    for entry in entries:
        files.extend(p for p in _parquet_files(str(entry), key) if p not in files)
    return _Source(key, "parquet", files)


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
class _Reader:
    """A source ready to decode: identity for the cache key, row count and an iterator of rows."""

    identity: list
    count: int
    class_names: list[str] | None
    rows: Iterator[tuple[str, bytes | str, object]]  # (where, encoded image or path, label)


def _payload(value: dict | bytes | None) -> bytes | str | None:
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def _parquet_reader(src: _Source, cfg: ImageDataConfig, limit: int | None) -> _Reader:
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

    return _Reader(identity, min(count, limit or count), _class_label_names(schema, label), rows())


def _folder_reader(src: _Source, limit: int | None) -> _Reader:
    root = Path(src.name)
    files = src.files[:limit]
    class_names = sorted({p.relative_to(root).parts[0] for p in src.files})
    index = {name: i for i, name in enumerate(class_names)}
    stats = [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    identity = [str(root.resolve()), *stats]
    rows = ((str(p), str(p), index[p.relative_to(root).parts[0]]) for p in files)
    return _Reader(identity, len(files), class_names, rows)


def _hub_reader(src: _Source, cfg: ImageDataConfig, limit: int | None) -> _Reader:
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

    return _Reader(["hub", src.name, src.split, ds._fingerprint, image, label], len(ds), class_names, rows())


# ----------------------------------------------------------------------------- decoding and cache


def decode_image(payload: bytes | str, image_size: int | None) -> np.ndarray:
    """One encoded image (bytes or a file path) as (H, W, 3) uint8 RGB, resized (bicubic) to ``image_size``."""
    with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return np.asarray(im)


def _decode_to(path: Path, reader: _Reader, image_size: int | None) -> None:
    """Decode every row of ``reader`` into ``path``/{images,labels}.npy and meta.json."""
    path.mkdir(parents=True)
    images = None
    labels = []
    first = ""
    for i, (where, payload, label) in enumerate(reader.rows):
        if payload is None or label is None:
            raise XformerError(f"{where}: {'no image' if payload is None else 'no label'}")
        try:
            pixels = decode_image(payload, image_size)  # (H, W, 3)
        except (OSError, ValueError) as err:
            raise XformerError(f"{where}: not a readable image ({err})") from None
        if images is None:
            first = where
            shape = (reader.count, 3, *pixels.shape[:2])
            images = np.lib.format.open_memmap(path / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        elif pixels.shape[:2] != images.shape[2:]:
            (h, w), (h0, w0) = pixels.shape[:2], images.shape[2:]
            raise XformerError(
                f"{where}: image is {w}x{h} but {first} is {w0}x{h0}; set data.image_size to resize all images"
            )
        images[i] = pixels.transpose(2, 0, 1)  # (3, H, W)
        labels.append(label)
    assert images is not None, "callers check that the source has rows"
    images.flush()
    del images
    np.save(path / "labels.npy", np.asarray(labels) if isinstance(labels[0], str) else np.asarray(labels, np.int64))
    (path / "meta.json").write_text(json.dumps({"count": reader.count, "class_names": reader.class_names}, indent=2))


def _load_source(src: _Source, cfg: ImageDataConfig, root: Path) -> tuple[torch.Tensor, np.ndarray, list[str] | None]:
    """(images (N, 3, H, W) uint8, raw labels (N,), class names or None) of a source, via the cache."""
    if src.kind == "hub":
        reader = _hub_reader(src, cfg, cfg.max_images)
    elif src.kind == "folder":
        reader = _folder_reader(src, cfg.max_images)
    else:
        reader = _parquet_reader(src, cfg, cfg.max_images)
    described = src.name or ", ".join(map(str, src.files))
    if reader.count == 0:
        raise XformerError(f"{src.key} {described!r}: no images")
    settings = [FORMAT_VERSION, reader.identity, cfg.image_size, cfg.max_images]
    path = root / "images" / f"{src.kind}-{hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]}"
    if path.is_dir():
        _log(f"using cached images {path}")
    else:
        t0 = time.perf_counter()
        _log(f"decoding {reader.count} images from {described} ...")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            _decode_to(tmp / "data", reader, cfg.image_size)
            os.rename(tmp / "data", path)  # atomic: the cache holds complete arrays or none
        except OSError:
            if not path.is_dir():  # not another process caching them first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _log(f"decoded {reader.count} images in {time.perf_counter() - t0:.1f}s into {path}")
    meta = json.loads((path / "meta.json").read_text())
    images = torch.from_numpy(np.load(path / "images.npy", mmap_mode="c"))  # copy-on-write map: no read yet
    return images, np.load(path / "labels.npy"), meta["class_names"]


# ----------------------------------------------------------------------------- labels and splits


def _class_indices(
    labels: np.ndarray, names: list[str] | None, classes: list, train_named: bool, key: str
) -> torch.Tensor:
    """Raw ``labels`` of one split (with its own class ``names``, if any) as indices into ``classes``,
    the training classes: names when the training source names them (``train_named``), else its sorted
    label values."""
    values, inverse = np.unique(labels, return_inverse=True)
    if train_named and names is not None:  # both name their classes: match by name
        if values.min() < 0 or values.max() >= len(names):
            raise XformerError(f"{key}: label {values.max()} is out of range for its {len(names)} class names")
        values = np.asarray(names)[values]
        lookup = {name: i for i, name in enumerate(classes)}
    elif train_named:  # plain labels against named training classes: they are the class indices
        lookup = {i: i for i in range(len(classes))}
    else:
        lookup = {value: i for i, value in enumerate(classes)}
    unknown = [v for v in values.tolist() if v not in lookup]
    if unknown:
        raise XformerError(f"{key}: label {unknown[0]!r} is not one of the {len(classes)} training classes")
    return torch.from_numpy(np.asarray([lookup[v] for v in values.tolist()], np.int64)[inverse.reshape(-1)])


def _split_off(n: int, val_size: int, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded choice of ``val_size`` of ``n`` rows: (train rows, val rows), disjoint and sorted."""
    if val_size >= n:
        raise XformerError(
            f"data.val_size={val_size} leaves no training images: {key} has {n}; "
            f"lower data.val_size or set data.val_source"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def load_image_data(cfg: ImageDataConfig, cache_dir: Path | None = None) -> ImageData:
    """Train / validation / test images and class names for ``cfg``, decoded once and then cached.

    Without ``val_source`` (or ``val_split`` for an HF dataset name), ``val_size`` images are
    held out of the training source by a permutation seeded with ``cfg.seed``. A test set is
    loaded only when ``test_source`` (or ``test_split`` for an HF dataset name) is given.
    ``max_images`` keeps the first rows of every source.
    """
    if cfg.source is None:
        raise XformerError("data.source is required: Parquet files/globs, an image folder or an HF dataset name")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(cfg)
    train_src = resolve_image_source(cfg.source, "data.source", cfg.split)

    def other(source, split: str | None, default_split: str, what: str) -> _Source | None:
        if source is not None:
            return resolve_image_source(source, f"data.{what}_source", split or default_split)
        if split is None:
            return None
        if train_src.kind != "hub":
            raise XformerError(
                f"data.{what}_split={split!r} needs an HF dataset name in data.source; "
                f"for local files set data.{what}_source"
            )
        return _Source(f"data.{what}_split", "hub", [], name=train_src.name, split=split)

    val_src = other(cfg.val_source, cfg.val_split, "validation", "val")
    test_src = other(cfg.test_source, cfg.test_split, "test", "test")

    images, raw, names = _load_source(train_src, cfg, root)
    classes = names if names is not None else np.unique(raw).tolist()
    labels = _class_indices(raw, names, classes, names is not None, train_src.key)
    if val_src is None:
        rows = _split_off(len(labels), cfg.val_size, cfg.seed, train_src.key)
        train_rows, val_rows = (torch.from_numpy(r) for r in rows)
        train = ImageDataset(images[train_rows], labels[train_rows])
        val = ImageDataset(images[val_rows], labels[val_rows]) if cfg.val_size else None
    else:
        train = ImageDataset(images, labels)
        val = _other_split(val_src, cfg, root, classes, names is not None, train.images.shape[1:])
    test = _other_split(test_src, cfg, root, classes, names is not None, train.images.shape[1:]) if test_src else None
    sizes = ", ".join(f"{n} {len(d)}" for n, d in (("train", train), ("val", val), ("test", test)) if d is not None)
    _log(f"images: {sizes}; {len(classes)} classes; {tuple(train.images.shape[1:])} each")
    return ImageData(train, val, test, [str(c) for c in classes])


def _other_split(
    src: _Source, cfg: ImageDataConfig, root: Path, classes: list, train_named: bool, shape: torch.Size
) -> ImageDataset:
    """A validation or test source, its labels mapped onto the training classes."""
    images, raw, names = _load_source(src, cfg, root)
    if images.shape[1:] != shape:
        raise XformerError(
            f"{src.key}: images are {tuple(images.shape[1:])} but training images are {tuple(shape)}; "
            f"set data.image_size"
        )
    return ImageDataset(images, _class_indices(raw, names, classes, train_named, src.key))
