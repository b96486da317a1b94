"""Sweeps (grid expansion, naming, skipping finished runs, resuming), reports (table, plots) and the
sequence classification task that the SST-2 study uses."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from xformer.cli import main
from xformer.errors import XformerError
from xformer.sweep import expand, parse_grid, run_name, sweep

GOOD, BAD = ["great", "lovely", "superb", "fine"], ["awful", "dull", "poor", "bad"]
FILLER = ["the", "a", "film", "movie", "story", "plot", "actors", "scenes", "was", "is", "and", "but", "with", "very", "quite", "rather"]


def write_texts(path, n: int, seed: int = 0, text_column: str = "sentence"):
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(FILLER, k=rng.randint(4, 12)) + [rng.choice(GOOD if label else BAD)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    pq.write_table(pa.table({text_column: texts, "label": labels}), path)
    return path


@pytest.fixture
def recipe(tmp_path):
    """A tiny text-classification recipe with a two-value sweep grid; a few seconds per run."""
    write_texts(tmp_path / "train.parquet", 400)
    write_texts(tmp_path / "val.parquet", 100, seed=1)
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
task: text_classification
model: {{dim: 32, depth: 1, num_heads: 2, max_position: 32, dropout: 0.0, attn_dropout: 0.0}}
data:
  source: {tmp_path / 'train.parquet'}
  val_source: {tmp_path / 'val.parquet'}
  max_seq_len: 24
  cache_dir: {tmp_path / 'cache'}
  tokenizer: {{vocab_size: 120}}
train: {{batch_size: 32, max_steps: 30, lr: 3.0e-3, warmup_steps: 2, log_every: 5, eval_every: 15,
         eval_batches: null, save_every: 15, progress: false, device: cpu}}
sweep:
  grid:
    train.lr: [3.0e-3, 1.0e-3]
""")
    return path


def test_grid_values_and_bad_syntax():
    assert parse_grid("train.lr=1e-3,3e-4") == ("train.lr", [0.001, 0.0003])
    assert parse_grid("model.channels=[32,64,128],[64,128,256]") == ("model.channels", [[32, 64, 128], [64, 128, 256]])
    assert parse_grid("train.optimizer=sgd, adam") == ("train.optimizer", ["sgd", "adam"])
    for bad in ("train.lr", "=1,2", "train.lr=", "train.lr=1,,2", "model.channels=[1,2"):
        with pytest.raises(XformerError, match="--grid"):
            parse_grid(bad)


def test_expansion_crosses_variants_with_the_grid_and_names_runs(recipe, tmp_path):
    root, runs = expand(recipe, ["sweep.variants={a: {model.dim: 16}, b: {model.depth: 2}}"],
                        ["train.batch_size=16,32"], out_dir=str(tmp_path / "s"))
    assert root == tmp_path / "s"
    assert [r.name for r in runs] == [
        "a_lr=0.003_batch_size=16", "a_lr=0.003_batch_size=32", "a_lr=0.001_batch_size=16", "a_lr=0.001_batch_size=32",
        "b_lr=0.003_batch_size=16", "b_lr=0.003_batch_size=32", "b_lr=0.001_batch_size=16", "b_lr=0.001_batch_size=32",
    ]
    a, b = runs[0].cfg, runs[-1].cfg
    assert (a.model.dim, a.model.depth, a.train.lr, a.train.batch_size) == (16, 1, 3e-3, 16)
    assert (b.model.dim, b.model.depth, b.train.lr, b.train.batch_size) == (32, 2, 1e-3, 32)
    assert b.out_dir == str(tmp_path / "s" / runs[-1].name)
    assert run_name(None, {"model.dropout": 0.1, "data.dropout": 0.2}) == "model.dropout=0.1_data.dropout=0.2"
    assert run_name(None, {"model.channels": [32, 64]}) == "channels=32-64"


def test_unknown_grid_key_fails_before_anything_runs(recipe, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sweep", str(recipe), "--grid", "train.lrr=1,2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.lrr" in err and "train.lr" in err and "\n" not in err
    assert not out.exists()
    assert main(["sweep", str(recipe), "--grid", "train.lr", "--out", str(out)]) == 2
    assert "--grid expects key=value1,value2" in capsys.readouterr().err


def table_rows(report: str) -> dict[str, list[str]]:
    lines = [line for line in report.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {row[0]: dict(zip(head, row)) for row in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_sweep_runs_skips_finished_runs_resumes_and_reports(recipe, tmp_path, capsys):
    out = tmp_path / "s"
    sweep(recipe, out_dir=str(out))
    first = capsys.readouterr().out
    assert re.search(r"\[1/2\] lr=0.003: \d+ s; val loss", first) and "[2/2] lr=0.001" in first
    done = out / "lr=0.003" / "result.json"
    stamp = done.stat().st_mtime_ns
    (out / "lr=0.001" / "result.json").unlink()  # as if the second run had been cut short
    sweep(recipe, out_dir=str(out))
    second = capsys.readouterr().out
    assert "[1/2] lr=0.003: finished before, skipped" in second and "[2/2] lr=0.001: resumed" in second
    assert done.stat().st_mtime_ns == stamp

    rows = table_rows((out / "report.md").read_text())
    assert set(rows) == {"lr=0.003", "lr=0.001"}
    for name, row in rows.items():
        records = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in records if r["split"] == "val"]
        assert float(row["val acc"]) == pytest.approx(val[-1]["acc"], rel=1e-3)
        assert float(row["val loss"]) == pytest.approx(val[-1]["loss"], rel=1e-3)
        assert float(row["best val acc"]) == pytest.approx(max(r["acc"] for r in val), rel=1e-3)
        assert row["train.lr"] == name.split("=")[1]
    for png in ("curves.png", "final.png"):
        pixels = np.asarray(Image.open(out / png).convert("L"), dtype=float)
        assert pixels.shape[0] > 200 and pixels.std() > 5  # drawn, not blank


def test_report_on_run_dirs_from_the_cli(recipe, tmp_path, capsys):
    sweep(recipe, out_dir=str(tmp_path / "s"))
    capsys.readouterr()
    runs = [str(tmp_path / "s" / "lr=0.003"), str(tmp_path / "s" / "lr=0.001")]
    assert main(["report", *runs, "--out", str(tmp_path / "r")]) == 0
    assert set(table_rows((tmp_path / "r" / "report.md").read_text())) == {"lr=0.003", "lr=0.001"}
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- text classification


def test_sequence_classifier_learns_and_starts_from_a_bert(recipe, tmp_path):
    from xformer.config import load_recipe
    from xformer.loading import load
    from xformer.text_classify import initial_text_classifier, train_text_classifier

    cfg = load_recipe(recipe, [f"out_dir={tmp_path / 'run'}", "train.max_steps=150", "train.lr=1e-3",
                                 "train.eval_every=150", "train.save_every=150"])
    result = train_text_classifier(cfg)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < losses[0] - 0.2, losses
    assert result["val"]["acc"] > 0.8  # one sentiment word decides the label

    trained = load(tmp_path / "run")
    cfg2 = load_recipe(recipe, [f"model.init={tmp_path / 'run'}", "model.dim=999"])
    model = initial_text_classifier(cfg2, vocab_size=10, num_classes=2)
    assert cfg2.model.dim == 32  # the architecture comes from the checkpoint
    for name, p in trained.bert.state_dict().items():
        torch.testing.assert_close(model.bert.state_dict()[name], p, msg=name)


def test_text_data_bad_inputs(recipe, tmp_path, capsys):
    odd = write_texts(tmp_path / "odd.parquet", 20, text_column="body")
    assert main(["train", str(recipe), "--set", f"data.source={odd}", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no text column found" in err and "body" in err and "\n" not in err
    assert main(["train", str(recipe), "--set", "data.text_column=body", "--out", str(tmp_path / "x")]) == 2
    assert "no column 'body'" in capsys.readouterr().err


def test_report_leaves_out_keys_that_only_follow_the_architecture():
    from xformer.report import varied_keys

    cnn = {"config": {"model.arch": "cnn", "model.dropout": 0.1, "model.channels": [32, 64]}}
    vit = {"config": {"model.arch": "vit", "model.dropout": 0.0, "model.dim": 128}}
    vit_deep = {"config": {"model.arch": "vit", "model.dropout": 0.0, "model.dim": 256}}
    assert varied_keys([cnn, vit]) == ["model.arch", "model.dropout"]
    assert varied_keys([cnn, vit, vit_deep]) == ["model.arch", "model.dropout", "model.dim"]
