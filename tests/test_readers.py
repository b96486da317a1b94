"""The reader layer: one reader per format behind one interface, chosen by one registry; CSV / TSV (GLUE's own
files) read end to end through a corpus, labelled texts and ``xformer eval``'s data kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xformer.data.configs import TextClassificationDataConfig
from xformer.data.readers import (
    DATA_SUFFIXES,
    IMAGE_TABLE_SUFFIXES,
    READERS,
    TABLE_SUFFIXES,
    FolderReader,
    reader_for,
)
from xformer.data.readers.csv import CsvReader, TsvReader
from xformer.data.readers.text import TextReader
from xformer.data.sources import open_readers, resolve, source_columns
from xformer.data.text.corpus import corpus_parts, read_documents, read_records
from xformer.data.text.texts import load_text_data, read_labelled_texts
from xformer.errors import XformerError
from xformer.trained.evaluate import LABELLED_TEXTS, TEXTS, data_kind

TABLE = {
    "sentence": [f"sentence number {i}, with a comma" for i in range(2500)] + ["", "12"],
    "label": [i % 3 for i in range(2500)] + [1, 0],
}


def write_table(path: Path, table: dict = TABLE) -> Path:
    """``table`` as a file of the format ``path``'s suffix names."""
    names, rows = list(table), list(zip(*table.values()))
    suffix = path.suffix
    if suffix == ".parquet":
        pq.write_table(pa.table(table), path, row_group_size=1000)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(names, row))) + "\n" for row in rows))
    else:
        sep = "\t" if suffix == ".tsv" else ","
        quote = (lambda v: f'"{v}"' if "," in str(v) or v == "" else str(v)) if sep == "," else str
        path.write_text("\n".join(sep.join(map(quote, row)) for row in [names, *rows]) + "\n")
    return path


# ----------------------------------------------------------------------------- one table, four formats


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv", ".tsv"])
def test_every_table_format_reads_the_same_rows_and_columns(tmp_path, suffix):
    reader = reader_for(write_table(tmp_path / f"t{suffix}"))
    assert type(reader) is READERS[suffix]
    assert reader.columns == ["sentence", "label"] and reader.image_columns == set()
    assert reader.count() == 2502 and reader.count(7) == 7
    assert reader.pick(None, ("text", "sentence"), "text_column", text=True) == "sentence"
    batches = list(reader.batches(["sentence", "label"], text_column="sentence"))
    assert max(len(b["label"]) for b in batches) <= 1024
    assert sum((b["sentence"] for b in batches), []) == TABLE["sentence"]
    assert sum((b["label"] for b in batches), []) == TABLE["label"]
    middle = sum((b["label"] for b in reader.batches(["label"], 995, 2010)), [])
    assert middle == TABLE["label"][995:2010]  # across row groups / blocks / batches
    assert reader.identity[0] == str((tmp_path / f"t{suffix}").resolve())


def test_the_registry_chooses_by_suffix_and_the_uses_follow_from_it(tmp_path):
    assert set(DATA_SUFFIXES) == set(READERS) and {".csv", ".tsv"} <= set(TABLE_SUFFIXES)
    assert ".txt" not in TABLE_SUFFIXES and IMAGE_TABLE_SUFFIXES == (".parquet",)
    assert type(reader_for(tmp_path / "A.TSV")) is TsvReader
    with pytest.raises(XformerError, match=r"b.xlsx: unsupported file type '.xlsx' \(supported: .parquet, "):
        reader_for(tmp_path / "b.xlsx")
    assert resolve(str(write_table(tmp_path / "t.csv"))).files == [tmp_path / "t.csv"]


def test_text_files_have_one_column_that_answers_to_any_name(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("one\ntwo\n\n \nthree\n")
    reader = TextReader(path)
    assert reader.columns == ["text"] and reader.pick("body", (), "text_column") == "text"
    assert list(reader.batches(["body"])) == [{"body": ["one\ntwo\n", "three\n"]}]
    assert reader.count() == 2


def test_image_folder_reader(tmp_path):
    files = [tmp_path / "dog" / "1.png", tmp_path / "cat" / "2.png"]
    for f in files:
        f.parent.mkdir()
        f.write_bytes(b"x")
    reader = open_readers(resolve(str(tmp_path), image_folder=True))[0]
    assert isinstance(reader, FolderReader) and reader.image_columns == {"image"}
    assert list(reader.batches(["label", "image"])) == [{"label": [0, 1], "image": [str(files[1]), str(files[0])]}]
    assert reader.class_names("label") == ["cat", "dog"] and reader.count(1) == 1


# ----------------------------------------------------------------------------- CSV / TSV


def test_glue_tsv_with_stray_quotes_reads_every_row_verbatim(tmp_path):
    path = tmp_path / "dev.tsv"
    rows = ['" a stray quote opens this one', 'it \'s a "wonderful" film', 'the "end', "12"]
    path.write_text("sentence\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(rows)))
    reader = reader_for(path)
    assert reader.count() == 4
    assert list(reader.batches(["sentence", "label"], text_column="sentence")) == [
        {"sentence": rows, "label": [0, 1, 0, 1]}  # "12" is a text: the text column is read as strings
    ]
    texts, labels = read_labelled_texts(str(path), "train", TextClassificationDataConfig(), "--data")
    assert texts == rows and labels == [0, 1, 0, 1]


def test_csv_quoting_bom_and_malformed_files(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes('\ufefftext,label\n"one, quoted",1\n"two ""inner""",0\n'.encode())
    reader = CsvReader(path)
    assert reader.columns == ["text", "label"]  # the BOM is dropped
    assert list(reader.batches(["text"])) == [{"text": ["one, quoted", 'two "inner"']}]
    path.write_text("text,label\na,1\nb,2,3\n")
    with pytest.raises(XformerError) as err:
        list(CsvReader(path).batches(["text", "label"]))
    assert str(err.value).startswith(f"{path}: not a readable CSV file (") and "\n" not in str(err.value)
    path.write_bytes(b"text,label\n\xff\xfe,1\n")
    with pytest.raises(XformerError, match="a.csv: not a readable CSV file"):
        list(CsvReader(path).batches(["text"], text_column="text"))
    with pytest.raises(XformerError, match="no column 'body' .columns: text, label.; set data.text_column"):
        CsvReader(path).pick("body", (), "text_column")


def test_csv_and_tsv_corpus_end_to_end(tmp_path):
    csv = write_table(tmp_path / "a.csv", {"text": ["First doc. Two.", "", "Second, with comma."]})
    tsv = tmp_path / "b.tsv"
    tsv.write_text('text\tid\n"Third doc\t7\nFourth.\t8\n')
    assert read_documents([str(csv), str(tsv)]) == ["First doc. Two.", "Second, with comma.", '"Third doc', "Fourth."]
    parts = corpus_parts([csv, tsv])
    assert [p.records for p in parts] == [3, 2]
    (ids, texts), = list(read_records(parts[:1], [(1, 3)]))
    assert ids.tolist() == [1, 2] and texts == ["", "Second, with comma."]
    assert read_documents(str(tmp_path), max_documents=2) == ["First doc. Two.", "Second, with comma."]
    with pytest.raises(XformerError, match="b.tsv: no column 'body'"):
        read_documents(str(tsv), text_column="body")


def test_labelled_texts_from_csv_train_and_tsv_validation(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\n" + "".join(f"\"film {i}, {'good' if i % 2 else 'bad'}\",{i % 2}\n"
                                                 for i in range(20)))
    dev = tmp_path / "dev.tsv"
    dev.write_text('sentence\tlabel\n"a good film\t1\nbad\t0\n')
    cfg = TextClassificationDataConfig(source=str(train), val_source=str(dev), max_seq_len=16,
                                       tokenizer={"vocab_size": 120}, cache_dir=str(tmp_path / "cache"))
    data = load_text_data(cfg)
    assert len(data.train) == 20 and len(data.val) == 2 and data.class_names == ["0", "1"]
    assert data.val.labels.tolist() == [1, 0]
    assert data_kind(str(dev)).kind == LABELLED_TEXTS
    assert source_columns(str(train)) == (["sentence", "label"], set())
    assert data_kind(str(write_table(tmp_path / "t.tsv", {"text": ["a"]}))).kind == TEXTS


def test_stat_fingerprints_of_sources_without_csv_or_tsv_are_as_before(tmp_path):
    """Runs started before content fingerprints pinned the hash of the files' stats in RUN/data.json; a resume
    still compares with it, so for the formats read before CSV/TSV it is computed as it always was."""
    import hashlib

    from xformer.data.sources import file_stats, stat_fingerprint

    files = [write_table(tmp_path / "a.parquet"), write_table(tmp_path / "b.jsonl")]
    before = hashlib.sha256(json.dumps(file_stats(files)).encode()).hexdigest()[:16]
    assert stat_fingerprint(str(tmp_path)) == before
