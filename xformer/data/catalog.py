"""Datasets by name: the catalogue of the datasets the recipes use, and where a name is found.

A catalogue name (``wikipedia``, ``cifar10``, ``flickr8k``, ``sst2``, ``sst2-sentences``), optionally with a
split (``sst2:validation``; a split in the value wins over the config's ``split`` key), stands wherever a data
source goes. It is looked up in this order, the first folder holding the split winning:

1. ``$XFORMER_DATA/<name>/`` (what ``data_prep/fetch.py NAME --out DIR`` writes) or, there, the set's
   historical folder (``wiki`` for wikipedia);
2. the data folder beside the project, ``../shared/data/<folder>/``, relative to the current directory and
   to the repository root;
3. the HF hub (``datasets.load_dataset``; streamed for large text corpora), unless it is offline
   (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``).

In a folder, split ``S`` is ``S.parquet`` or the shards ``S-*.parquet``; ``validation`` also answers to
``dev``, ``val`` and ``valid``. The hub copy is mapped onto the local columns (renamed, caption columns
combined into one list), so every source of a name reads the same. Adding a dataset is one :class:`Dataset`
in :data:`CATALOG`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from xformer.errors import XformerError

REPO_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # the data folder beside the repository
BESIDE = Path("..") / "shared" / "data"  # the same, relative to the current directory
SPLIT_ALIASES = ("validation", "dev", "val", "valid")  # one split, four spellings
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class Dataset:
    """One catalogue entry: its local folder and columns, and its HF hub copy and how that maps onto them."""

    name: str
    folder: str  # under a data folder, its historical name: "wiki", "sst2/sentences"
    columns: tuple[str, ...]  # the columns every copy holds (a local folder may hold more)
    hub: str  # HF hub id
    splits: tuple[str, ...]  # the hub's splits
    config: str | None = None  # HF config name
    rename: dict[str, str] = field(default_factory=dict)  # hub column -> local column
    combine: dict[str, tuple[str, ...]] = field(default_factory=dict)  # local list column <- hub columns
    streaming: bool = False  # stream from the hub rather than download whole (large text corpora)
    shard_rows: int | None = None  # fetch.py writes <split>-NNNNN.parquet shards of this many rows
    about: str = ""  # what it is, and where the hub copy differs from the local one


CATALOG: dict[str, Dataset] = {d.name: d for d in [
    Dataset("wikipedia", "wiki", ("id", "url", "title", "text"), "wikimedia/wikipedia", ("train",),
            config="20231101.en", streaming=True, shard_rows=50_000,
            about="English Wikipedia articles; locally a 29,192-article 2015 extract, on the hub the "
                  "2023-11-01 dump (6.4M articles: cap it with data.max_documents)"),
    Dataset("cifar10", "cifar10", ("img", "label"), "uoft-cs/cifar10", ("train", "test"),
            about="CIFAR-10, 32x32 RGB, 10 classes; locally the 50,000 training images only"),
    Dataset("flickr8k", "flickr8k", ("image", "captions"), "jxie/flickr8k", ("train", "validation", "test"),
            combine={"captions": tuple(f"caption_{i}" for i in range(5))},
            about="Flickr8k images with 5 captions each; validation is the official dev split "
                  "(locally dev.parquet, 128x128)"),
    Dataset("sst2", "sst2", ("sentence", "label"), "stanfordnlp/sst2", ("train", "validation", "test"),
            about="SST-2 (GLUE) phrases; locally train is 90% of the hub's train and validation the other "
                  "10% (6,735 phrases), on the hub validation is the 872 dev sentences"),
    Dataset("sst2-sentences", "sst2/sentences", ("sentence", "label"), "SetFit/sst2",
            ("train", "validation", "test"), rename={"text": "sentence"},
            about="SST-2 at the sentence level: 6,920 train / 872 validation sentences"),
]}


# ----------------------------------------------------------------------------- names and splits


def parse(entry: str) -> tuple[Dataset, str | None] | None:
    """``"name"`` or ``"name:split"`` -> (its entry, the split or None); None if ``entry`` names no entry."""
    name, _, split = entry.partition(":")
    dataset = CATALOG.get(name)
    return None if dataset is None else (dataset, split or None)


def split_names(split: str) -> list[str]:
    """``split`` and the other spellings of the same split, ``split`` first."""
    return [split] + [s for s in SPLIT_ALIASES if s != split] if split in SPLIT_ALIASES else [split]


def hub_split(dataset: Dataset, split: str) -> str | None:
    """The hub's name for ``split`` (``dev`` -> ``validation``), None if the hub copy has no such split."""
    return next((s for s in split_names(split) if s in dataset.splits), None)


def offline() -> bool:
    """True when the environment turns the HF hub off."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARS)


# ----------------------------------------------------------------------------- local folders


def search_dirs(dataset: Dataset) -> list[Path]:
    """The folders a name is looked for in, in order, absolute and without duplicates: under
    ``$XFORMER_DATA``, then beside the project (from the current directory, then from the repository)."""
    roots = [Path(os.environ["XFORMER_DATA"]).expanduser()] if os.environ.get("XFORMER_DATA") else []
    roots += [BESIDE, REPO_DATA]
    subs = dict.fromkeys((dataset.name, dataset.folder))
    return list(dict.fromkeys((root / sub).resolve() for root in roots for sub in subs))


def split_files(folder: Path, split: str) -> list[Path]:
    """``<split>.parquet`` or the shards ``<split>-*.parquet`` of ``folder`` (any spelling of the split)."""
    for name in split_names(split):
        files = sorted(p for p in [folder / f"{name}.parquet", *folder.glob(f"{name}-*.parquet")] if p.is_file())
        if files:
            return files
    return []


def local_files(dataset: Dataset, split: str) -> list[Path]:
    """The Parquet files of ``split`` in the first folder that holds it; empty if none does."""
    return next((files for d in search_dirs(dataset) if (files := split_files(d, split))), [])


# ----------------------------------------------------------------------------- the HF hub


def fetch_hint(dataset: Dataset) -> str:
    """How to get a catalogue set onto a machine that cannot reach the hub."""
    return (f"on a machine that reaches the hub run python data_prep/fetch.py {dataset.name} --out DIR, then "
            f"export XFORMER_DATA=DIR (or copy DIR/{dataset.name} to ../shared/data/{dataset.folder})")


def not_found(key: str, entry: str, dataset: Dataset, split: str, why: str) -> XformerError:
    """The one-line error for a name found in no folder and not on the hub: the folders searched, ``why``
    the hub did not answer, and how to fetch it."""
    where = ", ".join(map(str, search_dirs(dataset)))
    unset = "" if os.environ.get("XFORMER_DATA") else " ($XFORMER_DATA is not set)"
    return XformerError(
        f"{key} {entry!r}: no {split} split ({split}.parquet or {split}-*.parquet) in {where}{unset}, and {why}; "
        f"{fetch_hint(dataset)}"
    )


def check_hub(dataset: Dataset, split: str, key: str, entry: str) -> None:
    """Raise the one-line :func:`not_found` error unless the hub may be asked for ``split`` of ``dataset``."""
    if offline():
        raise not_found(key, entry, dataset, split, "the HF hub is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)")
    if hub_split(dataset, split) is None:
        raise not_found(key, entry, dataset, split,
                        f"{dataset.hub} on the HF hub has no such split (splits: {', '.join(dataset.splits)})")


def load_from_hub(dataset: Dataset, split: str):
    """``split`` of ``dataset`` from the HF hub (a ``datasets.Dataset``, or an ``IterableDataset`` when
    streamed), its columns mapped onto the local ones. Errors are the hub's own."""
    import datasets

    data = datasets.load_dataset(dataset.hub, dataset.config, split=hub_split(dataset, split) or split,
                                 streaming=dataset.streaming)
    for column, parts in dataset.combine.items():  # e.g. caption_0 .. caption_4 -> captions (a list per row)
        data = data.map(lambda *cols, column=column: {column: [list(row) for row in zip(*cols)]}, batched=True,
                        input_columns=list(parts), remove_columns=list(parts))
    if dataset.rename:
        data = data.rename_columns(dataset.rename)
    return data.select_columns(list(dataset.columns))
