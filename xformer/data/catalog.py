"""Datasets by name: the catalogue of the datasets the recipes use, and where a name is found.

A catalogue name (``wikipedia``, ``cifar10``, ``flickr8k``, ``sst2``, ``sst2-sentences``, the GLUE tasks
``glue/cola`` ... ``glue/rte``), optionally with a split (``sst2:validation``; a split in the value wins over the
config's ``split`` key), stands wherever a data source goes. It is looked up in this order, the first folder
holding the split winning:

1. ``$XFORMER_DATA/<name>/`` (what ``data_prep/fetch.py NAME --out DIR`` writes) or, there, the set's
   historical folder (``wiki`` for wikipedia);
2. the data folder beside the project, ``../shared/data/<folder>/``, relative to the current directory and
   to the repository root;
3. the HF hub (``datasets.load_dataset``; streamed for large text corpora), unless it is offline
   (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``).

The samples shipped inside the package (``wikipedia-sample``, ``cifar10-sample``, ``captions-sample``; built
by ``data_prep/make_samples.py``, sources and licences in ``xformer/samples/README.md``) are found only there,
under their own names: a real name never falls back to a sample, and a sample never reads another folder.

In a folder, split ``S`` is ``S.parquet`` or the shards ``S-*.parquet``; ``validation`` also answers to
``dev``, ``val`` and ``valid`` (and, for a set whose validation splits have other names, such as MNLI's
``validation_matched``, to the first of its ``eval_splits``). An entry may send a split to another folder
(GLUE's SST-2: the phrases of ``sst2/`` to train on, the 872 dev sentences of ``sst2/sentences/`` to score).
The hub copy is mapped onto the local columns (renamed, caption columns combined into one list), so every
source of a name reads the same. Adding a dataset is one :class:`Dataset` in :data:`CATALOG`; an entry that
declares ``text_columns`` also fills the data keys of the text-classification task
(:class:`~xformer.data.configs.TextClassificationDataConfig`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from xformer.errors import XformerError, did_you_mean

REPO_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # the data folder beside the repository
BESIDE = Path("..") / "shared" / "data"  # the same, relative to the current directory
SPLIT_ALIASES = ("validation", "dev", "val", "valid")  # one split, four spellings
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
SAMPLES = Path(__file__).resolve().parents[1] / "samples"  # package data: the small embedded samples


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
    split_folders: dict[str, str] = field(default_factory=dict)  # split -> the folder holding it, if not `folder`
    # What a labelled-text task reads (the text_classification data keys these fill when a config leaves them
    # unset): one text column or a pair, the label column and its kind, the scores and the splits scored on.
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    label_type: str | None = None  # "class" | "regression"
    scores: tuple[str, ...] = ()  # names in xformer.trained.scores.SCORES; a task's score is their mean
    eval_splits: tuple[str, ...] = ()  # the splits a benchmark scores on, the first one during training
    packaged: bool = False  # a sample shipped in xformer/samples/<folder>/: looked for there only, no hub copy


def sample(name: str, columns: tuple[str, ...], splits: tuple[str, ...], about: str) -> Dataset:
    """The entry of a sample shipped inside the package, in ``xformer/samples/<name>/``."""
    return Dataset(name, name, columns, "", splits, about=about, packaged=True)


GLUE_HUB = "nyu-mll/glue"
GLUE_SPLITS = ("train", "validation", "test")
MNLI_EVAL = ("validation_matched", "validation_mismatched")


def glue(task: str, texts: tuple[str, ...], scores: tuple[str, ...], about: str, regression: bool = False,
         eval_splits: tuple[str, ...] = ("validation",), **more) -> Dataset:
    """The entry ``glue/<task>``: the hub's ``nyu-mll/glue`` config ``task``; locally ``glue/<task>/``."""
    splits = ("train", *eval_splits, *(s.replace("validation", "test") for s in eval_splits))
    return Dataset(f"glue/{task}", more.pop("folder", f"glue/{task}"), (*texts, "label"), GLUE_HUB, splits,
                   config=task, text_columns=texts, label_column="label",
                   label_type="regression" if regression else "class", scores=scores, eval_splits=eval_splits,
                   about=about, **more)


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
    glue("cola", ("sentence",), ("mcc",), "CoLA: is the sentence grammatical (1 acceptable); 8,551 / 1,043"),
    glue("sst2", ("sentence",), ("acc",), "SST-2 sentiment (1 positive); locally train is the 60,614 phrases of "
         "sst2/ (90% of GLUE's) and validation GLUE's 872 dev sentences (sst2/sentences/); on the hub GLUE's own",
         folder="sst2", split_folders={"validation": "sst2/sentences"}),
    glue("mrpc", ("sentence1", "sentence2"), ("f1", "acc"), "MRPC: do two news sentences paraphrase each other "
         "(1 yes); 3,668 / 408"),
    glue("stsb", ("sentence1", "sentence2"), ("pearson", "spearman"), "STS-B: similarity of two sentences, a float "
         "0-5; 5,749 / 1,500", regression=True),
    glue("qqp", ("question1", "question2"), ("f1", "acc"), "QQP: are two Quora questions duplicates (1 yes); "
         "hub only, 363,846 / 40,430"),
    glue("mnli", ("premise", "hypothesis"), ("acc",), "MNLI: entailment (0), neutral (1) or contradiction (2); "
         "hub only, 392,702 train, 9,815 matched / 9,832 mismatched validation", eval_splits=MNLI_EVAL),
    glue("qnli", ("question", "sentence"), ("acc",), "QNLI: does the sentence answer the question (0 yes); hub "
         "only, 104,743 / 5,463"),
    glue("rte", ("sentence1", "sentence2"), ("acc",), "RTE: does sentence1 entail sentence2 (0 yes); 2,490 / 277"),
    sample("wikipedia-sample", ("id", "url", "title", "text"), ("train",),
           "300 English Wikipedia articles (CC BY-SA 3.0), each cut to at most 10,000 characters; shipped"),
    sample("cifar10-sample", ("img", "label"), ("train",), "1,000 CIFAR-10 training images (JPEG); shipped"),
    sample("captions-sample", ("image", "captions"), ("train", "validation"),
           "750 other CIFAR-10 images with 5 synthetic captions each, written from the class name (600 / 150); "
           "shipped"),
]}
FAMILIES = ("glue/",)  # name prefixes the catalogue owns: an unknown name under one is a typo, not a hub id


# ----------------------------------------------------------------------------- names and splits


def parse(entry: str, key: str = "data source") -> tuple[Dataset, str | None] | None:
    """``"name"`` or ``"name:split"`` -> (its entry, the split or None); None if ``entry`` names no entry.
    A name under a catalogue family (``glue/...``) that is no entry is a one-line error naming ``key``."""
    name, _, split = entry.partition(":")
    dataset = CATALOG.get(name)
    if dataset is None:
        family = next((f for f in FAMILIES if name.startswith(f)), None)
        if family is not None:
            tasks = [n for n in CATALOG if n.startswith(family)]
            raise XformerError(f"{key} {entry!r}: no such dataset in the catalogue ({', '.join(tasks)})"
                               f"{did_you_mean(name, tasks)}")
    return None if dataset is None else (dataset, split or None)


def split_names(split: str, dataset: Dataset | None = None) -> list[str]:
    """``split`` and the other spellings of the same split, ``split`` first; for a ``dataset`` whose
    validation split has another name (MNLI's ``validation_matched``), that name last."""
    if split not in SPLIT_ALIASES:
        return [split]
    names = [split] + [s for s in SPLIT_ALIASES if s != split]
    return names + list(dataset.eval_splits[:1]) if dataset is not None else names


def hub_split(dataset: Dataset, split: str) -> str | None:
    """The hub's name for ``split`` (``dev`` -> ``validation``), None if the hub copy has no such split."""
    return next((s for s in split_names(split, dataset) if s in dataset.splits), None)


def offline() -> bool:
    """True when the environment turns the HF hub off."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARS)


# ----------------------------------------------------------------------------- local folders


def search_dirs(dataset: Dataset, split: str | None = None) -> list[Path]:
    """The folders a name (its ``split``) is looked for in, in order, absolute and without duplicates: under
    ``$XFORMER_DATA``, then beside the project (from the current directory, then from the repository); a
    packaged sample's one folder inside the package."""
    if dataset.packaged:
        return [SAMPLES / dataset.folder]
    roots = [Path(os.environ["XFORMER_DATA"]).expanduser()] if os.environ.get("XFORMER_DATA") else []
    roots += [BESIDE, REPO_DATA]
    folder = next((dataset.split_folders[s] for s in split_names(split or "") if s in dataset.split_folders),
                  dataset.folder)
    subs = dict.fromkeys((dataset.name, folder))
    return list(dict.fromkeys((root / sub).resolve() for root in roots for sub in subs))


def split_files(folder: Path, split: str, dataset: Dataset | None = None) -> list[Path]:
    """``<split>.parquet`` or the shards ``<split>-*.parquet`` of ``folder`` (any spelling of the split, and
    ``dataset``'s own name for it)."""
    for name in split_names(split, dataset):
        files = sorted(p for p in [folder / f"{name}.parquet", *folder.glob(f"{name}-*.parquet")] if p.is_file())
        if files:
            return files
    return []


def _check_layout(folder: Path, dataset: Dataset, key: str) -> None:
    """Refuse a folder of ``dataset`` under ``$XFORMER_DATA`` that exists but is not what fetch.py writes
    (Parquet splits at its top): falling through to another copy would read other data than the user put
    there, without a word."""
    if not folder.exists() or (folder.is_dir() and any(p.is_file() for p in folder.glob("*.parquet"))):
        return
    if folder.is_dir():
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        what = f"holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''}" if held else "is empty"
    else:
        what = "is a file, not a folder"
    raise XformerError(
        f"{key} {dataset.name!r}: {folder} (under $XFORMER_DATA) {what}, not the Parquet splits of "
        f"{dataset.name} (<split>.parquet or <split>-*.parquet at its top); run python data_prep/fetch.py "
        f"{dataset.name} --out $XFORMER_DATA again, or move that folder away")


_TOLD: set[tuple[str, str, Path]] = set()  # (name, split, folder) already reported in this process


def _tell_choice(dataset: Dataset, split: str, used: Path, dirs: list[Path]) -> None:
    """One stderr line, once per process, when ``dataset`` is held in more than one folder: which one
    ``split`` is read from, and the others (the first folder in the search order wins)."""
    others = [d for d in dirs if d != used and d.is_dir() and any(d.glob("*.parquet"))]
    if not others or (dataset.name, split, used) in _TOLD:
        return
    _TOLD.add((dataset.name, split, used))
    print(f"[data] {dataset.name}:{split}: reading {used} (also found in {', '.join(map(str, others))}; "
          f"the first in the search order wins: $XFORMER_DATA, then ../shared/data)", file=sys.stderr, flush=True)


def local_files(dataset: Dataset, split: str, key: str = "data source") -> list[Path]:
    """The Parquet files of ``split`` in the first folder that holds it; empty if none does. A folder of the
    set under ``$XFORMER_DATA`` without the expected layout is a one-line error naming ``key``; when the set
    is in several folders, one stderr line says which was read."""
    dirs = search_dirs(dataset, split)
    env = os.environ.get("XFORMER_DATA")
    root = Path(env).expanduser().resolve() if env else None
    for folder in dirs:
        if root is not None and folder.is_relative_to(root):
            _check_layout(folder, dataset, key)
    for folder in dirs:
        files = split_files(folder, split, dataset)
        if files:
            _tell_choice(dataset, split, folder, dirs)
            return files
    return []


# ----------------------------------------------------------------------------- the HF hub


def fetch_hint(dataset: Dataset) -> str:
    """How to get a catalogue set onto a machine that cannot reach the hub."""
    if dataset.packaged:
        return f"{dataset.name} ships inside the package (xformer/samples/); reinstall xformer to restore it"
    beside = dataset.name if dataset.split_folders else dataset.folder  # its splits' own folders are elsewhere
    return (f"on a machine that reaches the hub run python data_prep/fetch.py {dataset.name} --out DIR, then "
            f"export XFORMER_DATA=DIR (or copy DIR/{dataset.name} to ../shared/data/{beside})")


def not_found(key: str, entry: str, dataset: Dataset, split: str, why: str) -> XformerError:
    """The one-line error for a name found in no folder and not on the hub: the folders searched, ``why``
    the hub did not answer, and how to fetch it."""
    where = ", ".join(map(str, search_dirs(dataset, split)))
    unset = "" if os.environ.get("XFORMER_DATA") else " ($XFORMER_DATA is not set)"
    return XformerError(
        f"{key} {entry!r}: no {split} split ({split}.parquet or {split}-*.parquet) in {where}{unset}, and {why}; "
        f"{fetch_hint(dataset)}"
    )


def check_hub(dataset: Dataset, split: str, key: str, entry: str) -> None:
    """Raise the one-line :func:`not_found` error unless the hub may be asked for ``split`` of ``dataset``."""
    if dataset.packaged:
        raise not_found(key, entry, dataset, split, f"a packaged sample has no hub copy (splits: "
                        f"{', '.join(dataset.splits)})")
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
