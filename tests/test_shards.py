"""Sharded preparation of pretraining data: workers, statistics, resuming after a kill, packed MLM
sequences, reading records by number, the tokenizer's bounded sample, a hub corpus."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_documents

from xformer.data.configs import DataConfig, TokenizerConfig
from xformer.data import prepare_pretraining_data, read_documents, split_sentences, train_wordpiece
from xformer.data.text import pretraining, shards
from xformer.data.text.corpus import corpus_parts, read_records
from xformer.data.text.pretraining import held_out
from xformer.data.text.tokenizer import tokenizer_sample
from xformer.errors import XformerError
from xformer.tasks import run

ARRAYS = ("token_starts", "lengths", "a_lengths", "nsp_labels", "doc_ids", "b_doc_ids")


@pytest.fixture(scope="module")
def tokenizer_dir(corpus_path, tmp_path_factory) -> Path:
    """One tokenizer for every preparation here, so their caches can be compared."""
    path = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece(read_documents(str(corpus_path)), TokenizerConfig(vocab_size=400)).save_pretrained(path)
    return path


def data_config(source: Path, tokenizer: Path, **kw) -> DataConfig:
    defaults = {"source": str(source), "val_documents": 20, "max_seq_len": 64, "dupe_factor": 2,
                "tokenizer": TokenizerConfig(path=str(tokenizer))}
    return DataConfig(**{**defaults, **kw})


def assert_same_examples(a, b) -> None:
    for name in ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert all(np.array_equal(x, y) for x, y in zip(a.input_ids, b.input_ids, strict=True))


@pytest.fixture(scope="module")
def sharded(corpus_path, tokenizer_dir, tmp_path_factory):
    """The 300-document corpus in shards of 50 documents, built by 2 worker processes."""
    cfg = data_config(corpus_path, tokenizer_dir, shard_documents=50, num_workers=2)
    return cfg, prepare_pretraining_data(cfg, tmp_path_factory.mktemp("cache"))


def test_workers_build_the_same_shards_as_one_process(sharded, tmp_path, capfd):
    cfg, two = sharded
    one = prepare_pretraining_data(cfg.model_copy(update={"num_workers": 1}), tmp_path)
    assert "in 1 process ..." in capfd.readouterr().err
    assert one.cache_path.name == two.cache_path.name  # the worker count is not part of the cache key
    assert len(two.train.input_ids) == 6 and two.train.meta["shards"] == [f"shard-{i:05d}" for i in range(6)]
    assert_same_examples(one.train, two.train)
    assert_same_examples(one.val, two.val)


def test_sharding_keeps_example_statistics(sharded, corpus_path, tokenizer_dir, tmp_path):
    cfg, many = sharded
    single = prepare_pretraining_data(cfg.model_copy(update={"shard_documents": 1000, "num_workers": 1}), tmp_path)
    assert len(single.train.input_ids) == 1
    a, b = single.train, many.train
    assert abs(a.nsp_labels.mean() - b.nsp_labels.mean()) < 0.03
    assert np.array_equal(b.nsp_labels == 1, b.doc_ids != b.b_doc_ids)
    assert (b.doc_ids // 50 == b.b_doc_ids // 50).all()  # a random B comes from the same shard (records 0-49, ...)
    assert abs(a.lengths.sum() / b.lengths.sum() - 1) < 0.02  # total tokens
    assert abs(len(a) / len(b) - 1) < 0.03
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(a.lengths, q) - np.quantile(b.lengths, q)) <= 2, q
    assert (a.lengths == cfg.max_seq_len).mean() == pytest.approx((b.lengths == cfg.max_seq_len).mean(), abs=0.03)
    held = set(held_out(300, cfg.val_documents, cfg.seed).tolist())
    assert set(a.doc_ids.tolist()).isdisjoint(held) and set(many.val.doc_ids.tolist()) == held


def test_sharded_preparation_trains(tiny_config, tmp_path, capfd):
    for workers in (1, 2):
        cfg = tiny_config(f"data.num_workers={workers}", "data.shard_documents=60", "train.max_steps=4",
                          f"data.cache_dir={tmp_path / f'cache{workers}'}", f"out_dir={tmp_path / f'run{workers}'}")
        result = run(cfg)
        assert result["step"] == 4 and math.isfinite(result["val"]["loss"])
        assert f"shards in {workers} process" in capfd.readouterr().err


def test_killed_preparation_resumes_to_the_same_cache(sharded, tmp_path, monkeypatch):
    cfg, straight = sharded
    cfg = cfg.model_copy(update={"num_workers": 1})
    build, built = shards.build_shard, []

    def killed_in_third_shard(job, ctx):
        if len(built) == 2:
            half = ctx.work / job.split / f".{job.name}.99999"  # what a kill leaves behind
            half.mkdir()
            (half / "input_ids.npy").write_bytes(b"half")
            raise KeyboardInterrupt
        built.append(job.name)
        return build(job, ctx)

    monkeypatch.setattr(shards, "build_shard", killed_in_third_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare_pretraining_data(cfg, tmp_path)
    entries = list((tmp_path / "pretraining").iterdir())
    assert [p.name for p in entries] == [f".{straight.cache_path.name}.partial"]  # nothing published
    monkeypatch.setattr(shards, "build_shard", lambda job, ctx: built.append(job.name) or build(job, ctx))
    resumed = prepare_pretraining_data(cfg, tmp_path)
    assert len(built) == 7  # val + 6 train shards, each built once
    assert [p.name for p in (tmp_path / "pretraining").iterdir()] == [straight.cache_path.name]
    assert not list(resumed.cache_path.glob("*/.shard-*"))
    assert_same_examples(resumed.train, straight.train)
    assert_same_examples(resumed.val, straight.val)


def die(*args) -> dict:
    """A shard builder whose process dies, as one killed for memory does."""
    os._exit(1)


def test_a_dead_worker_stops_preparation_with_an_error(corpus_path, tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pretraining, "build_nsp_shard", die)  # the builder runs in the spawned workers
    cfg = data_config(corpus_path, tokenizer_dir, shard_documents=100, num_workers=2)
    with pytest.raises(XformerError, match=r"data.num_workers=2: a worker process died .* run again to resume"):
        prepare_pretraining_data(cfg, tmp_path)


def test_packed_mlm_sequences(corpus_path, tokenizer_dir, tmp_path):
    cfg = data_config(corpus_path, tokenizer_dir, objective="mlm", shard_documents=100, num_workers=1)
    data = prepare_pretraining_data(cfg, tmp_path)
    tok, train, L = data.tokenizer, data.train, cfg.max_seq_len
    batch = train.batch(np.arange(0, len(train), 7))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}  # no next_sentence_label
    assert batch["input_ids"].shape == (len(range(0, len(train), 7)), L)
    assert (batch["input_ids"] != tok.pad_token_id).all()
    assert (batch["attention_mask"] == 1).all() and (batch["token_type_ids"] == 0).all()
    assert train.seq_len([0, 1]) == L and train.batch([0, 1], seq_len=L)["input_ids"].shape == (2, L)
    # each shard's rows are [CLS] + its training documents' tokens, [SEP] after each, in corpus order
    docs = make_documents(300)
    held = set(held_out(300, cfg.val_documents, cfg.seed).tolist())
    for s, rows in enumerate(train.input_ids):
        assert rows.shape[1] == L and (rows[:, 0] == tok.cls_token_id).all()
        stream = []
        for d in range(100 * s, 100 * (s + 1)):
            if d not in held:
                ids = tok(split_sentences(docs[d]), add_special_tokens=False)["input_ids"]
                stream += [t for sentence in ids for t in sentence] + [tok.sep_token_id]
        n = len(stream) // (L - 1)  # the tail that fills no row is dropped
        assert len(rows) == n and rows[:, 1:].ravel().tolist() == stream[: n * (L - 1)]
        doc_ids = train.doc_ids[train.starts[s] : train.starts[s + 1]]
        assert (np.diff(doc_ids) >= 0).all() and doc_ids.min() >= 100 * s and not held & set(doc_ids.tolist())
    assert len(data.val) > 0 and set(data.val.doc_ids.tolist()) <= held


def test_packed_mlm_trains(tiny_config):
    result = run(tiny_config("data.objective=mlm", "data.num_workers=1", "train.max_steps=4"))
    assert result["step"] == 4 and math.isfinite(result["val"]["loss"])


def test_read_records_across_files_and_row_groups(tmp_path):
    texts = [None if i % 9 == 4 else f"Doc {i}." for i in range(40)]
    pq.write_table(pa.table({"text": texts[:25]}), tmp_path / "a.parquet", row_group_size=7)
    pq.write_table(pa.table({"text": texts[25:]}), tmp_path / "b.parquet", row_group_size=4)
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    parts = corpus_parts(files)
    assert [p.records for p in parts] == [25, 15]
    ranges, skip = [(3, 12), (15, 16), (20, 34)], [5, 22, 30]
    got = [(i, t) for ids, batch in read_records(parts, ranges, skip=skip) for i, t in zip(ids.tolist(), batch)]
    wanted = [i for a, b in ranges for i in range(a, b) if i not in skip]
    assert got == [(i, texts[i] or "") for i in wanted]
    assert [p.records for p in corpus_parts(files, max_documents=30)] == [25, 5]
    assert [p.records for p in corpus_parts(files, max_documents=10)] == [10]


def test_text_files_stream_documents_as_before(tmp_path):
    text = "\ufeffOne.\nStill one.\n \t\nTwo.\n\n\n\nThree\r\n\r\nFour.\n\n"
    path = tmp_path / "a.txt"
    path.write_text(text, encoding="utf-8")
    old = [d.strip() for d in re.split(r"\n[ \t\r\f\v]*\n", text.removeprefix("\ufeff")) if d.strip()]
    assert read_documents(str(path)) == old == ["One.\nStill one.", "Two.", "Three", "Four."]
    got = [t for _, batch in read_records(corpus_parts([path]), [(1, 4)]) for t in batch]
    assert got == old[1:]


def test_tokenizer_sample_honours_the_character_budget():
    docs, pulled = make_documents(200), []

    def stream():
        for doc in docs:
            pulled.append(doc)
            yield doc

    sample = list(tokenizer_sample(stream(), None, 5000))
    assert sum(map(len, sample)) == 5000 and sample[:-1] == docs[: len(sample) - 1]
    assert len(pulled) == len(sample)  # nothing read beyond the budget
    assert list(tokenizer_sample(iter(docs), 3, 10**9)) == docs[:3]
    pulled.clear()
    train_wordpiece(stream(), TokenizerConfig(vocab_size=300, train_documents=None, train_chars=20_000))
    assert sum(map(len, pulled[:-1])) < 20_000 <= sum(map(len, pulled)) and len(pulled) < len(docs)


def test_hub_corpus_is_copied_once_and_prepared(tmp_path, tokenizer_dir, monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"text": make_documents(60), "n": list(range(60))})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = data_config("owner/corpus", tokenizer_dir, val_documents=5, max_documents=50, num_workers=1)
    data = prepare_pretraining_data(cfg, tmp_path)
    assert calls == [("owner/corpus", "train")] and data.train.meta["documents"] == 45
    assert [p.name for p in (tmp_path / "hub").iterdir()] and len(data.train) > 0
    assert prepare_pretraining_data(cfg, tmp_path).cache_path == data.cache_path and len(calls) == 1
