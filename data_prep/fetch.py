"""Download a catalogue dataset from the HF hub into the Parquet layout the catalogue reads.

    python data_prep/fetch.py NAME --out DIR [--split S ...] [--max-rows N] [--overwrite]

Writes ``DIR/NAME/<split>.parquet`` (``<split>-NNNNN.parquet`` shards for large sets such as wikipedia), with
the catalogue's columns (see ``xformer/data/catalog.py``), every split of the hub copy unless ``--split``
names some. A new folder appears whole (written beside it, then renamed); splits fetched into an existing
folder replace only their own files, and only with ``--overwrite`` when that split is already there (nothing
is fetched before that is known). Then ``export XFORMER_DATA=DIR`` (or copy ``DIR/NAME`` beside the
project as ``../shared/data/<folder>``) and use NAME as a data source, e.g. ``data.source: NAME``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from xformer.data import catalog
from xformer.errors import XformerError, os_error_line

BATCH_ROWS = 1000  # rows read from the hub and written at a time


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def write_split(data, folder: Path, split: str, shard_rows: int | None) -> int:
    """Write ``data`` (a ``datasets.Dataset`` or ``IterableDataset``) as ``folder/<split>.parquet``, or as
    shards of ``shard_rows`` rows, batch by batch; the number of rows written."""
    batch_rows = min(BATCH_ROWS, shard_rows or BATCH_ROWS)  # a batch never straddles two shards
    writer, rows, shard_start, shards = None, 0, 0, 0
    try:
        for table in data.with_format("arrow").iter(batch_size=batch_rows):  # encoded images stay encoded
            if writer is None or (shard_rows is not None and rows - shard_start >= shard_rows):
                if writer is not None:
                    writer.close()
                name = f"{split}.parquet" if shard_rows is None else f"{split}-{shards:05d}.parquet"
                writer, shard_start, shards = pq.ParquetWriter(folder / name, table.schema), rows, shards + 1
            writer.write_table(table.cast(writer.schema))  # a stream infers each batch's types anew
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _split_files(folder: Path, split: str) -> list[Path]:
    return [p for p in [folder / f"{split}.parquet", *sorted(folder.glob(f"{split}-*.parquet"))] if p.exists()]


def _publish(work: Path, target: Path, splits: list[str]) -> None:
    """Move the fetched ``splits`` from ``work`` to ``target``: one rename for a new folder, else file by file,
    each new file first, then the split's old files the new ones did not replace (a split is never absent)."""
    if not target.exists():
        os.rename(work, target)
        return
    for split in splits:
        new = _split_files(work, split)
        for file in new:
            os.replace(file, target / file.name)
        for old in _split_files(target, split):
            if old.name not in {f.name for f in new}:
                old.unlink(missing_ok=True)


def check_target(target: Path, splits: list[str], overwrite: bool) -> None:
    """Refuse, before any download, a target that is a file, or split files already there without ``overwrite``."""
    for above in [target, *target.parents]:
        if above.exists() and not above.is_dir():
            raise XformerError(f"--out: {above} is a file, not a folder; choose another --out")
        if above.exists():
            break
    if target.is_dir() and not overwrite:
        found = next((f for split in splits for f in _split_files(target, split)), None)
        if found is not None:
            raise XformerError(f"{found} already exists; pass --overwrite to fetch it again, or choose another --out")


def fetch(name: str, out: Path, splits: list[str] | None = None, max_rows: int | None = None,
          overwrite: bool = False) -> Path:
    """Fetch catalogue set ``name`` from the hub into ``out/name``; returns that folder. Split files already
    there are replaced only with ``overwrite``; a failed write (disk full, read-only) leaves them as they were."""
    dataset = catalog.CATALOG.get(name)
    if dataset is None:
        raise XformerError(f"fetch {name!r}: not a catalogue name (names: {', '.join(catalog.CATALOG)})")
    if catalog.offline():
        raise XformerError(f"fetch {name!r}: the HF hub is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); "
                           f"{catalog.fetch_hint(dataset)}")
    hub_splits = []
    for split in splits or dataset.splits:
        found = catalog.hub_split(dataset, split)
        if found is None:
            raise XformerError(f"fetch {name!r}: {dataset.hub} has no split {split!r} "
                               f"(splits: {', '.join(dataset.splits)})")
        hub_splits.append(found)
    check_target(out / name, hub_splits, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))  # same file system: the rename is atomic
    except OSError as err:
        raise XformerError(f"fetch {name!r}: {os_error_line(err, 'cannot write in --out')}") from None
    try:
        for split in dict.fromkeys(hub_splits):
            try:
                data = catalog.load_from_hub(dataset, split)
                rows = write_split(data if max_rows is None else data.take(max_rows), work, split,
                                   dataset.shard_rows)
            except Exception as err:  # no network, hub trouble, a full disk: report it on one line
                raise XformerError(f"fetch {name!r} split {split!r}: downloading or writing failed "
                                   f"({_first_line(err)}); {catalog.fetch_hint(dataset)}") from None
            if rows == 0:
                raise XformerError(f"fetch {name!r} split {split!r}: the hub copy has no rows")
            print(f"{name} {split}: {rows} rows", flush=True)
        try:
            _publish(work, out / name, hub_splits)
        except OSError as err:
            raise XformerError(f"fetch {name!r}: {os_error_line(err, 'could not move fetched files')}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out / name


def main(argv: list[str] | None = None) -> int:
    """Fetch one catalogue set; the exit code (2 with one ``error:`` line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"catalogue name: {', '.join(catalog.CATALOG)}")
    parser.add_argument("--out", required=True, type=Path, help="the data folder: NAME/ is written inside it")
    parser.add_argument("--split", action="append", help="a split to fetch (repeatable; default: all)")
    parser.add_argument("--max-rows", type=int, help="the first N rows of each split only (e.g. a Wikipedia sample)")
    parser.add_argument("--overwrite", action="store_true", help="fetch again splits the folder already holds")
    args = parser.parse_args(argv)
    try:
        folder = fetch(args.name, args.out, args.split, args.max_rows, args.overwrite)
    except XformerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {folder}; use it with: export XFORMER_DATA={args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
