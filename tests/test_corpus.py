"""Corpus reading: Parquet, text and JSON-lines files, errors, fingerprints, sentence splitting."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xformer.data import corpus_fingerprint, read_documents, split_sentences
from xformer.errors import XformerError
from conftest import shared_data



def write_parquet(path: Path, texts: list, column: str = "text") -> Path:
    pq.write_table(pa.table({"id": list(range(len(texts))), column: texts}), path)
    return path


def test_reads_parquet_dropping_empty_documents(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", ["First doc.\nSecond line.", "", "   ", None, "Last doc."])
    assert read_documents(str(path)) == ["First doc.\nSecond line.", "Last doc."]
    assert read_documents(str(path), max_documents=1) == ["First doc.\nSecond line."]


def test_reads_text_jsonl_directories_globs_and_lists(tmp_path):
    (tmp_path / "a.txt").write_text("Doc one.\nStill one.\n\n\nDoc two.\n \nDoc three.\n")
    records = [{"body": "Json one.", "n": 1}, None, {"body": "  "}, {"body": "Json two."}]  # None: a blank line
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" if r else "\n" for r in records))
    write_parquet(tmp_path / "c.parquet", ["Parquet one."], column="body")
    (tmp_path / "notes.md").write_text("ignored")
    assert read_documents(str(tmp_path / "a.txt")) == ["Doc one.\nStill one.", "Doc two.", "Doc three."]
    assert read_documents(str(tmp_path / "b.jsonl"), text_column="body") == ["Json one.", "Json two."]
    everything = ["Doc one.\nStill one.", "Doc two.", "Doc three.", "Json one.", "Json two.", "Parquet one."]
    assert read_documents(str(tmp_path), text_column="body") == everything  # sorted, .md skipped
    assert read_documents(str(tmp_path / "*.jsonl"), text_column="body") == ["Json one.", "Json two."]
    listed = [str(tmp_path / "c.parquet"), str(tmp_path / "a.txt")]
    assert read_documents(listed, text_column="body", max_documents=2) == ["Parquet one.", "Doc one.\nStill one."]


def test_missing_path_and_empty_glob(tmp_path):
    with pytest.raises(XformerError, match="no such file or directory") as err:
        read_documents(str(tmp_path / "missing.parquet"))
    assert "missing.parquet" in str(err.value)
    with pytest.raises(XformerError, match="matches no") as err:
        read_documents(str(tmp_path / "*.parquet"))
    assert str(tmp_path) in str(err.value)


def test_missing_column_names_file_column_and_available_columns(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", ["x"], column="body")
    with pytest.raises(XformerError) as err:
        read_documents(str(path), text_column="text")
    msg = str(err.value)
    assert "a.parquet" in msg and "'text'" in msg and "id, body" in msg and "\n" not in msg
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(XformerError, match="no key 'text' .keys: body."):
        read_documents(str(tmp_path / "b.jsonl"))


def test_empty_corpus_names_the_source(tmp_path):
    path = write_parquet(tmp_path / "blank.parquet", ["", "  \n "])
    with pytest.raises(XformerError, match="corpus is empty") as err:
        read_documents(str(path))
    assert "blank.parquet" in str(err.value)


def test_hub_name_that_cannot_be_loaded(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'owner/corpus' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(XformerError) as err:
        read_documents("owner/corpus")
    msg = str(err.value)
    assert "HF hub" in msg and "to_parquet" in msg and "data.source" in msg and "\n" not in msg


def test_fingerprint_follows_files_and_arguments(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", ["One.", "Two."])
    fp = corpus_fingerprint(str(path))
    assert fp == corpus_fingerprint(str(tmp_path / "*.parquet"))
    assert fp != corpus_fingerprint(str(path), max_documents=1)
    assert fp != corpus_fingerprint(str(path), text_column="body")
    write_parquet(path, ["One.", "Two.", "Three."])
    assert fp != corpus_fingerprint(str(path))
    assert corpus_fingerprint("owner/corpus") != corpus_fingerprint("owner/other")


def test_split_sentences():
    doc = (
        "History\n"
        'He said "Hi." Then he left. The U.S. economy grew! Did it? 1990 was a year.\n'
        "\n  \n"
        "it ends. lowercase does not split. (Brackets) do."
    )
    assert split_sentences(doc) == [
        "History",
        'He said "Hi."',
        "Then he left.",
        "The U.S. economy grew!",
        "Did it?",
        "1990 was a year.",
        "it ends. lowercase does not split.",
        "(Brackets) do.",
    ]
    assert split_sentences("  \n\n") == []


def test_reads_real_wiki_slice():
    docs = read_documents(str(shared_data("wiki") / "*.parquet"), max_documents=5)
    assert len(docs) == 5 and all(len(d) > 100 for d in docs)
    assert len(split_sentences(docs[0])) > 10
