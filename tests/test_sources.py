"""The data-source layer: resolving sources, picking columns, readers, the hub loader, fingerprints,
and the atomic cache publishing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xformer.data.configs import DataConfig
from xformer.data.cache import default_cache_dir, publish_dir
from xformer.data.readers import IMAGE_SUFFIXES, load_hub
from xformer.data.readers.columns import pick_column
from xformer.data.readers.jsonl import JsonLinesReader
from xformer.data.readers.parquet import ParquetReader
from xformer.data.readers.text import TextReader
from xformer.data.sources import resolve, source_fingerprint
from xformer.errors import XformerError


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- resolve


def test_resolve_files_folders_globs_and_lists_in_order_without_duplicates(tmp_path):
    a, b = touch(tmp_path / "a.parquet"), touch(tmp_path / "sub" / "b.jsonl")
    touch(tmp_path / "notes.md")
    assert resolve(str(tmp_path)).files == [a, b]  # recursive, sorted, other suffixes skipped
    assert resolve(str(tmp_path / "*.parquet")).files == [a]
    assert resolve([str(b), str(tmp_path), str(a)]).files == [b, a]
    only_parquet = resolve(str(tmp_path), suffixes=(".parquet",))
    assert only_parquet.kind == "files" and only_parquet.files == [a] and only_parquet.described == str(a)


def test_resolve_hub_names_and_image_folders(tmp_path):
    hub = resolve("owner/corpus", "data.val_source", split="validation")
    assert (hub.kind, hub.name, hub.split, hub.key) == ("hub", "owner/corpus", "validation", "data.val_source")
    assert resolve(["wikitext"]).kind == "hub"
    for cls in ("cat", "dog"):
        touch(tmp_path / "pics" / cls / f"{cls}.png")
    folder = resolve(str(tmp_path / "pics"), suffixes=(".parquet",), image_folder=True)
    assert folder.kind == "folder" and [p.parent.name for p in folder.files] == ["cat", "dog"]
    assert folder.described == str(tmp_path / "pics")


@pytest.mark.parametrize(
    "entry, kwargs, message",
    [
        ("missing.parquet", {}, "no such file or directory"),
        ("none-*.parquet", {}, "the pattern matches no .parquet/.txt"),
        ("notes.md", {}, "unsupported file type '.md'"),
        ("empty", {}, "directory has no .parquet/.txt"),
        ("empty", {"suffixes": (".parquet",), "image_folder": True}, "no class sub-folders with images"),
    ],
)
def test_resolve_errors_name_the_key_and_entry(tmp_path, entry, kwargs, message):
    touch(tmp_path / "notes.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(XformerError, match=message) as err:
        resolve(str(tmp_path / entry), "data.val_source", **kwargs)
    assert str(err.value).startswith("data.val_source '") and entry in str(err.value)
    with pytest.raises(XformerError, match="data.source is an empty list"):
        resolve([])


def test_image_suffixes_are_never_hub_names():
    with pytest.raises(XformerError, match="no such file"):
        resolve("owner/picture.png")
    assert ".png" in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------- columns


def test_pick_column_configured_or_first_candidate():
    names = ["id", "sentence", "label"]
    assert pick_column(names, None, ("text", "sentence"), "text_column", "f.parquet") == "sentence"
    assert pick_column(names, "id", ("text", "sentence"), "text_column", "f.parquet") == "id"
    with pytest.raises(XformerError) as err:
        pick_column(names, "body", (), "text_column", "f.parquet")
    assert str(err.value) == "f.parquet: no column 'body' (columns: id, sentence, label); set data.text_column"
    with pytest.raises(XformerError) as err:
        pick_column(names, None, ("captions",), "caption_column", "f.parquet")
    expected = "f.parquet: no caption column found (columns: id, sentence, label); set data.caption_column"
    assert str(err.value) == expected
    with pytest.raises(XformerError, match=r"f.jsonl line 3: no key 'text' \(keys: a\)"):
        pick_column(["a"], "text", (), "text_column", "f.jsonl line 3", field_name="key")


# ----------------------------------------------------------------------------- readers


def test_parquet_batches_and_corrupt_data(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": list(range(3000)), "b": ["x"] * 3000}), path, compression="snappy")
    batches = list(ParquetReader(path).batches(["a"]))
    assert sum(len(b["a"]) for b in batches) == 3000 and list(batches[0]) == ["a"]
    data = bytearray(path.read_bytes())
    for i in range(100, len(data) // 2, 7):  # scramble the data pages, keep the footer
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(XformerError, match=r"t.parquet: (corrupt Parquet data|not a Parquet file)"):
        list(ParquetReader(path).batches(["a", "b"]))


def test_text_and_jsonl_readers(tmp_path):
    path = touch(tmp_path / "a.txt", "\ufeffhello\n")
    assert list(TextReader(path).documents()) == ["hello\n"]  # the BOM is dropped
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(JsonLinesReader(lines).records()) == [(1, {"a": 1}), (3, {"a": 2})]
    lines.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(XformerError, match=r"b.jsonl line 2: not a JSON object per line \(a list\)"):
        list(JsonLinesReader(lines).records())
    lines.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(XformerError, match="b.jsonl line 2: not a JSON object per line"):
        list(JsonLinesReader(lines).records())


def test_hub_loader_offline_message(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'owner/set' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(XformerError) as err:
        load_hub("data.val_source", "owner/set", "dev", example="x/train.parquet")
    msg = str(err.value)
    assert msg.startswith("data.val_source 'owner/set': not a local path, and the HF hub is unreachable")
    assert "load_dataset('owner/set', split='dev').to_parquet('owner_set.parquet')" in msg
    assert "pass the local path, e.g. data.val_source=x/train.parquet" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- fingerprints


def test_source_fingerprint_follows_content_not_spelling_place_or_mtime(tmp_path):
    a = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["one"]}), a)
    fp = source_fingerprint(str(a))
    assert len(fp) == 16 and fp == source_fingerprint(str(tmp_path / "*.parquet")) == source_fingerprint([str(a)])
    assert fp == source_fingerprint(str(a), split="validation")  # a split names nothing in local files
    os.utime(a, ns=(1, 1))  # a copy or a new mount changes mtimes, not content
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(a, tmp_path / "elsewhere" / "a.parquet")
    assert source_fingerprint(str(a)) == fp == source_fingerprint(str(tmp_path / "elsewhere" / "a.parquet"))
    b = tmp_path / "elsewhere" / "b.parquet"
    b.write_bytes(a.read_bytes())
    assert source_fingerprint(str(b)) != fp  # another name is another file
    raw = bytearray(a.read_bytes())
    raw[-20] ^= 1  # same size, one bit changed
    (tmp_path / "elsewhere" / "a.parquet").write_bytes(bytes(raw))
    assert source_fingerprint(str(tmp_path / "elsewhere" / "a.parquet")) != fp
    pq.write_table(pa.table({"text": ["one", "two"]}), a)
    assert source_fingerprint(str(a)) != fp
    assert source_fingerprint("owner/set") != source_fingerprint("owner/set", split="test")
    for cls in ("cat", "dog"):
        touch(tmp_path / "pics" / cls / "1.png")
    before = source_fingerprint(str(tmp_path / "pics"))
    touch(tmp_path / "pics" / "dog" / "2.png")
    assert source_fingerprint(str(tmp_path / "pics")) != before
    before = source_fingerprint(str(tmp_path / "pics"))
    (tmp_path / "pics" / "dog" / "2.png").rename(tmp_path / "pics" / "cat" / "2.png")  # another label
    assert source_fingerprint(str(tmp_path / "pics")) != before


# ----------------------------------------------------------------------------- cache


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XFORMER_CACHE", str(tmp_path / "env"))
    assert default_cache_dir(DataConfig()) == tmp_path / "env"
    assert default_cache_dir(DataConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("XFORMER_CACHE")
    assert default_cache_dir(DataConfig()) == Path("~/.cache/xformer").expanduser()


def test_publish_dir_is_atomic_keeps_the_first_and_cleans_up(tmp_path):
    target = tmp_path / "cache" / "entry"
    with publish_dir(target) as work:
        assert work.is_dir() and not target.exists()
        (work / "a.json").write_text(json.dumps(1))
    assert json.loads((target / "a.json").read_text()) == 1
    with publish_dir(target) as work:  # another process got there first: theirs stays
        (work / "a.json").write_text(json.dumps(2))
    assert json.loads((target / "a.json").read_text()) == 1
    other = tmp_path / "cache" / "other"
    with pytest.raises(RuntimeError, match="build failed"), publish_dir(other) as work:
        (work / "half").write_text("x")
        raise RuntimeError("build failed")
    assert not other.exists() and os.listdir(tmp_path / "cache") == ["entry"]  # no temp dir left behind
