"""Build the small samples shipped inside the package (``xformer/samples/``) from the full local sets.

    python data_prep/make_samples.py [--data ../shared/data] [--out xformer/samples]

Writes ``wikipedia-sample/train.parquet`` (the first 300 articles of the Wikipedia extract, each cut to its
first paragraphs up to 10,000 characters), ``cifar10-sample/train.parquet`` (the first 1,000 CIFAR-10 images,
JPEG bytes and labels as in the shared copy) and ``captions-sample/{train,validation}.parquet`` (the next
600 + 150 CIFAR-10 images, each with 5 synthetic captions written from its class name). The rows are the
first ones of the (already shuffled) shared copies and the captions come from a seeded generator, so the
same inputs give the same files, byte for byte. Sources and licences: ``xformer/samples/README.md``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WIKI_ARTICLES = 300
WIKI_CHARS = 10_000  # per article: tens of 128-token sequences each, small enough to ship
CIFAR_IMAGES = 1000
CAPTION_TRAIN, CAPTION_VAL = 600, 150
CAPTIONS_PER_IMAGE = 5
SEED = 0
# Caption templates: synthetic descriptions built only from the class name (no human wrote them).
CAPTION_TEMPLATES = [
    "a photo of a {c}.", "a small picture of a {c}.", "an image showing a {c}.", "a {c} in the picture.",
    "a low resolution photo of a {c}.", "there is a {c} here.", "a close up of a {c}.", "this is a {c}.",
    "a blurry image of a {c}.", "a picture with a {c} in it.",
]


def class_names(table: pa.Table, column: str = "label") -> list[str]:
    """The ClassLabel names recorded in the HF ``datasets`` metadata of ``table``."""
    meta = json.loads(table.schema.metadata[b"huggingface"])
    return meta["info"]["features"][column]["names"]


def cut(text: str, limit: int = WIKI_CHARS) -> str:
    """``text``'s leading paragraphs while they fit in ``limit`` characters (at least the first, cut)."""
    kept, size = [], 0
    for paragraph in text.split("\n"):
        if kept and size + len(paragraph) + 1 > limit:
            break
        kept.append(paragraph[:limit])
        size += len(paragraph) + 1
    return "\n".join(kept)


def wiki_sample(table: pa.Table) -> pa.Table:
    """The first :data:`WIKI_ARTICLES` articles of ``table`` (id, url, title, text), texts cut."""
    rows = table.slice(0, WIKI_ARTICLES)
    texts = [cut(t) for t in rows.column("text").to_pylist()]
    return rows.set_column(rows.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))


def cifar_sample(table: pa.Table) -> pa.Table:
    """The first :data:`CIFAR_IMAGES` rows of the CIFAR-10 table (img, label), metadata kept (class names)."""
    return table.select(["img", "label"]).slice(0, CIFAR_IMAGES)


def captions_for(label: str, rng: random.Random) -> list[str]:
    """:data:`CAPTIONS_PER_IMAGE` distinct synthetic captions of an image of class ``label``."""
    return [t.format(c=label) for t in rng.sample(CAPTION_TEMPLATES, CAPTIONS_PER_IMAGE)]


def caption_samples(table: pa.Table) -> dict[str, pa.Table]:
    """CIFAR-10 images after the CIFAR sample's, with synthetic captions: {"train": ..., "validation": ...}."""
    names = class_names(table)
    rng = random.Random(SEED)
    meta = {b"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "captions": {"feature": {"dtype": "string", "_type": "Value"},
                                                   "_type": "Sequence"}}}}).encode()}
    out, start = {}, CIFAR_IMAGES
    for split, n in (("train", CAPTION_TRAIN), ("validation", CAPTION_VAL)):
        rows = table.slice(start, n)
        captions = [captions_for(names[label], rng) for label in rows.column("label").to_pylist()]
        schema = pa.schema([("image", rows.schema.field("img").type), ("captions", pa.list_(pa.string()))], meta)
        out[split] = pa.Table.from_arrays([rows.column("img"), pa.array(captions)], schema=schema)
        start += n
    return out


def write(table: pa.Table, path: Path) -> None:
    """Write ``table`` as compressed Parquet at ``path`` (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", compression_level=19)


def build(data: Path, out: Path) -> list[Path]:
    """Write every sample under ``out`` from the shared sets under ``data``; the files written."""
    wiki = pq.read_table(data / "wiki" / "train-00000-of-00008.parquet")
    cifar = pq.read_table(data / "cifar10" / "train.parquet")
    files = {out / "wikipedia-sample" / "train.parquet": wiki_sample(wiki),
             out / "cifar10-sample" / "train.parquet": cifar_sample(cifar)}
    for split, table in caption_samples(cifar).items():
        files[out / "captions-sample" / f"{split}.parquet"] = table
    for path, table in files.items():
        write(table, path)
    return list(files)


def main(argv: list[str] | None = None) -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared" / "data", help="the full sets")
    parser.add_argument("--out", type=Path, default=here / "xformer" / "samples", help="where samples go")
    args = parser.parse_args(argv)
    for path in build(args.data, args.out):
        print(f"{path}: {path.stat().st_size / 1e3:.0f} kB, {pq.read_metadata(path).num_rows} rows")


if __name__ == "__main__":
    main()
