"""Reliability, third round (issue 20), classes 3 and 10: cache entries are checked against the sizes
recorded when they were published, and a damaged one is built again (or named, with the command that
clears it); WordPiece training gives byte-identical tokenizer files for the same corpus and settings."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_documents
from PIL import Image

from xformer.data import prepare_pretraining_data
from xformer.data import cache as cache_module
from xformer.data.cache import SIZES, DamagedCacheError, open_entry, publish_dir
from xformer.data.configs import DataConfig, ImageDataConfig, TokenizerConfig
from xformer.data.image.images import load_image_data
from xformer.data.text.packing import PackedDataset
from xformer.data.text.tokenizer import (
    SPECIAL_TOKENS,
    learn_wordpiece_vocab,
    tokenizer_cache_path,
    train_wordpiece,
)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- class 10: deterministic WordPiece


def syllable_corpus(path: Path) -> Path:
    """Words of random syllables: many equally frequent pairs, where tokenizers' trainer broke ties by hash order
    (three runs of it on this corpus gave three different vocabularies)."""
    rng = random.Random(0)
    syllables = "ka to ri mu sen dor lin pa qu ex zy bo ne vi ha ju wo ce fi gr".split()
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    docs = [". ".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(rng.randint(2, 6)))
            for _ in range(400)]
    path.write_text("\n\n".join(docs) + "\n")
    return path


TRAIN = """
import sys
from pathlib import Path
from xformer.data.configs import TokenizerConfig
from xformer.data.text.tokenizer import build_tokenizer
docs = Path(sys.argv[1]).read_text().split("\\n\\n")
build_tokenizer(TokenizerConfig(vocab_size=600), docs, Path(sys.argv[2]), "corpus")
"""


def files_of(folder: Path) -> dict[str, bytes]:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_wordpiece_training_is_byte_identical_across_processes_and_parallelism(tmp_path):
    corpus = syllable_corpus(tmp_path / "corpus.txt")
    entries = []
    for k, (parallel, seed) in enumerate((("true", "1"), ("false", "2"), ("true", "3"))):
        env = {**os.environ, "TOKENIZERS_PARALLELISM": parallel, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        cache = tmp_path / f"cache{k}"  # a fresh cache each time
        done = subprocess.run([sys.executable, "-c", TRAIN, str(corpus), str(cache)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        entries.append(files_of(tokenizer_cache_path(TokenizerConfig(vocab_size=600), cache, "corpus")))
    assert {"tokenizer.json", "tokenizer_config.json", SIZES} <= entries[0].keys()
    assert len(json.loads(entries[0]["tokenizer.json"])["model"]["vocab"]) == 600
    for other in entries[1:]:
        assert other.keys() == entries[0].keys()
        for name in other:
            assert other[name] == entries[0][name], name


def test_learnt_vocabulary_does_not_depend_on_word_order():
    rng = random.Random(1)
    counts = Counter({"".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 7))): rng.choice([1, 2, 3])
                      for _ in range(500)})
    counts.update({"x": 2, "y": 2, "z": 2})  # rare characters tied at the alphabet's cut
    words = list(counts.items())
    vocabs = set()
    for seed in range(4):
        rng.shuffle(words)
        vocabs.add(tuple(learn_wordpiece_vocab(Counter(dict(words)), 120, SPECIAL_TOKENS, limit_alphabet=9)))
    assert len(vocabs) == 1
    vocab = vocabs.pop()
    assert len(vocab) == 120 and len(set(vocab)) == 120 and list(vocab[:5]) == SPECIAL_TOKENS
    alphabet = [t for t in vocab[5:] if len(t) == 1]
    assert alphabet == sorted(alphabet) and len(alphabet) == 9
    assert ("x" in alphabet) + ("y" in alphabet) + ("z" in alphabet) == 1 and "x" in alphabet  # ties: by code point


def test_merges_take_the_most_frequent_pair_first_and_ties_by_token_id():
    # ids 5-9: a b c d e; 10-13: ##a ##b ##d ##e. Pairs: (a,##b) (##b,##a) (##a,##b) 5 times, (c,##d) (c,##e) 4
    counts = Counter({"abab": 5, "cd": 4, "ce": 4})
    vocab = learn_wordpiece_vocab(counts, 19, SPECIAL_TOKENS)
    assert vocab[5:14] == ["a", "b", "c", "d", "e", "##a", "##b", "##d", "##e"]
    assert vocab[14:] == ["ab", "##ab", "abab", "cd", "ce"]
    assert learn_wordpiece_vocab(counts, 18, SPECIAL_TOKENS) == vocab[:18]


def test_trained_tokenizer_splits_words_into_pieces():
    tok = train_wordpiece(make_documents(50), TokenizerConfig(vocab_size=200))
    assert tok.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS and len(tok) == 200
    ids = tok("waa wab wabwaa")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    pieces = tok.convert_ids_to_tokens(ids[1:-1])
    assert "[UNK]" not in pieces and len(pieces) > 3 and pieces[-1].startswith("##")
    assert tok.decode(ids, skip_special_tokens=True) == "waa wab wabwaa"


# ----------------------------------------------------------------------------- class 3: damaged cache entries


@pytest.fixture(scope="module")
def tokenizer_dir(corpus_path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece(make_documents(300), TokenizerConfig(vocab_size=300)).save_pretrained(path)
    return path


def packed_config(corpus_path: Path, tokenizer: Path | None, **kw) -> DataConfig:
    tok = TokenizerConfig(path=str(tokenizer)) if tokenizer else TokenizerConfig(vocab_size=300)
    settings = {"source": str(corpus_path), "val_documents": 20, "max_seq_len": 64, "objective": "mlm",
                "shard_documents": 50, "num_workers": 1, "tokenizer": tok}
    return DataConfig(**{**settings, **kw})


def shard_arrays(split) -> list[np.ndarray]:
    return [np.asarray(a) for a in split.input_ids] + [split.doc_ids]


def test_a_shard_file_deleted_or_truncated_is_built_again(corpus_path, tokenizer_dir, tmp_path, capfd):
    cfg = packed_config(corpus_path, tokenizer_dir)
    first = prepare_pretraining_data(cfg, tmp_path)
    want_train, want_val = shard_arrays(first.train), shard_arrays(first.val)
    entry = first.cache_path
    assert json.loads((entry / SIZES).read_text())["train/shard-00002/input_ids.npy"] > 0
    del first
    for damage in ("delete", "truncate"):
        target = entry / "train" / "shard-00002" / "input_ids.npy"
        if damage == "delete":
            target.unlink()
        else:
            with open(target, "r+b") as f:
                f.truncate(target.stat().st_size // 2)
        capfd.readouterr()
        again = prepare_pretraining_data(cfg, tmp_path)
        err = capfd.readouterr().err
        assert f"cache entry {entry} is damaged (train/shard-00002/input_ids.npy is" in err, err
        assert "shard" in err and "are already built" in err  # only the damaged shard is built again
        assert again.cache_path == entry
        for got, want in zip(shard_arrays(again.train) + shard_arrays(again.val), want_train + want_val, strict=True):
            assert np.array_equal(got, want)
        del again
    capfd.readouterr()
    prepare_pretraining_data(cfg, tmp_path)
    assert "using cached examples" in capfd.readouterr().err  # whole again


def test_an_entry_without_recorded_sizes_and_an_unreadable_file_is_built_again(corpus_path, tokenizer_dir, tmp_path,
                                                                                capfd):
    cfg = packed_config(corpus_path, tokenizer_dir, objective="mlm_nsp")
    first = prepare_pretraining_data(cfg, tmp_path)
    entry, n = first.cache_path, len(first.train)
    del first
    (entry / SIZES).unlink()  # as published before sizes were recorded
    offsets = entry / "train" / "shard-00001" / "offsets.npy"
    offsets.write_bytes(offsets.read_bytes()[:20])
    again = prepare_pretraining_data(cfg, tmp_path)
    assert "train/shard-00001/offsets.npy is unreadable" in capfd.readouterr().err
    assert len(again.train) == n and (entry / SIZES).is_file()


def test_a_damaged_split_names_the_entry_and_the_command_to_clear_it(corpus_path, tokenizer_dir, tmp_path):
    entry = prepare_pretraining_data(packed_config(corpus_path, tokenizer_dir), tmp_path).cache_path
    (entry / "val" / "shard-00000" / "input_ids.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(DamagedCacheError) as caught:
        PackedDataset(entry / "val")
    message = str(caught.value)
    assert message.startswith(f"cache entry {entry} is damaged: val/shard-00000/input_ids.npy is unreadable")
    assert f"rm -rf {entry}" in message and "\n" not in message


def test_a_damaged_entry_that_cannot_be_removed_is_an_error_naming_it(corpus_path, tokenizer_dir, tmp_path,
                                                                      monkeypatch):
    cfg = packed_config(corpus_path, tokenizer_dir)
    entry = prepare_pretraining_data(cfg, tmp_path).cache_path
    (entry / "train" / "shard-00000" / "doc_ids.npy").unlink()

    def read_only(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.os, "rename", read_only)
    with pytest.raises(DamagedCacheError, match=r"train/shard-00000/doc_ids.npy is missing, and it could not be "
                                                  r"removed \(Permission denied\); delete it \(rm -rf "):
        prepare_pretraining_data(cfg, tmp_path)
    monkeypatch.undo()
    assert entry.is_dir()  # nothing removed, nothing half-written


def test_a_file_where_an_entry_belongs_is_named(tmp_path):
    (tmp_path / "entry").write_text("not a cache entry")
    with pytest.raises(DamagedCacheError, match=r"entry is damaged: it is a file, not a folder; delete it \(rm -rf "):
        open_entry(tmp_path / "entry")
    assert (tmp_path / "entry").read_text() == "not a cache entry"


def test_publish_records_sizes_and_open_entry_checks_them(tmp_path):
    target = tmp_path / "entry"
    with publish_dir(target) as work:
        (work / "a.bin").write_bytes(b"12345")
        (work / "sub").mkdir()
        (work / "sub" / "b.bin").write_bytes(b"")
    assert json.loads((target / SIZES).read_text()) == {"a.bin": 5, "sub/b.bin": 0}
    assert open_entry(target) and not open_entry(tmp_path / "none")
    (target / "sub" / "b.bin").write_bytes(b"x")
    assert not open_entry(target) and not target.exists()
    assert not list(tmp_path.iterdir())  # removed whole, nothing left aside


def test_a_damaged_tokenizer_cache_is_trained_again_identically(corpus_path, tmp_path, capfd):
    cfg = packed_config(corpus_path, None)
    first = prepare_pretraining_data(cfg, tmp_path)
    entry = tokenizer_cache_path(cfg.tokenizer, tmp_path, "")  # the folder of tokenizer entries
    (tok_entry,) = [p for p in entry.parent.iterdir() if not p.name.startswith(".")]
    tokens = (tok_entry / "tokenizer.json").read_bytes()
    (tok_entry / "tokenizer.json").write_bytes(tokens[: len(tokens) // 3])
    capfd.readouterr()
    again = prepare_pretraining_data(cfg, tmp_path)
    err = capfd.readouterr().err
    assert f"cache entry {tok_entry} is damaged (tokenizer.json is" in err and "training WordPiece" in err
    assert (tok_entry / "tokenizer.json").read_bytes() == tokens  # deterministic: the same files again
    assert again.cache_path == first.cache_path and "using cached examples" in err


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value,) * 3).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["truncate", "delete", "legacy"])
def test_a_damaged_image_cache_is_decoded_again(tmp_path, capfd, damage):
    root = tmp_path / "folder"
    for cls, values in (("ant", [1, 2]), ("bee", [3, 4, 5])):
        (root / cls).mkdir(parents=True)
        for v in values:
            (root / cls / f"{v}.png").write_bytes(png(v))
    cfg = ImageDataConfig(source=str(root), val_size=0, cache_dir=str(tmp_path / "cache"))
    first = load_image_data(cfg)
    pixels, labels = first.train.images.clone(), first.train.labels.clone()
    (entry,) = (tmp_path / "cache" / "images").iterdir()
    if damage == "legacy":  # no recorded sizes: caught when read
        (entry / SIZES).unlink()
    if damage == "delete":
        (entry / "labels.npy").unlink()
    else:
        with open(entry / "images.npy", "r+b") as f:
            f.truncate(200)
    capfd.readouterr()
    again = load_image_data(cfg)
    assert f"cache entry {entry} is damaged (" in capfd.readouterr().err
    assert np.array_equal(again.train.images, pixels) and np.array_equal(again.train.labels, labels)


def test_a_hub_corpus_copy_missing_a_part_is_copied_again(tmp_path, tokenizer_dir, monkeypatch, capfd):
    import datasets

    from xformer.data.text.corpus import hub_corpus_files

    calls = []

    def load_dataset(name, split):
        calls.append(name)
        return datasets.Dataset.from_dict({"text": make_documents(60)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    folder = tmp_path / "hub" / "copy"
    (part,) = hub_corpus_files("owner/corpus", "text", "train", None, folder)
    part.unlink()  # the copy would silently read as an empty corpus
    capfd.readouterr()
    assert hub_corpus_files("owner/corpus", "text", "train", None, folder) == [part] and part.is_file()
    assert len(calls) == 2
    assert f"cache entry {folder} is damaged (part-00000.parquet is missing)" in capfd.readouterr().err
