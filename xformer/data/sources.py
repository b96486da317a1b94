"""Where data comes from: one resolver for every ``data.*source`` value, and the readers of what it names.

A source value is a string or a list of them, each a local file, a folder (its files with an accepted
suffix, recursively) or a glob; or, alone, a catalogue name (``wikipedia``, ``cifar10``, ``sst2:validation``;
see :mod:`xformer.data.catalog`), an HF hub dataset name (``wikitext``, ``owner/name``), or (for image
sources) a folder with one sub-folder of images per class. An existing path or a glob is never a name.
:func:`open_readers` gives the readers of a resolved source (:mod:`xformer.data.readers`: one per file,
chosen by suffix, or the folder's or the hub split's); every reader turns malformed input (not UTF-8, not
Parquet, a missing column) into a one-line :class:`~xformer.errors.XformerError` that names the file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xformer.data import catalog
from xformer.data.readers import DATA_SUFFIXES, IMAGE_SUFFIXES, FolderReader, HubReader, Reader, reader_for
from xformer.errors import XformerError

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
    return HUB_NAME.match(entry) is not None and Path(entry).suffix.lower() not in DATA_SUFFIXES + IMAGE_SUFFIXES


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
    named = catalog.parse(entry, key)
    if named is None:
        return None
    dataset, split = named[0], named[1] or split
    files = catalog.local_files(dataset, split, key)
    if files:
        return Source(key, "files", files)
    catalog.check_hub(dataset, split, key, entry)
    return Source(key, "hub", name=dataset.name, split=split)


_SHADOWED: set[str] = set()  # local paths already reported as shadowing a catalogue name


def _tell_shadowed(entry: str, key: str) -> None:
    """One stderr line, once per process, when an existing local path is also a catalogue name: the path
    is read (a path is never a name), and how to read the catalogue's set instead."""
    name = entry.rstrip("/")
    if name not in catalog.CATALOG or entry in _SHADOWED:  # an exact name only: a path is never a typo of one
        return
    _SHADOWED.add(entry)
    print(f"[data] {key} {entry!r}: reading the local path {Path(entry).expanduser().resolve()}, not the catalogue's "
          f"{name} (write {name}:<split>, e.g. {name}:train, for the catalogue's)", file=sys.stderr, flush=True)


def resolve(
    source: str | list[str],
    key: str = "data.source",
    suffixes: tuple[str, ...] = DATA_SUFFIXES,
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
        elif path.exists():
            _tell_shadowed(entry, key)
    files: dict[Path, None] = {}  # ordered, without duplicates
    for entry in entries:
        files.update(dict.fromkeys(_entry_files(str(entry), key, suffixes)))
    return Source(key, "files", list(files))


def is_named(source: str | list[str], key: str = "data.source") -> bool:
    """Whether ``source`` (the value of ``key``) is a dataset name (a catalogue or HF hub name, which has
    splits) rather than local files, folders or globs (which have none)."""
    entries = [source] if isinstance(source, str) else list(source)
    if len(entries) != 1:
        return False
    entry = str(entries[0])
    if Path(entry).expanduser().exists() or any(c in entry for c in GLOB_CHARS):
        return False
    return catalog.parse(entry, key) is not None or _is_hub_name(entry)


def at_split(source: str | list[str], split: str, key: str, source_key: str = "data.source") -> str:
    """``source`` (the value of ``source_key``, a dataset name) to resolve at ``split``, the value of ``key``
    (``data.val_split``): without a split of its own (``sst2:train`` -> ``sst2``), which would win over
    ``split`` and read the training split again. Local data has no splits, and reading it again as ``split``
    would score on the training data: a one-line error naming both keys."""
    if not is_named(source, source_key):
        other = key.removesuffix("_split") + "_source"
        raise XformerError(f"{key}={split!r} needs an HF dataset name or a catalogue name in {source_key} ("
                           f"{source_key} {source!r} is local data, which has no splits): set {other} to the "
                           f"held-out data instead")
    entry = source if isinstance(source, str) else str(source[0])
    named = catalog.parse(entry, source_key)
    return named[0].name if named is not None else entry


def file_stats(files: Iterable[Path]) -> list[list]:
    """``[absolute path, size, mtime_ns]`` of each file: what cache keys name local data by."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def source_fingerprint(source: str | list[str], split: str = "train", key: str = "data.source") -> str:
    """A short stable hash of what ``source`` (the value of ``key``) holds: every data file it covers (for a
    folder, all its data and image files) by its path below the files' common folder, size and content, or the
    hub name and ``split``. Data copied or mounted elsewhere keeps its fingerprint; changed data does not."""
    src = resolve(source, key, DATA_SUFFIXES + IMAGE_SUFFIXES, split)
    if src.kind == "hub":
        identity = ["hub", src.name, src.split]
    else:
        paths = [p.resolve() for p in src.files]
        root = Path(os.path.commonpath([p.parent for p in paths]))
        identity = ["content", [[p.relative_to(root).as_posix(), p.stat().st_size, _digest(p)] for p in paths]]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def stat_fingerprint(source: str | list[str], split: str = "train", key: str = "data.source") -> str:
    """The fingerprint runs recorded before :func:`source_fingerprint` read content: the files' absolute
    paths, sizes and mtimes (or the hub name and ``split``); a resume still accepts it. Reads no data."""
    src = resolve(source, key, DATA_SUFFIXES + IMAGE_SUFFIXES, split)
    identity = ["hub", src.name, src.split] if src.kind == "hub" else file_stats(src.files)
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def open_readers(src: Source, example: str | None = None) -> list[Reader]:
    """The readers of ``src``, in order: one per file (by suffix), the image folder's, or the hub split's
    (loaded now; ``example`` is a local file to suggest in the error when the hub does not answer)."""
    if src.kind == "hub":
        return [HubReader(src.key, src.name, src.split, example)]
    if src.kind == "folder":
        return [FolderReader(Path(src.name), src.files)]
    return [reader_for(path) for path in src.files]


def source_columns(source: str | list[str], split: str = "train", key: str = "--data") -> tuple[list[str], set[str]]:
    """(column names, those holding encoded images) of the first file of ``source``, a catalogue set's
    columns (reading nothing), an image folder's or a hub split's. Reads no rows."""
    src = resolve(source, key, DATA_SUFFIXES, split, image_folder=True)
    named = catalog.parse(src.name) if src.kind == "hub" else None
    if named is not None:  # every copy of a catalogue set has its columns
        return list(named[0].columns), set()
    reader = open_readers(src)[0]
    return reader.columns, reader.image_columns
