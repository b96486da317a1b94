"""Sentence pairs, regression and GLUE names in text classification: pair encoding against HF's own BERT
tokenizer, tiny pair-classification and regression runs whose loss falls, validation scores against
xformer.trained.scores on the same predictions, 2 processes against 1, the glue/<task> catalogue entries
(local folders, SST-2's two folders, hub-only names offline) and the one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp
from test_trainer import free_port

from xformer.commands.cli import main
from xformer.commands.recipe import load_recipe
from xformer.data import catalog
from xformer.data.configs import TextClassificationDataConfig
from xformer.data.sources import resolve
from xformer.data.text.texts import load_text_data, read_labelled_texts, tokenize_examples
from xformer.errors import XformerError
from xformer.tasks import run as train
from xformer.tasks.trained_run import load_run
from xformer.trained.scores import scores, task_score

GOOD, BAD = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "dull"]
FILLER = ["the", "a", "film", "story", "cast", "plot", "is", "was", "very"]
FAST = ["train.lr=3e-3", "train.warmup_steps=1", "train.log_every=1", "train.save_every=1000",
        "train.progress=false", "train.device=cpu", "model.dim=32", "model.depth=1", "model.num_heads=2",
        "model.max_position=32", "data.max_seq_len=32", "data.tokenizer.vocab_size=120"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def glue_like(folder: Path, n: int, seed: int, regression: bool = False) -> Path:
    """``folder/{train,validation}.parquet`` with GLUE's pair columns: the label (or a 0-5 score) is how
    positive the second sentence is, so a model must read ``sentence2``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows, offset in (("train", n, 0), ("validation", 23, 1000)):
        rng = random.Random(seed + offset)
        first, second, labels = [], [], []
        for _ in range(rows):
            good = rng.randint(0, 4)
            words = rng.sample(GOOD, good) + rng.sample(BAD, 4 - good)
            rng.shuffle(words)
            first.append(" ".join(rng.choices(FILLER + GOOD + BAD, k=5)))
            second.append(" ".join(words + rng.choices(FILLER, k=2)))
            labels.append(good * 1.25 if regression else int(good >= 2))
        label = pa.array(labels, pa.float32() if regression else pa.int64())
        pq.write_table(pa.table({"sentence1": first, "sentence2": second, "label": label,
                                 "idx": pa.array(range(rows), pa.int32())}), folder / f"{split}.parquet")
    return folder


@pytest.fixture
def glue_data(tmp_path, monkeypatch):
    """$XFORMER_DATA with tiny glue/mrpc and glue/stsb folders; the hub off."""
    root = tmp_path / "data"
    glue_like(root / "glue" / "mrpc", 160, seed=0)
    glue_like(root / "glue" / "stsb", 160, seed=1, regression=True)
    monkeypatch.setenv("XFORMER_DATA", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def records(run: Path, split: str) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["split"] == split]


def tiny_run(tmp_path, name: str, *more: str) -> Path:
    cfg = load_recipe(None, ["task=text_classification", f"data.cache_dir={tmp_path / 'cache'}",
                             f"out_dir={tmp_path / name}", "train.batch_size=16", *FAST, *more])
    train(cfg)
    return tmp_path / name


# ----------------------------------------------------------------------------- encoding


def hf_bert_tokenizer():
    """transformers' own BertTokenizerFast from a vocab.txt: its pair template and truncation are HF's."""
    from transformers import BertTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    vocab = list(dict.fromkeys(SPECIAL + chars + [f"##{c}" for c in chars] + sorted(GOOD + BAD + FILLER)))
    return BertTokenizerFast(vocab={piece: i for i, piece in enumerate(vocab)})


def test_pairs_encode_as_the_hf_tokenizer_does(tmp_path):
    tokenizer = hf_bert_tokenizer()
    rng = random.Random(0)
    first = [" ".join(rng.choices(FILLER + GOOD, k=rng.randint(1, 14))) for _ in range(40)]
    second = [" ".join(rng.choices(FILLER + BAD, k=rng.randint(1, 14))) for _ in range(40)]
    dataset = tokenize_examples(first, [0, 1] * 20, [0, 1], tokenizer, 16, "test", second)
    for i, (a, b) in enumerate(zip(first, second)):
        own = tokenizer(a, b, truncation="longest_first", max_length=16)
        batch = dataset.batch(np.array([i]))
        assert batch["input_ids"][0].tolist() == own["input_ids"]
        assert batch["token_type_ids"][0].tolist() == own["token_type_ids"]
        assert batch["attention_mask"][0].tolist() == [1] * len(own["input_ids"])
    # longest-first: a long first text is cut, a short second one kept whole
    long = tokenize_examples(["film " * 30], [0], [0], tokenizer, 12, "test", ["good nice"])
    ids = long.batch(np.array([0]))
    assert tokenizer.decode(ids["input_ids"][0]) == "[CLS] film film film film film film film [SEP] good nice [SEP]"
    assert ids["token_type_ids"][0].tolist() == [0] * 9 + [1] * 3
    # single texts: no token types (segment 0 in the model), as before pairs existed
    assert "token_type_ids" not in tokenize_examples(first, [0] * 40, [0], tokenizer, 16, "test").batch(np.arange(3))


def test_wordpiece_learns_both_texts_and_blank_pairs_are_dropped(tmp_path, capsys):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"q": ["good film", "bad plot", "fine cast", "nice story", "dull"],
                             "a": ["zyxwv qwerty", "zyxwv", "  ", "qwerty", None], "y": [1, 0, 1, 1, 0]}), path)
    cfg = TextClassificationDataConfig(source=str(path), text_column="q", text_pair_column="a", label_column="y",
                                       val_size=0, cache_dir=str(tmp_path / "cache"),
                                       tokenizer={"vocab_size": 200})
    data = load_text_data(cfg)
    assert "dropped 2 of 5 examples whose text or pair text is empty" in capsys.readouterr().err
    assert len(data.train) == 3 and {"zyxwv", "qwerty"} <= set(data.tokenizer.get_vocab())  # second column seen
    assert data.train.batch(np.arange(3))["token_type_ids"].max() == 1


# ----------------------------------------------------------------------------- training


def test_pair_classification_learns_and_scores_its_validation_set(glue_data, tmp_path):
    run = tiny_run(tmp_path, "mrpc", "data.source=glue/mrpc", "train.max_steps=50", "train.eval_every=1000")
    cfg = load_run(run).cfg.data
    assert (cfg.text_column, cfg.text_pair_column, cfg.scores) == ("sentence1", "sentence2", ["f1", "acc"])
    losses = [r["loss"] for r in records(run, "train")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.15, losses
    val = records(run, "val")[-1]
    assert {"loss", "acc", "f1", "score"} <= set(val)
    # the same numbers from the saved model's own predictions on the 23 validation pairs
    opened = load_run(run)
    texts = read_labelled_texts("glue/mrpc:validation", "validation", cfg, "test")
    data = tokenize_examples(texts.texts, texts.labels, [0, 1], opened.tokenizer, 32, "test", texts.pairs)
    with torch.no_grad():
        batch = data.batch(np.arange(len(data)))
        logits = opened.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    expected = scores(["f1", "acc"], logits.argmax(-1).numpy(), data.labels.numpy())
    for name in ("f1", "acc"):
        assert val[name] == pytest.approx(expected[name], abs=1e-6)
    assert val["score"] == pytest.approx(task_score(expected, ["f1", "acc"]), abs=1e-6)
    assert val["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, data.labels).item(), abs=1e-5)


def test_regression_on_pairs_trains_and_evaluates(glue_data, tmp_path, capsys):
    run = tiny_run(tmp_path, "stsb", "data.source=glue/stsb", "train.max_steps=50", "train.eval_every=1000")
    losses = [r["loss"] for r in records(run, "train")]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    val = records(run, "val")[-1]
    assert {"loss", "pearson", "spearman", "score"} <= set(val) and "acc" not in val
    assert val["score"] == pytest.approx((val["pearson"] + val["spearman"]) / 2)
    assert json.loads((run / "classes.json").read_text()) == []
    assert load_run(run).model.config.num_classes == 1
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "glue/stsb:validation"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.strip().splitlines()[:-1])
    for name in ("pearson", "spearman", "score", "loss"):
        assert float(printed[name]) == pytest.approx(val[name], abs=1e-4), name
    assert printed["examples"] == "23"


def test_xformer_eval_prints_the_glue_scores_of_a_pair_run(glue_data, tmp_path, capsys):
    run = tiny_run(tmp_path, "mrpc", "data.source=glue/mrpc", "train.max_steps=4", "train.eval_every=1000")
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "glue/mrpc:validation"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.strip().splitlines()[:-1])
    val = records(run, "val")[-1]
    for name in ("f1", "acc", "score", "loss"):
        assert float(printed[name]) == pytest.approx(val[name], abs=1e-4), name
    # a stray glue name: one line, with a suggestion
    assert main(["eval", str(run), "--data", "glue/mrcp:validation"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --data 'glue/mrcp:validation'") and "did you mean glue/mrpc?" in err, err


def ddp_worker(rank, world, port, cfg):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(cfg)


def test_two_processes_score_validation_as_one(glue_data, tmp_path):
    # 23 validation rows: the second process's share is padded; dropout off so the runs train alike
    common = ["task=text_classification", "data.source=glue/mrpc", f"data.cache_dir={tmp_path / 'cache'}",
              "train.max_steps=6", "train.eval_every=3", "model.dropout=0", "model.attn_dropout=0", *FAST]
    one = load_recipe(None, [*common, "train.batch_size=8", f"out_dir={tmp_path / 'one'}"])
    two = load_recipe(None, [*common, "train.batch_size=4", f"out_dir={tmp_path / 'two'}"])
    train(one)
    mp.start_processes(ddp_worker, args=(2, free_port(), two), nprocs=2, join=True, start_method="spawn")
    a, b = records(tmp_path / "one", "val"), records(tmp_path / "two", "val")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [3, 6]
    for x, y in zip(a, b):
        for name in ("loss", "acc", "f1", "score"):
            assert x[name] == pytest.approx(y[name], abs=1e-5), (name, x, y)


# ----------------------------------------------------------------------------- catalogue


def test_glue_entries_declare_their_task():
    names = [n for n in catalog.CATALOG if n.startswith("glue/")]
    assert names == [f"glue/{t}" for t in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")]
    mnli, stsb = catalog.CATALOG["glue/mnli"], catalog.CATALOG["glue/stsb"]
    assert mnli.text_columns == ("premise", "hypothesis") and mnli.config == "mnli" and mnli.hub == "nyu-mll/glue"
    assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
    assert catalog.hub_split(mnli, "validation") == "validation_matched"
    assert stsb.label_type == "regression" and stsb.scores == ("pearson", "spearman")
    assert catalog.CATALOG["glue/cola"].scores == ("mcc",) and catalog.CATALOG["glue/qqp"].scores == ("f1", "acc")
    assert catalog.CATALOG["glue/qnli"].text_columns == ("question", "sentence")


def test_a_glue_name_fills_what_the_config_leaves_unset():
    cfg = TextClassificationDataConfig(source="glue/stsb")
    assert (cfg.text_column, cfg.text_pair_column, cfg.label_column) == ("sentence1", "sentence2", "label")
    assert cfg.label_type == "regression" and cfg.scores == ["pearson", "spearman"]
    assert cfg.val_source == "glue/stsb:validation"  # GLUE's dev set, not a carve of train
    mine = TextClassificationDataConfig(source="glue/mnli", text_column="x", scores=["acc", "mcc"], val_size=50)
    assert (mine.text_column, mine.text_pair_column, mine.scores) == ("x", "hypothesis", ["acc", "mcc"])
    assert mine.val_source is None and mine.val_size == 50  # the config wins
    assert TextClassificationDataConfig(source="sst2").text_column is None  # other names declare nothing
    with pytest.raises(XformerError, match=r"data.source 'glue/stbs': no such dataset .* did you mean glue/stsb\?"):
        TextClassificationDataConfig(source="glue/stbs")


def test_glue_folders_resolve_locally(tmp_path, monkeypatch):
    root = tmp_path / "data"
    files = {}
    for rel in ("glue/mrpc/train.parquet", "glue/mrpc/validation.parquet", "sst2/train.parquet",
                "sst2/validation.parquet", "sst2/sentences/validation.parquet", "glue/mnli/validation_matched.parquet"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"sentence": ["x"], "label": [0]}), root / rel)
        files[rel] = (root / rel).resolve()
    monkeypatch.setenv("XFORMER_DATA", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("glue/mrpc").files == [files["glue/mrpc/train.parquet"]]
    assert resolve("glue/mrpc:validation").files == [files["glue/mrpc/validation.parquet"]]
    # SST-2: the phrases to train on, GLUE's 872 dev sentences (not the phrase carve) to score on
    assert resolve("glue/sst2").files == [files["sst2/train.parquet"]]
    assert resolve("glue/sst2", split="validation").files == [files["sst2/sentences/validation.parquet"]]
    assert resolve("glue/mnli:validation").files == [files["glue/mnli/validation_matched.parquet"]]


def test_the_shared_glue_data_reads_by_name(monkeypatch):
    """With the shared data beside the project, GLUE reads by name; on a machine without it (a fresh clone),
    the name says in one line how to fetch it."""
    monkeypatch.delenv("XFORMER_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TextClassificationDataConfig(source="glue/mrpc", max_examples=50)
    if not (catalog.REPO_DATA / "glue" / "mrpc").is_dir():
        with pytest.raises(XformerError, match="data_prep/fetch.py glue/mrpc"):
            read_labelled_texts("glue/mrpc:validation", "validation", cfg, "data.val_source")
        return
    read = read_labelled_texts("glue/mrpc:validation", "validation", cfg, "data.val_source")
    assert len(read.texts) == len(read.pairs) == 50 and set(read.labels) == {0, 1}
    stsb = TextClassificationDataConfig(source="glue/stsb", max_examples=20)
    labels = read_labelled_texts("glue/stsb", "train", stsb, "data.source").labels
    assert all(isinstance(y, float) for y in labels) and max(labels) > 1
    sst2 = read_labelled_texts("glue/sst2:validation", "validation", TextClassificationDataConfig(source="glue/sst2"),
                               "data.val_source")
    assert len(sst2.texts) == 872


@pytest.mark.parametrize("task", ["qnli", "mnli", "qqp"])
def test_hub_only_glue_tasks_offline_say_how_to_fetch(tmp_path, monkeypatch, task):
    monkeypatch.setenv("XFORMER_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XformerError) as err:
        load_text_data(TextClassificationDataConfig(source=f"glue/{task}"))
    msg = str(err.value)
    assert "\n" not in msg and f"data.source 'glue/{task}': no train split" in msg
    assert "HF hub is off" in msg and f"data_prep/fetch.py glue/{task} --out DIR" in msg


def test_a_hub_only_glue_task_reads_its_hub_config(tmp_path, monkeypatch):
    import datasets

    for var in catalog.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XFORMER_DATA", str(tmp_path))
    monkeypatch.setattr(catalog, "REPO_DATA", tmp_path / "nothing")
    monkeypatch.chdir(tmp_path)
    calls = []

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"premise": ["a cat sat", "it rains"], "hypothesis": ["a cat", "dry"],
                                           "label": [0, 2], "idx": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = TextClassificationDataConfig(source="glue/mnli")
    read = read_labelled_texts(cfg.val_source, "validation", cfg, "data.val_source")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert (read.texts, read.pairs, read.labels) == (["a cat sat", "it rains"], ["a cat", "dry"], [0, 2])
    read_labelled_texts("glue/mnli:validation_mismatched", "train", cfg, "--data")
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_mismatched")


# ----------------------------------------------------------------------------- errors


def labelled(path: Path, labels, **cfg) -> TextClassificationDataConfig:
    pq.write_table(pa.table({"sentence": [f"text {i}" for i in range(len(labels))], "score": labels}), path)
    return TextClassificationDataConfig(source=str(path), label_column="score", val_size=0, **cfg)



@pytest.mark.parametrize("labels, label_type, expect", [
    ([3.8, 1.2, 0.5], "class", "column 'score' row 0: label 3.8 is not a whole number"),
    (["pos", "neg", "pos"], "regression", "row 0: label 'pos' in column 'score' is not a finite number"),
    ([1.5, float("nan"), 2.0], "regression", "row 1: label nan in column 'score' is not a finite number"),
])
def test_labels_of_the_wrong_type_are_one_line(tmp_path, labels, label_type, expect):
    cfg = labelled(tmp_path / "t.parquet", labels, label_type=label_type)
    with pytest.raises(XformerError) as err:
        read_labelled_texts(cfg.source, "train", cfg, "data.source")
    assert "\n" not in str(err.value) and expect in str(err.value) and "t.parquet" in str(err.value)


def test_auto_label_type(tmp_path):
    floats = labelled(tmp_path / "f.parquet", [3.8, 1.25, 0.0])
    assert read_labelled_texts(floats.source, "train", floats, "data.source").labels == [3.8, 1.25, 0.0]
    whole = labelled(tmp_path / "w.parquet", [1.0, 0.0, 1.0])
    assert read_labelled_texts(whole.source, "train", whole, "data.source").labels == [1, 0, 1]  # classes
    ints = labelled(tmp_path / "i.parquet", [5, 0, 3], label_type="regression")
    assert read_labelled_texts(ints.source, "train", ints, "data.source").labels == [5.0, 0.0, 3.0]


def test_missing_pair_column_and_bad_scores_exit_2(glue_data, tmp_path, capsys):
    recipe = tmp_path / "pairs.yaml"
    recipe.write_text("task: text_classification\n")
    base = ["train", str(recipe), "--set", f"out_dir={tmp_path / 'r'}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", *[a for s in FAST for a in ("--set", s)]]
    assert main([*base, "--set", "data.source=glue/mrpc", "--set", "data.text_pair_column=sentence3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]  # after the [data] line saying which copy of glue/mrpc it read
    assert all(line.startswith("[data] ") for line in lines[:-1]), lines
    assert err.startswith("error: ") and "no column 'sentence3'" in err, err
    assert main([*base, "--set", "data.source=glue/stsb", "--set", "data.scores=[acc]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the data log lines
    assert err.startswith("error: ") and "data.scores: 'acc' cannot score a regression target" in err, err
