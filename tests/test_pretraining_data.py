"""BERT pretraining examples: NSP rate and provenance, format, cache, tokenizer round trip."""

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

import xformer.data.text.pretraining as pretraining
import xformer.data.text.shards as shards
import xformer.data.text.tokenizer as tokenizer_module
from xformer.data.configs import DataConfig, TokenizerConfig
from xformer.data import PretrainingData, prepare_pretraining_data, split_sentences
from xformer.data.text.sentence_pairs import trim_counts
from xformer.errors import XformerError
from conftest import shared_data

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud".split()


def synthetic_documents(n_docs: int = 80, n_sentences: int = 150, seed: int = 0) -> list[str]:
    """Documents of distinct sentences ("Doc 3 line 17 ..."), a few per line."""
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        sentences = [
            f"Doc {d} line {s} " + " ".join(rng.choices(WORDS, k=rng.randint(2, 10))) + "."
            for s in range(n_sentences)
        ]
        docs.append("\n".join(" ".join(sentences[i : i + 4]) for i in range(0, n_sentences, 4)))
    return docs


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.parquet"
    pq.write_table(pa.table({"text": synthetic_documents()}), path)
    return path


def config(source: Path, **kw) -> DataConfig:
    defaults = dict(source=str(source), max_seq_len=128, val_documents=8, dupe_factor=5,
                    tokenizer=TokenizerConfig(vocab_size=200))
    return DataConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def prepared(corpus_file, tmp_path_factory) -> tuple[DataConfig, Path, PretrainingData]:
    cfg, cache = config(corpus_file), tmp_path_factory.mktemp("cache")
    return cfg, cache, prepare_pretraining_data(cfg, cache)


def token_text(ids) -> str:
    return " " + " ".join(map(str, ids)) + " "


def test_nsp_labels_and_provenance(prepared):
    cfg, _, data = prepared
    train = data.train
    labels, doc, b_doc = np.asarray(train.nsp_labels), np.asarray(train.doc_ids), np.asarray(train.b_doc_ids)
    assert len(train) > 5000
    assert abs(labels.mean() - 0.5) < 0.02
    assert np.array_equal(labels == 1, b_doc != doc)  # random B always from another document
    # A and B really are runs of tokens of the documents they claim to come from
    docs = synthetic_documents()
    tok = data.tokenizer
    streams = {}
    for i in np.random.default_rng(0).choice(len(train), 300, replace=False):
        ids = train.example(i).tolist()
        a, b = ids[1 : train.a_lengths[i] - 1], ids[train.a_lengths[i] : -1]
        for segment, d in ((a, doc[i]), (b, b_doc[i])):
            if d not in streams:
                sentence_ids = tok(split_sentences(docs[d]), add_special_tokens=False)["input_ids"]
                streams[d] = token_text([t for sentence in sentence_ids for t in sentence])
            assert token_text(segment) in streams[d]


def test_example_format(prepared):
    cfg, _, data = prepared
    tok, train = data.tokenizer, data.train
    lengths = train.lengths
    assert lengths.max() <= cfg.max_seq_len and (train.a_lengths >= 3).all() and (lengths - train.a_lengths >= 2).all()
    for s, ids in enumerate(train.input_ids):  # each shard's examples lie back to back in its input_ids
        ex = slice(train.starts[s], train.starts[s + 1])
        begin, end = train.token_starts[ex], train.token_starts[ex] + lengths[ex]
        assert ids.dtype == np.uint16 and begin[0] == 0 and (begin[1:] == end[:-1]).all() and end[-1] == len(ids)
        assert (ids[begin] == tok.cls_token_id).all()
        assert (ids[begin + train.a_lengths[ex] - 1] == tok.sep_token_id).all()
        assert (ids[end - 1] == tok.sep_token_id).all()
        n = ex.stop - ex.start
        assert (ids == tok.cls_token_id).sum() == n and (ids == tok.sep_token_id).sum() == 2 * n

    idx = np.arange(0, 40, 3)
    batch = train.batch(idx)
    B, T = batch["input_ids"].shape
    assert B == len(idx) and T % 8 == 0 and T <= cfg.max_seq_len and T - 8 < lengths[idx].max() <= T
    for row, i in enumerate(idx):
        n, n_a = lengths[i], train.a_lengths[i]
        assert batch["input_ids"][row, :n].tolist() == train.example(i).tolist()
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (T - n)
        assert batch["token_type_ids"][row].tolist() == [0] * n_a + [1] * (n - n_a) + [0] * (T - n)
    assert batch["next_sentence_label"].tolist() == train.nsp_labels[idx].tolist()
    assert all(t.dtype == torch.int64 for t in batch.values())
    assert train.seq_len(idx) == T
    wider = train.batch(idx, seq_len=T + 8)  # padded as part of a larger batch
    assert wider["input_ids"].shape == (B, T + 8) and torch.equal(wider["input_ids"][:, :T], batch["input_ids"])


def test_validation_documents_are_held_out(prepared):
    cfg, _, data = prepared
    val_docs = set(data.val.doc_ids.tolist()) | set(data.val.b_doc_ids.tolist())
    train_docs = set(data.train.doc_ids.tolist()) | set(data.train.b_doc_ids.tolist())
    assert len(data.val) > 0 and len(set(data.val.doc_ids.tolist())) == cfg.val_documents
    assert not val_docs & train_docs and len(train_docs) == 80 - cfg.val_documents


def test_cache_hit_reads_and_tokenizes_nothing(prepared, monkeypatch):
    cfg, cache, data = prepared

    def forbidden(*args, **kwargs):
        raise AssertionError("a cache hit must not read, tokenize or train")

    for module, name in [(pretraining, "corpus_parts"), (pretraining, "read_records"), (shards, "read_records"),
                         (shards, "tokenize_documents"), (tokenizer_module, "train_wordpiece")]:
        monkeypatch.setattr(module, name, forbidden)
    again = prepare_pretraining_data(cfg, cache)
    assert again.cache_path == data.cache_path
    assert np.array_equal(again.train.input_ids[0], data.train.input_ids[0])
    assert isinstance(again.train.input_ids[0], np.memmap)


def test_examples_are_deterministic_and_settings_change_the_key(prepared, tmp_path):
    cfg, cache, data = prepared
    other_cache = tmp_path / "cache"
    (other_cache / "tokenizers").mkdir(parents=True)
    for path in (cache / "tokenizers").iterdir():  # share the tokenizer, rebuild the examples
        (other_cache / "tokenizers" / path.name).symlink_to(path)
    again = prepare_pretraining_data(cfg, other_cache)
    assert again.cache_path.name == data.cache_path.name
    for name in ("token_starts", "lengths", "a_lengths", "nsp_labels", "doc_ids", "b_doc_ids"):
        assert np.array_equal(getattr(again.train, name), getattr(data.train, name)), name
    assert all(np.array_equal(a, b) for a, b in zip(again.train.input_ids, data.train.input_ids, strict=True))
    changed = prepare_pretraining_data(cfg.model_copy(update={"seed": 1, "val_documents": 0}), other_cache)
    assert changed.cache_path != again.cache_path and len(changed.val) == 0


def test_trained_tokenizer_round_trips(prepared, tmp_path):
    _, _, data = prepared
    tok = data.tokenizer
    assert tok.pad_token_id == 0
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.get_vocab() == tok.get_vocab()
    pair = loaded("Doc 1 line 2 Alpha beta.", "Omega river!")
    assert pair["input_ids"] == tok("Doc 1 line 2 Alpha beta.", "Omega river!")["input_ids"]
    assert loaded.convert_ids_to_tokens(pair["input_ids"])[:2] == ["[CLS]", "doc"]  # lower-cased
    assert pair["token_type_ids"][-1] == 1 and pair["input_ids"][-1] == loaded.sep_token_id


def test_trim_counts_match_bert_token_by_token_truncation():
    for len_a in range(1, 12):
        for len_b in range(1, 12):
            for target in range(2, 24):
                a, b = len_a, len_b
                while a + b > target:  # BERT's truncate_seq_pair: shorten the longer one (B on a tie)
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert trim_counts(len_a, len_b, target) == (len_a - a, len_b - b)


def test_errors(tmp_path, corpus_file):
    with pytest.raises(XformerError, match="data.source is required"):
        prepare_pretraining_data(DataConfig(), tmp_path)
    with pytest.raises(XformerError, match="val_documents=80 leaves no training documents"):
        prepare_pretraining_data(config(corpus_file, val_documents=80), tmp_path)
    with pytest.raises(XformerError, match="could not load the tokenizer.*local directory"):
        prepare_pretraining_data(config(corpus_file, tokenizer=TokenizerConfig(path=str(tmp_path / "nope"))), tmp_path)


def test_real_wiki_slice(tmp_path):
    cfg = DataConfig(source=str(shared_data("wiki", "train-00000-of-00008.parquet")), max_documents=40, val_documents=4,
                     max_seq_len=128, tokenizer=TokenizerConfig(vocab_size=2000))
    data = prepare_pretraining_data(cfg, tmp_path)
    train = data.train
    assert len(train) > 500 and train.lengths.max() <= 128
    assert np.array_equal(train.nsp_labels == 1, train.b_doc_ids != train.doc_ids)
    batch = train.batch(np.arange(16))
    assert batch["input_ids"].shape[1] == 128 and (batch["input_ids"][:, 0] == data.tokenizer.cls_token_id).all()


def test_held_out_documents_are_written_as_training_left_them_out(corpus_path, tmp_path, tiny_config, capsys):
    import importlib.util

    import pyarrow.parquet as pq

    from xformer.data.text.corpus import read_documents
    from xformer.data.text.pretraining import held_out

    spec = importlib.util.spec_from_file_location("held_out", Path(__file__).parents[1] / "data_prep" / "held_out.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: bert_pretraining\ndata:\n  source: {corpus_path}\n  val_documents: 7\n  seed: 3\n")
    out = tmp_path / "held" / "out.parquet"
    assert script.main([str(recipe), str(out)]) == 0
    docs = read_documents(str(corpus_path))
    assert pq.read_table(out).column("text").to_pylist() == [docs[i] for i in held_out(len(docs), 7, 3)]
    assert script.main([str(recipe), str(tmp_path / "o2.parquet"), "--set", "data.val_documents=100000"]) == 2
    assert "leaves no training documents" in capsys.readouterr().err
