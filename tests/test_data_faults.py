"""Malformed data gives one-line XformerErrors (or one-line warnings), never a traceback or a silent
wrong result: undecodable text, files that are not Parquet, non-text columns, float or single-class
labels, blank texts and captions, degenerate NSP labels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xformer.data.configs import (
    CaptionDataConfig,
    DataConfig,
    ImageDataConfig,
    TextClassificationDataConfig,
    TokenizerConfig,
)
from xformer.data.image.captions import load_pairs
from xformer.data.text.corpus import read_documents
from xformer.data.image.images import load_image_data
from xformer.data.text.pretraining import prepare_pretraining_data
from xformer.data.text.texts import load_text_data, read_labelled_texts
from xformer.errors import XformerError

NOT_UTF8 = b"caf\xe9 au lait\n\n\xff\xfe binary \x00\x01\x02"


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def images_parquet(path: Path, labels: list, extra: dict | None = None) -> Path:
    table = {"img": [{"bytes": png(i), "path": None} for i in range(len(labels))], "label": labels}
    pq.write_table(pa.table({**table, **(extra or {})}), path)
    return path


def texts_parquet(path: Path, texts: list, labels: list) -> Path:
    pq.write_table(pa.table({"sentence": texts, "label": labels}), path)
    return path


def one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg
    return msg


def text_cfg(source, **kw) -> TextClassificationDataConfig:
    return TextClassificationDataConfig(source=str(source), val_size=0, **kw)


# ----------------------------------------------------------------------------- 1. not UTF-8


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.jsonl"])
def test_corpus_file_that_is_not_utf8(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(NOT_UTF8)
    with pytest.raises(XformerError) as err:
        read_documents(str(path))
    one_line(err, name, "not UTF-8 text")


def test_corpus_text_file_with_nul_bytes(tmp_path):
    path = tmp_path / "zeros.txt"
    path.write_bytes(b"Real words.\n\n" + bytes(64))
    with pytest.raises(XformerError) as err:
        read_documents(str(path))
    one_line(err, "zeros.txt", "not UTF-8 text")


def test_labelled_texts_jsonl_that_is_not_utf8(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_bytes(b'{"sentence": "fine", "label": 1}\n' + b'{"sentence": "caf\xe9", "label": 0}\n')
    with pytest.raises(XformerError) as err:
        read_labelled_texts(str(path), "train", text_cfg(path), "data.source")
    one_line(err, "texts.jsonl", "not UTF-8 text")


def test_parquet_strings_that_are_not_utf8(tmp_path):
    offsets = pa.py_buffer(np.array([0, 8, 11], dtype=np.int32).tobytes())
    strings = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"Fine doc\xff\xfeA")])
    path = tmp_path / "bad_strings.parquet"
    pq.write_table(pa.table({"text": strings, "label": [0, 1]}), path)  # Arrow writes what it is given
    for load in (lambda: read_documents(str(path)),
                 lambda: read_labelled_texts(str(path), "train", text_cfg(path), "data.source")):
        with pytest.raises(XformerError) as err:
            load()
        one_line(err, "bad_strings.parquet", "corrupt Parquet data", "UTF8")


# ----------------------------------------------------------------------------- 2. not Parquet


@pytest.fixture(params=["random bytes", "renamed text", "empty", "truncated"])
def fake_parquet(request, tmp_path) -> Path:
    path = tmp_path / "data.parquet"
    if request.param == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif request.param == "renamed text":
        path.write_text("sentence,label\nhello,1\n")
    elif request.param == "empty":
        path.write_bytes(b"")
    else:
        images_parquet(path, [0, 1])
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def test_not_parquet_in_every_reader(tmp_path, fake_parquet):
    name = fake_parquet.name
    loaders = {
        "corpus": lambda: read_documents(str(fake_parquet)),
        "images": lambda: load_image_data(ImageDataConfig(source=str(fake_parquet)), tmp_path / "cache"),
        "captions": lambda: load_pairs(str(fake_parquet), "train", "data.source", CaptionDataConfig(),
                                        tmp_path / "cache"),
        "labelled texts": lambda: read_labelled_texts(str(fake_parquet), "train", text_cfg(fake_parquet),
                                                      "data.source"),
    }
    for load in loaders.values():
        with pytest.raises(XformerError) as err:
            load()
        one_line(err, name, "not a Parquet file")


def test_not_parquet_as_a_later_image_file(tmp_path):
    good = images_parquet(tmp_path / "a.parquet", [0, 1, 0, 1])
    (tmp_path / "b.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(XformerError) as err:
        load_image_data(ImageDataConfig(source=[str(good), str(tmp_path / "b.parquet")]), tmp_path / "cache")
    one_line(err, "b.parquet", "not a Parquet file")


def test_duplicate_column_names(tmp_path):
    path = tmp_path / "dup.parquet"
    table = pa.Table.from_arrays([pa.array(["a doc.", "b doc."]), pa.array(["x", "y"]), pa.array([0, 1])],
                                 names=["text", "text", "label"])
    pq.write_table(table, path)
    with pytest.raises(XformerError) as err:
        read_documents(str(path))
    one_line(err, "dup.parquet", "2 columns are named 'text'")


# ----------------------------------------------------------------------------- 3. text columns that are not text


@pytest.mark.parametrize(
    "values, type_name",
    [([1, 2, 3], "int64"), ([{"a": 1}, {"a": 2}, {"a": 3}], "struct"), ([b"x", b"y", b"z"], "binary")],
)
def test_corpus_column_that_is_not_text(tmp_path, values, type_name):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["a doc."] * 3, "label": values}), path)
    with pytest.raises(XformerError) as err:
        read_documents(str(path), text_column="label")
    msg = one_line(err, f"column 'label' of {path} holds {type_name}", "not text; set data.text_column")
    assert "empty" not in msg


def test_corpus_jsonl_value_that_is_not_text(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "A doc."}) + "\n" + json.dumps({"text": 7}) + "\n")
    with pytest.raises(XformerError) as err:
        read_documents(str(path))
    one_line(err, "column 'text' of", "c.jsonl line 2 holds int values, not text; set data.text_column")


def test_labelled_text_column_that_is_not_text(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"sentence": ["good", "bad"], "score": [1, 0], "label": [1, 0]}), path)
    with pytest.raises(XformerError) as err:
        read_labelled_texts(str(path), "train", text_cfg(path, text_column="score"), "data.source")
    one_line(err, f"column 'score' of {path} holds int64 values, not text; set data.text_column")
    lines = tmp_path / "t.jsonl"
    lines.write_text(json.dumps({"sentence": ["a", "list"], "label": 1}) + "\n")
    with pytest.raises(XformerError) as err:
        read_labelled_texts(str(lines), "train", text_cfg(lines), "data.source")
    one_line(err, "holds list values, not text")


def test_caption_column_that_is_not_text(tmp_path):
    path = images_parquet(tmp_path / "p.parquet", [0, 1], extra={"captions": [3, 4]})
    with pytest.raises(XformerError) as err:
        load_pairs(str(path), "train", "data.source", CaptionDataConfig(), tmp_path / "cache")
    one_line(err, "p.parquet row 0", "'captions' holds int values, not caption text; set data.caption_column")


# ----------------------------------------------------------------------------- 4. float labels


def test_image_float_labels_must_be_whole_numbers(tmp_path):
    whole = images_parquet(tmp_path / "whole.parquet", [0.0, 1.0, 2.0, 1.0])
    data = load_image_data(ImageDataConfig(source=str(whole), val_size=0), tmp_path / "cache")
    assert data.class_names == ["0", "1", "2"] and data.train.labels.tolist() == [0, 1, 2, 1]
    bad = images_parquet(tmp_path / "bad.parquet", [0.0, 1.0, 0.7, 1.0])
    with pytest.raises(XformerError) as err:
        load_image_data(ImageDataConfig(source=str(bad), val_size=0), tmp_path / "cache")
    one_line(err, "bad.parquet row 2", "label 0.7 is not a whole number",
             "classification needs integer or string class labels")


def test_text_float_labels_must_be_whole_numbers(tmp_path):
    whole = texts_parquet(tmp_path / "whole.parquet", ["a", "b", "c"], [1.0, 0.0, 1.0])
    assert read_labelled_texts(str(whole), "train", text_cfg(whole), "data.source")[1] == [1, 0, 1]
    bad = texts_parquet(tmp_path / "bad.parquet", ["a", "b", "c"], [1.0, 0.7, float("nan")])
    with pytest.raises(XformerError) as err:
        read_labelled_texts(str(bad), "train", text_cfg(bad), "data.source")
    one_line(err, "bad.parquet", "row 1", "label 0.7 is not a whole number")


def test_text_labels_mixing_numbers_and_strings(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [("a", 1), ("b", "pos")]))
    with pytest.raises(XformerError) as err:
        read_labelled_texts(str(path), "train", text_cfg(path), "data.source")
    one_line(err, "mixed.jsonl", "labels mix numbers (1) and strings ('pos')")


# ----------------------------------------------------------------------------- 5. one class only


def test_images_of_one_class(tmp_path):
    path = images_parquet(tmp_path / "one.parquet", [3] * 12)
    with pytest.raises(XformerError) as err:
        load_image_data(ImageDataConfig(source=str(path), val_size=2), tmp_path / "cache")
    one_line(err, "one.parquet", "all 10 training labels are 3: classification needs at least 2 classes")
    evaluated = load_image_data(ImageDataConfig(source=str(path), val_size=0), tmp_path / "cache", for_training=False)
    assert evaluated.class_names == ["3"] and len(evaluated.train) == 12  # evaluating on one class is fine


def test_texts_of_one_class(tmp_path):
    path = texts_parquet(tmp_path / "one.parquet", [f"text {i}" for i in range(8)], ["pos"] * 8)
    with pytest.raises(XformerError) as err:
        load_text_data(text_cfg(path, cache_dir=str(tmp_path / "cache")))
    one_line(err, "one.parquet", "all 8 training labels are 'pos': classification needs at least 2 classes")


# ----------------------------------------------------------------------------- 6. blank texts and captions


def test_blank_texts_are_dropped_with_one_warning(tmp_path, capsys):
    path = texts_parquet(tmp_path / "t.parquet", ["good film", "", "  \n", None, "bad film", "fine"],
                         [1, 0, 1, 0, 0, 1])
    texts, labels = read_labelled_texts(str(path), "train", text_cfg(path), "data.source")
    assert texts == ["good film", "bad film", "fine"] and labels == [1, 0, 1]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "dropped" in line]
    assert warnings == [f"[data] data.source {path}: dropped 3 of 6 examples whose text is empty or whitespace"]
    blank = texts_parquet(tmp_path / "blank.parquet", ["", " "], [0, 1])
    with pytest.raises(XformerError) as err:
        read_labelled_texts(str(blank), "train", text_cfg(blank), "data.source")
    one_line(err, "blank.parquet", "empty or whitespace")


def test_blank_captions_are_missing_and_captionless_images_dropped(tmp_path, capsys):
    captions = [["a red square", "   "], ["", None], ["blue", "the colour blue"], None]
    path = images_parquet(tmp_path / "pairs.parquet", [0, 1, 2, 3], extra={"captions": captions})
    images, caps = load_pairs(str(path), "train", "data.source", CaptionDataConfig(), tmp_path / "cache")
    assert caps.tolist() == [["a red square", ""], ["blue", "the colour blue"]]
    assert images[:, 0, 0, 0].tolist() == [0, 2]  # the images of rows 0 and 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if "dropped" in line]
    assert len(warnings) == 1 and "dropped 2 of 4 images with no caption" in warnings[0]
    none = images_parquet(tmp_path / "none.parquet", [0, 1], extra={"captions": [" ", ""]})
    with pytest.raises(XformerError) as err:
        load_pairs(str(none), "train", "data.source", CaptionDataConfig(), tmp_path / "cache")
    one_line(err, "none.parquet", "no image has a caption")


# ----------------------------------------------------------------------------- 7. degenerate NSP


def nsp_config(tmp_path, docs: list[str], **kw) -> DataConfig:
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": docs}), path)
    defaults = {"source": str(path), "val_documents": 0, "max_seq_len": 32,
                "tokenizer": TokenizerConfig(vocab_size=120)}
    return DataConfig(**{**defaults, **kw})


def sentences(d: int, n: int) -> str:
    return " ".join(f"Doc {d} says thing {s} about alpha beta." for s in range(n))


def assert_nothing_cached(tmp_path):
    cached = tmp_path / "cache" / "pretraining"
    assert not cached.exists() or not any(p.name.startswith("bert-") for p in cached.iterdir())


def test_nsp_single_document_has_no_random_pairs(tmp_path):
    cfg = nsp_config(tmp_path, [sentences(0, 40)])
    with pytest.raises(XformerError) as err:
        prepare_pretraining_data(cfg, tmp_path / "cache")
    one_line(err, "NSP labels are 0% 'random'", "examples)", "1 document with sentences")
    assert_nothing_cached(tmp_path)


def test_nsp_one_sentence_documents_are_all_random(tmp_path):
    cfg = nsp_config(tmp_path, [sentences(d, 1) for d in range(30)])
    with pytest.raises(XformerError) as err:
        prepare_pretraining_data(cfg, tmp_path / "cache")
    one_line(err, "NSP labels are 100% 'random' (30 examples)", "every document has one sentence")
    assert_nothing_cached(tmp_path)


def test_nsp_share_far_from_the_setting_is_warned_about(tmp_path, capsys):
    docs = [sentences(d, 1) for d in range(60)] + [sentences(60 + d, 12) for d in range(4)]
    data = prepare_pretraining_data(nsp_config(tmp_path, docs), tmp_path / "cache")
    share = float(np.asarray(data.train.nsp_labels).mean())
    assert share > 0.6
    warnings = [line for line in capsys.readouterr().err.splitlines() if "NSP" in line]
    assert len(warnings) == 1 and warnings[0].startswith("[data] warning: ")
    assert f"NSP labels are {share:.0%} 'random'" in warnings[0] and "data.nsp_random_prob" in warnings[0]
