"""Labelled images for classification (or images alone, for MAE), decoded once and cached on disk as uint8
arrays.

A source (``data.source``, ``data.val_source``, ``data.test_source``) is one of:

* Parquet files, folders of them, or globs: an image column of encoded images (HF ``Image``
  structs ``{bytes, path}``, or raw bytes) and a label column (ints or strings; not read for images alone);
* an image folder with one sub-folder per class (class names: the sorted folder names); for images alone,
  any folder of images, flat or not (:func:`resolve_images_source`);
* an HF hub dataset name, loaded with ``datasets.load_dataset(name, split=...)``.

Every image is decoded with PIL, converted to RGB and (with ``data.image_size``) resized, once;
the result is cached under ``<cache_dir>/images/<key>``, named by the source files' paths, sizes
and mtimes and the settings that change the pixels, so a later run only maps the arrays (after checking
them against the sizes recorded when they were written: a damaged entry is decoded again)::

    images.npy  (N, 3, H, W)  uint8
    labels.npy  (N,)          int64 | str   raw label values, mapped to class indices at load time (-1: images alone)
                (N, K)        str           or up to K captions per image (see :mod:`xformer.data.image.captions`)
    meta.json                 class names (when the source names them), where it came from
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from xformer.data.configs import ImageDataConfig, ImagesDataConfig
from xformer.data.cache import DamagedCacheError, default_cache_dir, discard_entry, log, open_entry, publish_dir
from xformer.data.image.sources import RowReader, decode_image, open_rows
from xformer.data.labels import class_label, require_two_classes
from xformer.data.readers import IMAGE_SUFFIXES, IMAGE_TABLE_SUFFIXES
from xformer.data.sources import Source, at_split, resolve
from xformer.errors import XformerError

FORMAT_VERSION = 1
# What PIL raises on a malformed or hostile file; anything else is a bug and keeps its traceback.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def resolve_image_source(source: str | list[str], key: str, split: str) -> Source:
    """Parquet files, a class-per-sub-folder image folder or an HF hub split, as ``key`` names them."""
    return resolve(source, key, IMAGE_TABLE_SUFFIXES, split, image_folder=True)


def resolve_images_source(source: str | list[str], key: str, split: str) -> Source:
    """As :func:`resolve_image_source`, for images alone: a lone folder holding no Parquet files is every
    image under it (flat, or in sub-folders whose names are not read), in path order."""
    path = Path(source).expanduser() if isinstance(source, str) else None
    if path is None or not path.is_dir() or any(p.suffix.lower() in IMAGE_TABLE_SUFFIXES for p in path.rglob("*")):
        return resolve_image_source(source, key, split)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise XformerError(f"{key} {source!r}: folder has no images ({', '.join(IMAGE_SUFFIXES)}) and no "
                           f"{'/'.join(IMAGE_TABLE_SUFFIXES)} files")
    return Source(key, "folder", files, name=str(path))


# ----------------------------------------------------------------------------- datasets


class ImageDataset:
    """Images (N, C, H, W) uint8 and their class indices (N,) int64 (None: images alone), on the CPU."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """``{"pixel_values": (B, C, H, W) uint8, "labels": (B,) int64}`` for the rows ``indices`` (no
        ``labels`` for images alone)."""
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))  # (B,)
        if self.labels is None:
            return {"pixel_values": self.images[idx]}
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


def _caption(value, where: str, column: str) -> str | list[str] | None:
    """A row's captions as read: a string, a list of strings (a missing one: ""), or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(c is None or isinstance(c, str) for c in value):
        return [c or "" for c in value]
    kind = type(value).__name__ if not isinstance(value, (list, tuple)) else "list of non-string"
    raise XformerError(f"{where}: column {column!r} holds {kind} values, not caption text; set data.caption_column")


def _label_array(labels: list, captions: bool) -> np.ndarray:
    """Raw labels (N,) int64 | str, or captions (N,) str (one per row) | (N, K) str ("" where a row has fewer)."""
    if captions and any(isinstance(row, list) for row in labels):
        rows = [row or [] for row in labels]
        width = max(len(row) for row in rows)
        return np.asarray([row + [""] * (width - len(row)) for row in rows], dtype=str)
    if captions:
        return np.asarray([c or "" for c in labels], dtype=str)
    return np.asarray(labels) if isinstance(labels[0], str) else np.asarray(labels, np.int64)


def _decode_to(path: Path, reader: RowReader, image_size: int | None, captions: bool) -> None:
    """Decode every row of ``reader`` into ``path``/{images,labels}.npy and meta.json; labels are checked
    class labels, or with ``captions`` the caption text (a missing caption is ""), or -1 when ``reader``
    reads images alone (no label column)."""
    images = None
    labels = []
    first = ""
    rows = tqdm(reader.rows, total=reader.count, desc="decoding images", unit="img", disable=None)
    for i, (where, payload, label) in enumerate(rows):
        if payload is None:
            raise XformerError(f"{where}: no image")
        if reader.label_column is not None:
            labels.append(_caption(label, where, reader.label_column) if captions else class_label(label, where))
        try:
            pixels = decode_image(payload, image_size)  # (H, W, 3)
        except DECODE_ERRORS as err:
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
    assert images is not None, "callers check that the source has rows"
    images.flush()
    del images
    unlabelled = np.full(reader.count, -1, np.int64)
    np.save(path / "labels.npy", _label_array(labels, captions) if reader.label_column is not None else unlabelled)
    (path / "meta.json").write_text(json.dumps({"count": reader.count, "class_names": reader.class_names}, indent=2))


def load_source(
    src: Source, cfg: ImagesDataConfig, root: Path, captions: bool = False, labelled: bool = True
) -> tuple[torch.Tensor, np.ndarray, list[str] | None]:
    """(images (N, 3, H, W) uint8, raw labels (N,) or captions, class names or None) of a source, via the cache;
    a damaged cache entry is decoded again. Not ``labelled``: the image column alone, labels all -1."""
    reader = open_rows(src, cfg, cfg.max_images, labelled)
    if reader.count == 0:
        raise XformerError(f"{src.key} {src.described!r}: no images")
    settings = [FORMAT_VERSION, reader.identity, cfg.image_size, cfg.max_images]
    kind = "parquet" if src.kind == "files" else src.kind  # the cache's name for it
    path = root / "images" / f"{kind}-{hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]}"
    for attempt in range(2):
        if open_entry(path):
            log(f"using cached images {path}")
        else:
            _decode_entry(path, reader, src, cfg.image_size, captions)
        try:
            return _read_entry(path)
        except DamagedCacheError as err:
            if attempt:  # damaged again just after being decoded: not the cache's fault
                raise
            log(f"warning: cache entry {path} is damaged ({err.reason}): decoding it again")
            discard_entry(path, err.reason)
            reader = open_rows(src, cfg, cfg.max_images, labelled)  # the rows may have been read: fresh ones
    raise AssertionError("unreachable: the second attempt returns or raises")


def _decode_entry(path: Path, reader: RowReader, src: Source, image_size: int | None, captions: bool) -> None:
    """Decode ``reader``'s rows into the cache entry ``path``, published whole (nothing on Ctrl-C)."""
    t0 = time.perf_counter()
    log(f"decoding {reader.count} images from {src.described} ...")
    try:
        with publish_dir(path) as work:
            _decode_to(work, reader, image_size, captions)
    except KeyboardInterrupt:
        log("interrupted: the images decoded so far are dropped (nothing is cached); the next run decodes again")
        raise
    log(f"decoded {reader.count} images in {time.perf_counter() - t0:.1f}s into {path}")


def _read_entry(path: Path) -> tuple[torch.Tensor, np.ndarray, list[str] | None]:
    """The images (mapped, not read), labels and class names of cache entry ``path``; unreadable files are
    a :class:`~xformer.data.cache.DamagedCacheError`."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        images = np.load(path / "images.npy", mmap_mode="c")  # copy-on-write map: no read yet
        labels = np.load(path / "labels.npy")
        names = meta["class_names"]
    except (OSError, ValueError, EOFError, KeyError, TypeError) as err:
        raise DamagedCacheError(path, f"a file is unreadable ({type(err).__name__}: {err})") from None
    if images.ndim != 4 or len(images) != len(labels):
        raise DamagedCacheError(path, f"images.npy holds {images.shape[:1]} images for {len(labels)} labels")
    return torch.from_numpy(images), labels, names


# ----------------------------------------------------------------------------- labels and splits


def _class_indices(
    labels: np.ndarray, names: list[str] | None, classes: list, train_named: bool, key: str
) -> torch.Tensor:
    """Raw ``labels`` of one split (with its own class ``names``, if any) as indices into ``classes``,
    the training classes: names when the training source names them (``train_named``), else its sorted
    label values."""
    values, inverse = np.unique(labels, return_inverse=True)
    numbers = values.dtype.kind in "iub"
    values = values.tolist()
    if train_named and names is not None and numbers:  # both name their classes: match by name
        bad = next((v for v in values if not 0 <= v < len(names)), None)
        if bad is not None:
            raise XformerError(f"{key}: label {bad} is out of range for its {len(names)} class names")
        values = [names[v] for v in values]
        numbers = False
    if train_named and numbers:  # plain labels against named training classes: they are the class indices
        lookup = {i: i for i in range(len(classes))}
    elif train_named:  # class names
        lookup = {name: i for i, name in enumerate(classes)}
    else:
        lookup = {value: i for i, value in enumerate(classes)}
    unknown = [v for v in values if v not in lookup]
    if unknown:
        raise XformerError(f"{key}: label {unknown[0]!r} is not one of the {len(classes)} training classes")
    return torch.from_numpy(np.asarray([lookup[v] for v in values], np.int64)[inverse.reshape(-1)])


def split_off(n: int, val_size: int, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded choice of ``val_size`` of ``n`` rows: (train rows, val rows), disjoint and sorted."""
    if val_size >= n:
        raise XformerError(
            f"data.val_size={val_size} leaves no training images: {key} has {n}; "
            f"lower data.val_size or set data.val_source"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def load_image_data(cfg: ImageDataConfig, cache_dir: Path | None = None, *, for_training: bool = True) -> ImageData:
    """Train / validation / test images and class names for ``cfg``, decoded once and then cached.

    Without ``val_source`` (or ``val_split`` for an HF dataset name), ``val_size`` images are
    held out of the training source by a permutation seeded with ``cfg.seed``. A test set is
    loaded only when ``test_source`` (or ``test_split`` for an HF dataset name) is given.
    ``max_images`` keeps the first rows of every source. Training images of a single class are an
    error unless ``for_training`` is False (a source loaded only to evaluate on, e.g. one class of a test set).
    """
    if cfg.source is None:
        raise XformerError("data.source is required: Parquet files/globs, an image folder or an HF dataset name")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(cfg)
    train_src = resolve_image_source(cfg.source, "data.source", cfg.split)

    def other(source, split: str | None, default_split: str, what: str) -> Source | None:
        if source is not None:
            return resolve_image_source(source, f"data.{what}_source", split or default_split)
        if split is None:
            return None
        key = f"data.{what}_split"  # the key the user wrote: the split, of data.source's dataset
        return resolve_image_source(at_split(cfg.source, split, key), key, split)

    val_src = other(cfg.val_source, cfg.val_split, "validation", "val")
    test_src = other(cfg.test_source, cfg.test_split, "test", "test")

    images, raw, names = load_source(train_src, cfg, root)
    classes = names if names is not None else np.unique(raw).tolist()
    labels = _class_indices(raw, names, classes, names is not None, train_src.key)
    if val_src is None:
        rows = split_off(len(labels), cfg.val_size, cfg.seed, train_src.key)
        train_rows, val_rows = (torch.from_numpy(r) for r in rows)
        train = ImageDataset(images[train_rows], labels[train_rows])
        val = ImageDataset(images[val_rows], labels[val_rows]) if cfg.val_size else None
    else:
        train = ImageDataset(images, labels)
        val = _other_split(val_src, cfg, root, classes, names is not None, train.images.shape[1:])
    if for_training:
        require_two_classes([classes[i] for i in train.labels.tolist()], f"{train_src.key} {train_src.described!r}")
    test = _other_split(test_src, cfg, root, classes, names is not None, train.images.shape[1:]) if test_src else None
    sizes = ", ".join(f"{n} {len(d)}" for n, d in (("train", train), ("val", val), ("test", test)) if d is not None)
    log(f"images: {sizes}; {len(classes)} classes; {tuple(train.images.shape[1:])} each")
    return ImageData(train, val, test, [str(c) for c in classes])


def _other_split(
    src: Source, cfg: ImageDataConfig, root: Path, classes: list, train_named: bool, shape: torch.Size
) -> ImageDataset:
    """A validation or test source, its labels mapped onto the training classes."""
    images, raw, names = load_source(src, cfg, root)
    if images.shape[1:] != shape:
        raise XformerError(
            f"{src.key}: images are {tuple(images.shape[1:])} but training images are {tuple(shape)}; "
            f"set data.image_size"
        )
    return ImageDataset(images, _class_indices(raw, names, classes, train_named, src.key))


def load_images(cfg: ImagesDataConfig, cache_dir: Path | None = None) -> ImageData:
    """Training and validation images alone (no labels, no class names; a label column or class sub-folders
    are not read), decoded once and then cached. The validation images are ``val_source`` (or ``val_split``
    of a dataset name), else ``val_size`` images held out of the training source (seeded with ``cfg.seed``);
    every image has the first training image's size."""
    if cfg.source is None:
        raise XformerError("data.source is required: Parquet files/globs, a folder of images or an HF dataset name")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(cfg)
    train_src = resolve_images_source(cfg.source, "data.source", cfg.split)
    images = load_source(train_src, cfg, root, labelled=False)[0]
    val = None
    if cfg.val_source is not None or cfg.val_split is not None:
        split = cfg.val_split or "validation"
        key = "data.val_source" if cfg.val_source is not None else "data.val_split"
        source = cfg.val_source if cfg.val_source is not None else at_split(cfg.source, split, key)
        val = load_source(resolve_images_source(source, key, split), cfg, root, labelled=False)[0]
        if val.shape[1:] != images.shape[1:]:
            raise XformerError(f"{key}: images are {tuple(val.shape[1:])} but training images are "
                               f"{tuple(images.shape[1:])}; set data.image_size")
    elif cfg.val_size:
        train_rows, val_rows = split_off(len(images), cfg.val_size, cfg.seed, train_src.key)
        images, val = images[torch.from_numpy(train_rows)], images[torch.from_numpy(val_rows)]
    log(f"images: train {len(images)}" + (f", val {len(val)}" if val is not None else "")
        + f"; {tuple(images.shape[1:])} each, no labels")
    return ImageData(ImageDataset(images, None), ImageDataset(val, None) if val is not None else None, None, [])
