"""Sweeps (grid expansion, naming, skipping finished runs, refusing stale ones, going on past failed
ones, resuming), reports (table, plots) and the sequence classification task that the SST-2 study uses."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from xformer.commands.cli import main
from xformer.commands.results import read_result
from xformer.commands.sweep import expand, parse_grid, prerequisites, run_name, sweep
from xformer.config import config_text
from xformer.errors import XformerError

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
    # a variant names an earlier run of the sweep by the sweep's directory, wherever --out puts it
    _, runs = expand(recipe, ["sweep.variants={a: {}, b: {model.init: '{sweep}/a', data.tokenizer: {path: '{sweep}/t'}}}"],
                     out_dir=str(tmp_path / "elsewhere"))
    assert runs[-1].cfg.model.init == str(tmp_path / "elsewhere" / "a")
    assert runs[-1].cfg.data.tokenizer.path == str(tmp_path / "elsewhere" / "t")
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
    with pytest.raises(XformerError, match=r"sweep run lr=0.003 .* model.dim \(32 there, 64 now\)"):
        sweep(recipe, ["model.dim=64"], out_dir=str(out))  # the saved results are of another model

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


# ----------------------------------------------------------------------------- reruns and failures (no training)


def fake_training(monkeypatch, fail: dict | None = None):
    """Replace training with a stand-in that writes what a run leaves (its resolved config with the
    sizes filled in, metrics); ``fail`` maps a run name to the exception it raises. Returns the calls."""
    calls = []

    def run(cfg, resume=False):
        name = Path(cfg.out_dir).name
        calls.append((name, resume))
        if name in (fail or {}):
            print("some output before the failure")
            raise fail[name]
        run_dir = Path(cfg.out_dir)
        resolved = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": 120, "num_classes": 2})})
        (run_dir / "config.yaml").write_text(config_text(resolved))
        val = {"loss": 0.5, "acc": float("nan") if cfg.train.lr > 2e-3 else 0.75}
        records = [{"step": 30, "split": "train", "loss": 0.6}, {"step": 30, "split": "val", **val}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r).replace("NaN", "null") + "\n" for r in records))
        return {"step": 30, "train": {"loss": 0.6}, "val": val}

    monkeypatch.setattr("xformer.tasks.run", run)
    return calls


def test_rerun_skips_a_finished_run_only_when_its_config_is_the_same(recipe, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    calls = fake_training(monkeypatch)
    sweep(recipe, out_dir=str(out))
    assert calls == [("lr=0.003", False), ("lr=0.001", False)]
    result = read_result(out / "lr=0.003")
    assert result["status"] == "finished" and result["val"]["acc"] is None  # strict JSON: NaN is null
    assert "lr=0.003: 0 s; val loss 0.5, acc -" in capsys.readouterr().out
    sweep(recipe, out_dir=str(out))  # same recipe: both skipped, though the saved configs have sizes filled in
    assert len(calls) == 2 and capsys.readouterr().out.count("finished before, skipped") == 2

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(XformerError) as err:
        sweep(recipe, ["train.max_steps=60"], out_dir=str(out))
    msg = str(err.value)
    assert "lr=0.003" in msg and "train.max_steps (30 there, 60 now)" in msg and "\n" not in msg
    assert "--out" in msg and f"delete {out / 'lr=0.003'}" in msg and "1 more" in msg
    assert len(calls) == 2  # refused before anything trained or was written
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps

    (out / "lr=0.001" / "config.yaml").unlink()
    with pytest.raises(XformerError, match=r"lr=0.001 .*no config.yaml"):
        sweep(recipe, out_dir=str(out))
    (out / "lr=0.001" / "result.json").write_text("{not json")  # unreadable: not finished, so it runs again
    sweep(recipe, out_dir=str(out))
    assert calls[2:] == [("lr=0.001", False)]


def test_a_failed_run_does_not_stop_the_sweep_and_is_retried(recipe, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s"
    calls = fake_training(monkeypatch, fail={"lr=0.003": RuntimeError("CUDA out of memory.\nTried to allocate")})
    with pytest.raises(XformerError) as err:
        sweep(recipe, out_dir=str(out))
    assert str(err.value) == f"1 of 2 sweep runs failed: lr=0.003; see {out / 'lr=0.003' / 'train.log'}"
    assert [name for name, _ in calls] == ["lr=0.003", "lr=0.001"]  # the second run still ran
    printed = capsys.readouterr().out
    assert "[1/2] lr=0.003: failed after 0 s: RuntimeError: CUDA out of memory. Tried to allocate\n" in printed
    failed = read_result(out / "lr=0.003")
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: CUDA out of memory. Tried to allocate"
    log = (out / "lr=0.003" / "train.log").read_text()
    assert "some output before the failure" in log and "Traceback" in log
    rows = table_rows((out / "report.md").read_text())
    assert rows["lr=0.003"]["status"].startswith("failed: RuntimeError: CUDA out of memory")
    assert rows["lr=0.001"]["status"] == "finished" and rows["lr=0.001"]["val acc"] == "0.75"

    calls = fake_training(monkeypatch, fail={"lr=0.003": XformerError("data.source: no such file"),
                                             "lr=0.001": XformerError("never called")})
    with pytest.raises(XformerError, match="1 of 2 sweep runs failed: lr=0.003;"):
        sweep(recipe, out_dir=str(out))
    assert calls == [("lr=0.003", False)]  # a failed run is retried, the finished one is not
    assert read_result(out / "lr=0.003")["error"] == "data.source: no such file"
    assert "error: data.source: no such file" in (out / "lr=0.003" / "train.log").read_text()

    calls = fake_training(monkeypatch)
    sweep(recipe, out_dir=str(out))
    assert calls == [("lr=0.003", False)] and read_result(out / "lr=0.003")["status"] == "finished"


def test_ctrl_c_stops_the_sweep_at_once(recipe, tmp_path, monkeypatch):
    calls = fake_training(monkeypatch, fail={"lr=0.003": KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        sweep(recipe, out_dir=str(tmp_path / "s"))
    assert calls == [("lr=0.003", False)]
    assert not (tmp_path / "s" / "lr=0.003" / "result.json").exists()
    assert not (tmp_path / "s" / "report.md").exists()


def test_sweep_metric_reaches_every_run(recipe, tmp_path):
    _, runs = expand(recipe, ["sweep.metric=f1"], out_dir=str(tmp_path / "s"))
    assert {r.cfg.sweep.metric for r in runs} == {"f1"} and not runs[0].cfg.sweep.grid


# ----------------------------------------------------------------------------- text classification


def test_sequence_classifier_learns_and_starts_from_a_bert(recipe, tmp_path):
    from xformer.trained.init import init_from
    from xformer.trained.loading import load
    from xformer.commands.recipe import load_recipe
    from xformer.tasks import run

    cfg = load_recipe(recipe, [f"out_dir={tmp_path / 'run'}", "train.max_steps=150", "train.lr=1e-3",
                                 "train.eval_every=150", "train.save_every=150"])
    result = run(cfg)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < losses[0] - 0.2, losses
    assert result["val"]["acc"] > 0.8  # one sentiment word decides the label

    trained = load(tmp_path / "run")
    cfg2 = load_recipe(recipe, [f"model.init={tmp_path / 'run'}", "model.dim=999"])
    model, resolved = init_from(cfg2.model.model_copy(update={"num_classes": 2}))
    assert resolved.dim == 32  # the architecture comes from the checkpoint
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
    from xformer.commands.report import varied_keys

    cnn = {"config": {"model.arch": "cnn", "model.dropout": 0.1, "model.channels": [32, 64]}}
    vit = {"config": {"model.arch": "vit", "model.dropout": 0.0, "model.dim": 128}}
    vit_deep = {"config": {"model.arch": "vit", "model.dropout": 0.0, "model.dim": 256}}
    assert varied_keys([cnn, vit]) == ["model.arch", "model.dropout"]
    assert varied_keys([cnn, vit, vit_deep]) == ["model.arch", "model.dropout", "model.dim"]


def test_two_jobs_train_as_one_each_after_the_run_it_starts_from(recipe, tmp_path, capsys):
    """``--jobs 2``: the runs train in processes of their own, a run that starts from another run of the sweep
    after that run (not after every run started beside it), and every run ends where the same sweep one run
    at a time ends."""
    text = recipe.read_text().split("sweep:")[0] + """sweep:
  variants:
    base: {}
    tuned: {model.init: "{sweep}/base", train.lr: 1.0e-3}
    slow: {train.lr: 1.0e-3}
"""
    recipe.write_text(text)
    _, runs = expand(recipe, out_dir=str(tmp_path / "x"))
    assert prerequisites(runs) == [set(), {0}, set()]

    one, two = tmp_path / "one", tmp_path / "two"
    sweep(recipe, out_dir=str(one))
    capsys.readouterr()
    assert main(["sweep", str(recipe), "--out", str(two), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    for label in (r"\[1/3\] base", r"\[2/3\] tuned", r"\[3/3\] slow"):
        assert re.search(rf"^{label}: \d+ s; val loss", printed, re.M), printed
    assert printed.index("[2/3] tuned") > printed.index("[1/3] base")
    tuned = (two / "tuned" / "train.log").read_text()
    assert str(two / "base") in (two / "tuned" / "config.yaml").read_text() and "error" not in tuned
    for name in ("base", "tuned", "slow"):
        a, b = read_result(one / name), read_result(two / name)
        assert b["status"] == "finished" and b["step"] == a["step"] == 30
        # one thread per process against this process's pool: sums in another order, not bit-identical
        assert b["val"] == pytest.approx(a["val"], abs=1e-4), name
    assert set(table_rows((two / "report.md").read_text())) == {"base", "tuned", "slow"}

    assert main(["sweep", str(recipe), "--out", str(two), "--jobs", "2"]) == 0  # a rerun skips all three, in order
    assert "finished before" not in printed
    assert capsys.readouterr().out.startswith("".join(f"[{i}/3] {name}: finished before, skipped\n"
                                                      for i, name in enumerate(("base", "tuned", "slow"), 1)))


def test_runs_that_start_from_each_other_are_one_error_before_anything_is_written(recipe, tmp_path, capsys):
    recipe.write_text(recipe.read_text().split("sweep:")[0] + """sweep:
  variants:
    a: {model.init: "{sweep}/b"}
    b: {model.init: "{sweep}/a/checkpoints"}
    c: {}
""")
    assert main(["sweep", str(recipe), "--out", str(tmp_path / "s"), "--jobs", "2"]) == 2
    assert capsys.readouterr().err == "error: sweep runs a, b start from each other (model.init)\n"
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_sweep_jobs_below_one_is_a_one_line_error(recipe, tmp_path, capsys, value):
    assert main(["sweep", str(recipe), "--out", str(tmp_path / "s"), "--jobs", value]) == 2
    assert capsys.readouterr().err == f"error: --jobs {value}: at least 1 (the runs trained at once)\n"
    assert not (tmp_path / "s").exists()
