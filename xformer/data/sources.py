"""Where data comes from: one resolver for every ``data.*source`` value, the column picker, file readers
and the HF hub loader.

A source value is a string or a list of them, each a local file, a folder (its files with an accepted
suffix, recursively) or a glob; or, alone, a catalogue name (``wikipedia``, ``cifar10``, ``sst2:validation``;
see :mod:`xformer.data.catalog`), an HF hub dataset name (``wikitext``, ``owner/name``), or (for image
sources) a folder with one sub-folder of images per class. An existing path or a glob is never a name.
Every reader turns malformed input (not UTF-8, not Parquet, a missing column) into a one-line
:class:`~xformer.errors.XformerError` that names the file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xformer.data import catalog
from xformer.errors import XformerError

CORPUS_SUFFIXES = (".parquet", ".txt", ".text", ".jsonl", ".json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GLOB_CHARS = "*?["
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "wikitext" or "owner/name"


# ----------------------------------------------------------------------------- resolving


@dataclass
class Source:
    """What one config key names: local files, a class-per-sub-folder image folder, or an HF hub split."""

    key: str  # the config key, for messages: "data.source"
    kind: str  # "files" | "folder" | "hub"
    files: list[Path] = field(default_factory=list)  # local files; for a folder, its images
    name: str = ""  # hub name (or catalogue name) or folder path
    split: str = ""  # hub split

    @property
    def described(self) -> str:
        """The source for messages: the hub name or folder, else its files."""
        return self.name or ", ".join(map(str, self.files))


def _is_hub_name(entry: str) -> bool:
    return HUB_NAME.match(entry) is not None and Path(entry).suffix.lower() not in CORPUS_SUFFIXES + IMAGE_SUFFIXES


def _accepted(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.suffix.lower() in suffixes and path.is_file()


def _entry_files(entry: str, key: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The files one entry names: a file, a folder (its accepted files, recursively) or a glob."""
    path = Path(entry).expanduser()
    listing = "/".join(suffixes)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _accepted(p, suffixes))
        if not files:
            raise XformerError(f"{key} {entry!r}: directory has no {listing} files")
        return files
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise XformerError(
                f"{key} {entry!r}: unsupported file type {path.suffix!r} (supported: {', '.join(suffixes)})"
            )
        return [path]
    if any(c in entry for c in GLOB_CHARS):
        files = sorted(p for p in map(Path, glob.glob(str(path), recursive=True)) if _accepted(p, suffixes))
        if not files:
            raise XformerError(f"{key} {entry!r}: the pattern matches no {listing} files")
        return files
    raise XformerError(f"{key} {entry!r}: no such file or directory")


def _folder_images(root: Path) -> list[Path]:
    """The images of a class-per-sub-folder tree, sorted by class then path (empty if it is not one)."""
    return [
        p for sub in sorted(d for d in root.iterdir() if d.is_dir())
        for p in sorted(sub.rglob("*")) if _accepted(p, IMAGE_SUFFIXES)
    ]


def _named(entry: str, key: str, split: str) -> Source | None:
    """The Source of a catalogue name (``name`` or ``name:split``): its split's Parquet files in the first
    data folder holding them, else the HF hub; None if ``entry`` is no catalogue name. Offline and found in
    no folder: a one-line error naming the folders searched and how to fetch the set."""
    named = catalog.parse(entry)
    if named is None:
        return None
    dataset, split = named[0], named[1] or split
    files = catalog.local_files(dataset, split)
    if files:
        return Source(key, "files", files)
    catalog.check_hub(dataset, split, key, entry)
    return Source(key, "hub", name=dataset.name, split=split)


def resolve(
    source: str | list[str],
    key: str = "data.source",
    suffixes: tuple[str, ...] = CORPUS_SUFFIXES,
    split: str = "train",
    image_folder: bool = False,
) -> Source:
    """Resolve ``source`` (the value of config key ``key``) to the files with ``suffixes`` it names, in
    order and without duplicates. A lone entry that is no local path or glob may be a catalogue name (its
    ``split`` from a data folder, else the hub) or look like a hub name (an HF hub dataset, loaded with
    ``split``); with ``image_folder``, a lone folder holding no such files is a class-per-sub-folder image
    folder."""
    entries = [source] if isinstance(source, str) else list(source)
    if not entries:
        raise XformerError(f"{key} is an empty list")
    if len(entries) == 1:
        entry = str(entries[0])
        path = Path(entry).expanduser()
        if image_folder and path.is_dir() and not any(_accepted(p, suffixes) for p in path.rglob("*")):
            files = _folder_images(path)
            if not files:
                raise XformerError(
                    f"{key} {entry!r}: folder has no {'/'.join(suffixes)} files and no class sub-folders with "
                    f"images ({', '.join(IMAGE_SUFFIXES)})"
                )
            return Source(key, "folder", files, name=str(path))
        if not path.exists() and not any(c in entry for c in GLOB_CHARS):
            named = _named(entry, key, split)
            if named is not None:
                return named
            if _is_hub_name(entry):
                return Source(key, "hub", name=entry, split=split)
    files: dict[Path, None] = {}  # ordered, without duplicates
    for entry in entries:
        files.update(dict.fromkeys(_entry_files(str(entry), key, suffixes)))
    return Source(key, "files", list(files))


def file_stats(files: Iterable[Path]) -> list[list]:
    """``[absolute path, size, mtime_ns]`` of each file: what cache keys name local data by."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def source_fingerprint(source: str | list[str], split: str = "train", key: str = "data.source") -> str:
    """A short stable hash of what ``source`` (the value of ``key``) names: every data file it covers
    (paths, sizes, mtimes; for a folder, all its data and image files), or the hub name and ``split``.
    Reads no data."""
    src = resolve(source, key, CORPUS_SUFFIXES + IMAGE_SUFFIXES, split)
    identity = ["hub", src.name, src.split] if src.kind == "hub" else file_stats(src.files)
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- columns


def pick_column(
    names: list[str], configured: str | None, candidates: Iterable[str], option: str, where: str,
    field_name: str = "column",
) -> str:
    """The column ``configured`` by ``data.<option>`` (an error if absent), else the first of ``candidates``
    that ``names`` holds. ``where`` names the file or dataset; ``field_name`` is "key" for JSON records."""
    plural = "keys" if field_name == "key" else "columns"
    if configured is not None:
        if configured not in names:
            raise XformerError(
                f"{where}: no {field_name} {configured!r} ({plural}: {', '.join(names)}); set data.{option}"
            )
        found = configured
    else:
        found = next((c for c in candidates if c in names), None)
        if found is None:
            what = option.removesuffix("_column")
            raise XformerError(
                f"{where}: no {what} {field_name} found ({plural}: {', '.join(names)}); set data.{option}"
            )
    if names.count(found) > 1:
        raise XformerError(f"{where}: {names.count(found)} {plural} are named {found!r}; rename all but one")
    return found


def _not_text(column: str, where: str, type_name: str, option: str) -> XformerError:
    return XformerError(f"column {column!r} of {where} holds {type_name} values, not text; set data.{option}")


def check_text_type(dtype: pa.DataType, column: str, where: str, option: str) -> None:
    """Raise unless the Arrow ``dtype`` of ``column`` holds strings (or only nulls)."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_null(dtype)
            or pa.types.is_string_view(dtype)):
        raise _not_text(column, where, str(dtype), option)


def check_text_values(values: list, column: str, where: str, option: str) -> None:
    """Raise unless every value of ``column`` is a string or None (JSON records, hub datasets)."""
    bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        raise _not_text(column, where, type(bad).__name__, option)


# ----------------------------------------------------------------------------- readers


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _read_error(path: Path, err: OSError) -> XformerError:
    return XformerError(f"{path}: cannot read the file ({err.strerror or err})")


def _unicode_error(path: Path, err: UnicodeDecodeError, offset: str = "") -> XformerError:
    return XformerError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x}{offset})")


def open_parquet(path: Path) -> pq.ParquetFile:
    """``path`` opened as Parquet; an error naming the file if it is not Parquet or cannot be read."""
    try:
        return pq.ParquetFile(path)
    except OSError as err:
        if err.errno is not None:  # the OS refused: missing, no permission
            raise _read_error(path, err) from None
        raise XformerError(f"{path}: not a Parquet file ({_first_line(err)})") from None
    except pa.ArrowException as err:
        raise XformerError(f"{path}: not a Parquet file ({_first_line(err)})") from None


def parquet_schema(path: Path) -> pa.Schema:
    """The Arrow schema of a Parquet file, with its metadata."""
    return open_parquet(path).schema_arrow


def parquet_batches(path: Path, columns: list[str], batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """The ``columns`` of a Parquet file in record batches, validated; corrupt data is an error naming the file."""
    pf = open_parquet(path)
    try:
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            batch.validate(full=True)  # e.g. strings that are not UTF-8, which Parquet readers pass through
            yield batch
    except (OSError, pa.ArrowException) as err:
        raise XformerError(f"{path}: corrupt Parquet data ({_first_line(err)})") from None


def read_text(path: Path) -> str:
    """A whole text file; an error naming the file if it is not UTF-8 text (a leading BOM is dropped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _unicode_error(path, err, f" at offset {err.start}") from None
    except OSError as err:
        raise _read_error(path, err) from None
    if "\x00" in text:
        raise XformerError(f"{path}: not UTF-8 text (binary data: a NUL character at offset {text.index(chr(0))})")
    return text


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file, read as a stream."""
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise _unicode_error(path, err, f" in line {lineno}") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise XformerError(f"{path} line {lineno}: not a JSON object per line ({err.msg})") from None
                if not isinstance(record, dict):
                    kind = type(record).__name__
                    raise XformerError(f"{path} line {lineno}: not a JSON object per line (a {kind})")
                yield lineno, record
    except OSError as err:
        raise _read_error(path, err) from None


# ----------------------------------------------------------------------------- the HF hub


def load_hub(src: Source, example: str | None = None):
    """``datasets.load_dataset(name, split=split)`` for a hub source (for a catalogue name, its hub copy with
    the local columns; an ``IterableDataset`` if it streams); when that fails (no network, no such dataset or
    split) a one-line error telling how to get local files, ``example`` being one for the key."""
    import datasets

    dataset = catalog.CATALOG.get(src.name)
    if dataset is not None:
        try:
            return catalog.load_from_hub(dataset, src.split)
        except Exception as err:  # no network, hub trouble: the user's fix is to fetch it
            why = f"the HF hub failed ({_first_line(err)})"
            raise catalog.not_found(src.key, src.name, dataset, src.split, why) from None
    try:
        return datasets.load_dataset(src.name, split=src.split)
    except Exception as err:  # no network, no such dataset or split: the user's fix is the same
        local = src.name.replace("/", "_") + ".parquet"
        fix = (f"download it where the hub is reachable with datasets.load_dataset({src.name!r}, "
               f"split={src.split!r}).to_parquet({local!r}) and pass the local path")
        if example is not None:
            fix += f", e.g. {src.key}={example}"
        raise XformerError(
            f"{src.key} {src.name!r}: not a local path, and the HF hub is unreachable or has no such "
            f"dataset/split ({_first_line(err)}); {fix}"
        ) from None
