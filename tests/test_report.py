"""Reports on run directories as they are found, not only as they should be: cut or garbage metric
lines, null values, runs ranked by different metrics, and runs that failed, stopped early or logged
nothing. Also the classifier's evaluation report (strict JSON, labels without a class name)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from xformer.errors import XformerError
from xformer.trained.evaluate import classification_report, write_report as write_eval_report
from xformer.commands.report import _cell, expand_dirs, minutes_at, read_run, table, write_report


def make_run(path, task="image_classification", records=(), max_steps=30, result=None, lines=(), **config):
    """A run directory as the trainer leaves it: config.yaml, metrics.jsonl (``records`` as JSON, then
    raw ``lines``) and, when given, a sweep's result.json."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"task": task, "train": {"max_steps": max_steps}, **config}))
    if records or lines:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(lines))
    if result is not None:
        (path / "result.json").write_text(json.dumps(result))
    return path


def curve(metric="acc", steps=(10, 20, 30), value=0.5):
    """Train and val records at each of ``steps``, ``metric`` rising from ``value``."""
    out = []
    for i, s in enumerate(steps):
        out += [{"step": s, "split": "train", "loss": 2.0 - i, "elapsed_s": 1.0 * s},
                {"step": s, "split": "val", "loss": 2.5 - i, metric: value + 0.1 * i}]
    return out


def rows(report: str) -> dict[str, dict[str, str]]:
    lines = [line for line in report.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {r[0]: dict(zip(head, r)) for r in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def drawn(path) -> bool:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    return pixels.shape[0] > 200 and pixels.std() > 5


def test_a_cut_or_garbage_metrics_line_is_skipped(tmp_path, capsys):
    good = [json.dumps(r) + "\n" for r in curve()]
    run = make_run(tmp_path / "r", lines=[*good[:2], "garbage {\n", "\x00\x00\n", *good[2:], '{"step": 40, "spl'])
    r = read_run(run)
    assert [x["step"] for x in r["val"]] == [10, 20, 30] and r["status"] == "finished"
    err = capsys.readouterr().err
    assert "line 3" in err and "line 4" in err and "line 9" not in err  # the cut last line goes unmentioned
    assert rows(table([r]))["r"]["val acc"] == "0.7"


def test_runs_ranked_by_different_metrics_get_a_column_each(tmp_path):
    vit = make_run(tmp_path / "vit", records=curve("acc"))
    bert = make_run(tmp_path / "bert", task="bert_pretraining", records=curve("mlm_acc", value=0.3))
    clip = make_run(tmp_path / "clip", task="contrastive", records=curve("t2i_R@10"), sweep={"metric": "zs_top1"})
    report = write_report([vit, bert, clip], tmp_path / "out")
    text = report.read_text()
    # runs of different tasks: a table each (issue 20, class 8), each with its own metric
    tables = {s.splitlines()[0].split(":")[0]: s for s in text.split("\n## ")[1:]}
    assert list(tables) == ["image_classification", "bert_pretraining", "contrastive", "Warnings"]
    assert "the ranking metric 'zs_top1' is in none of its validation records" in tables.pop("Warnings")
    for task, name, metric, final in (("image_classification", "vit", "acc", "0.7"),
                                      ("bert_pretraining", "bert", "mlm_acc", "0.5"),
                                      ("contrastive", "clip", "zs_top1", "-")):  # clip logs no zs_top1
        head = next(line for line in tables[task].splitlines() if line.startswith("|"))
        assert f"| val {metric} |" in head and f"| best val {metric} |" in head
        assert head.count("| val ") == 2  # loss and its own metric only
        assert rows(tables[task])[name][f"val {metric}"] == final
        assert f"`{metric}`" in tables[task]
        assert drawn(tmp_path / "out" / f"curves_{task}.png") and (tmp_path / "out" / f"final_{task}.png").is_file()
    # runs of one task: one table, the plots as before
    write_report([vit, make_run(tmp_path / "vit2", records=curve("acc"))], tmp_path / "one")
    assert drawn(tmp_path / "one" / "curves.png") and drawn(tmp_path / "one" / "final.png")


def test_failed_stopped_and_empty_runs_are_listed_with_their_status(tmp_path, capsys):
    sweep_dir = tmp_path / "s"
    make_run(sweep_dir / "done", records=curve(), result={"status": "finished", "step": 30, "wall_s": 12.0})
    make_run(sweep_dir / "stopped", records=curve(steps=(10, 20)))
    make_run(sweep_dir / "cut", records=curve(), max_steps=60, result={"name": "cut", "step": 45, "wall_s": 9})
    make_run(sweep_dir / "short", records=curve(), max_steps=100)
    make_run(sweep_dir / "no_metrics")
    make_run(sweep_dir / "empty_metrics", lines=["\n"])
    (sweep_dir / "crashed").mkdir()  # failed before its config was written: only the sweep's record
    (sweep_dir / "crashed" / "result.json").write_text(json.dumps(
        {"status": "failed", "error": "data.source: no such file | x", "wall_s": 0.5}))
    make_run(sweep_dir / "oom", records=curve(steps=(10,)), result={"status": "failed", "error": "RuntimeError: OOM"})
    (sweep_dir / "notes").mkdir()  # not a run: left out of a sweep folder
    status = {p.name: read_run(p)["status"] for p in expand_dirs([sweep_dir])}
    assert status == {
        "crashed": "failed: data.source: no such file | x", "cut": "stopped at step 30", "done": "finished",
        "empty_metrics": "no metrics", "no_metrics": "no metrics", "oom": "failed: RuntimeError: OOM",
        "short": "stopped at step 30", "stopped": "stopped at step 20",
    }
    table_rows = rows(write_report([sweep_dir], tmp_path / "out").read_text().replace("\\|", "/"))
    assert set(table_rows) == set(status)
    assert table_rows["crashed"]["status"] == "failed: data.source: no such file / x"
    assert table_rows["done"]["wall time (s)"] == "12" and table_rows["no_metrics"]["val acc"] == "-"
    assert table_rows["oom"]["val acc"] == "0.5"
    with pytest.raises(XformerError, match="not a run directory"):
        read_run(sweep_dir / "notes")


def test_a_run_that_ran_out_of_time_is_finished(tmp_path):
    run = make_run(tmp_path / "r", records=curve(), max_steps=1000)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["max_minutes"] = 0.5  # 30 s: the last record is at 30 s
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert read_run(run)["status"].startswith("finished")
    config["train"] = {"epochs": 3}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert "step 30" in read_run(run)["status"]


def test_a_ranking_metric_no_evaluation_holds_is_warned_about(tmp_path, capsys):
    run = make_run(tmp_path / "r", records=curve(), sweep={"metric": "val.acc"})
    assert read_run(run)["best"] is None
    err = capsys.readouterr().err
    assert "the ranking metric 'val.acc' is in none of its validation records (they hold acc, loss)" in err
    read_run(make_run(tmp_path / "s", records=curve(), sweep={"metric": "acc"}))
    assert "ranking metric" not in capsys.readouterr().err


def test_time_budgeted_runs_are_drawn_against_minutes(tmp_path):
    """Runs with a time budget compare at equal time: their curves' x is the training clock, read at each
    record's step from the train records (an evaluation between two of them is interpolated)."""
    train = [{"step": 50, "elapsed_s": 30.0}, {"step": 100, "elapsed_s": 90.0}, {"step": 150, "elapsed_s": None}]
    assert minutes_at(train, [50, 75, 100]) == pytest.approx([0.5, 1.0, 1.5])
    assert minutes_at(train, [25]) == pytest.approx([0.25])  # from 0 at step 0
    assert all(math.isnan(m) for m in minutes_at([{"step": 5}], [5, 10]))
    for name, steps in (("a", (10, 20, 30)), ("b", (20, 40, 60))):
        make_run(tmp_path / name, records=curve(steps=steps), train={"budget": "time", "max_minutes": 1})
    write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert drawn(tmp_path / "out" / "curves.png")


def test_null_and_nan_values_render_without_crashing(tmp_path):
    records = curve()
    records[-1].update(loss=None, acc=None)
    records[-3]["acc"] = float("nan")  # an older metrics.jsonl with a bare NaN
    records[-2]["loss"] = None
    run = make_run(tmp_path / "r", lines=[json.dumps(r) + "\n" for r in records])
    r = read_run(run)
    assert r["best"] == 0.5
    row = rows(table([r]))["r"]
    assert row["val acc"] == "-" and row["val loss"] == "-" and row["best val acc"] == "0.5"
    assert _cell(None) == "-" and _cell(float("nan")) == "nan" and _cell(float("inf")) == "inf"
    write_report([run], tmp_path / "out")
    assert drawn(tmp_path / "out" / "curves.png") and (tmp_path / "out" / "final.png").is_file()


# ----------------------------------------------------------------------------- the classifier's evaluation


class Images:
    """Labelled images of a classifier's evaluation, blank: only the labels matter to a constant model."""

    def __init__(self, labels):
        self.labels = torch.tensor(labels)

    def __len__(self):
        return len(self.labels)

    def batch(self, idx):
        return {"labels": self.labels[idx], "pixel_values": torch.zeros(len(idx), 3, 2, 2)}


class Guess(torch.nn.Module):
    """Always class 0, with a score of ``value``."""

    def __init__(self, k, value=1.0):
        super().__init__()
        self.k, self.value = k, value

    def forward(self, pixel_values):
        logits = torch.zeros(len(pixel_values), self.k)
        logits[:, 0] = self.value
        return SimpleNamespace(logits=logits)


def test_classification_report_bad_inputs_and_strict_json(tmp_path, capsys):
    augmenter = SimpleNamespace(eval=lambda x: x)
    cpu = torch.device("cpu")
    with pytest.raises(XformerError, match="label 2 has no class name"):
        classification_report(Guess(2), Images([0, 1, 2]), augmenter, ["a", "b"], 2, cpu)
    with pytest.raises(XformerError, match="no images"):
        classification_report(Guess(2), Images([]), augmenter, ["a", "b"], 2, cpu)
    report = classification_report(Guess(2, float("inf")), Images([0, 1, 1]), augmenter, ["a", "b"], 2, cpu)
    assert math.isnan(report["loss"]) and report["acc"] == pytest.approx(1 / 3)
    write_eval_report(report, tmp_path, "test")
    saved = json.loads((tmp_path / "eval_test.json").read_text())  # strict JSON: null, not NaN
    assert saved["loss"] is None and saved["confusion"] == [[1, 0], [2, 0]]
    assert "loss nan" in capsys.readouterr().out
