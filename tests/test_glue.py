"""``xformer glue``: a fixed-seed run on a pair classification task (MRPC) and a regression task (STS-B)
built as tiny local GLUE folders ($XFORMER_DATA), reproduced exactly in a fresh folder, skipped when rerun
in the same one; a failing seed recorded while the others go on; the summary's majority-class column;
``xformer report`` on two GLUE folders; the bad inputs."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from xformer import tasks
from xformer.commands import glue as glue_command
from xformer.commands.cli import main
from xformer.data import catalog
from xformer.errors import XformerError

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "park", "big", "small", "red", "house", "near",
         "river", "saw", "bird", "tree", "old", "man"]
QUICK = ["--set", "data.max_examples=200", "--set", "data.max_seq_len=32", "--set", "train.epochs=null",
         "--set", "train.max_steps=6", "--set", "train.batch_size=16", "--set", "train.save_every=3",
         "--set", "train.warmup_ratio=0.2", "--set", "train.log_every=1", "--set", "train.device=cpu",
         "--set", "train.progress=false"]
MRPC_VAL_POSITIVE = 0.7  # the validation set's share of label 1: the majority class


def sentences(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(n)]


def write_task(root: Path, task: str, n: int, split: str, seed: int) -> None:
    """A GLUE-like split with HF nyu-mll/glue's columns (sentence1, sentence2, label, idx)."""
    rng = random.Random(seed)
    first, second = sentences(rng, n), sentences(rng, n)
    if task == "stsb":
        labels = pa.array([round(rng.uniform(0, 5), 2) for _ in range(n)], pa.float32())
    else:
        positive = MRPC_VAL_POSITIVE if split == "validation" else 0.5
        labels = pa.array([int(i < round(positive * n)) for i in range(n)], pa.int64())
    folder = root / "glue" / task
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"sentence1": first, "sentence2": second, "label": labels,
                             "idx": pa.array(range(n), pa.int32())}), folder / f"{split}.parquet")


def write_tokenizer(folder: Path) -> None:
    """A BERT WordPiece tokenizer with a fixed vocabulary (no tokenizer training enters the test)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                      sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(folder))


def hf_bert(folder: Path, head: str = "pretraining", num_labels: int = 2) -> Path:
    """A tiny HF BERT (random weights, seed 0) and its tokenizer: pretraining heads or a classifier."""
    from transformers import BertConfig, BertForPreTraining, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    model = BertForPreTraining(config) if head == "pretraining" else BertForSequenceClassification(config)
    model.save_pretrained(str(folder))
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return hf_bert(tmp_path_factory.mktemp("bert"))


def tiny_glue_folders(tmp_path, monkeypatch, train_rows: int, val_rows: int) -> Path:
    """Tiny MRPC (pairs, 2 classes) and STS-B (pairs, float labels) folders under $XFORMER_DATA; CoLA and the
    others are not there (the shared data folder is hidden)."""
    root = tmp_path / "data"
    monkeypatch.setattr(catalog, "REPO_DATA", tmp_path / "no-shared-data")
    monkeypatch.setattr(catalog, "BESIDE", tmp_path / "no-shared-data")
    for task, seed in (("mrpc", 0), ("stsb", 10)):
        write_task(root, task, train_rows, "train", seed)
        write_task(root, task, val_rows, "validation", seed + 1)
    monkeypatch.setenv("XFORMER_DATA", str(root))
    monkeypatch.setenv("XFORMER_CACHE", str(tmp_path / "cache"))
    return root


@pytest.fixture(autouse=True)
def glue_data(tmp_path, monkeypatch, offline) -> Path:
    """240 training and 60 validation rows of MRPC and STS-B; the hub is off."""
    return tiny_glue_folders(tmp_path, monkeypatch, 240, 60)


def run_glue(model_dir: Path, out: Path, *more: str) -> int:
    return main(["glue", f"hf:{model_dir}", "--out", str(out), *QUICK, *more])


def seed_scores(out: Path) -> dict:
    summary = json.loads((out / "glue.json").read_text())
    return {task: [(s["seed"], s["status"], s.get("scores")) for s in t["seeds"]]
            for task, t in summary["tasks"].items()}


def train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def check_summary(out: Path, model_dir: Path) -> dict:
    """glue.json's seeds, medians, spreads and average; the runs' configs; glue.md's rows and majority column."""
    summary = json.loads((out / "glue.json").read_text())
    assert list(summary["tasks"]) == ["mrpc", "stsb"] and summary["seeds"] == 2
    mrpc, stsb = summary["tasks"]["mrpc"], summary["tasks"]["stsb"]
    assert set(mrpc["seeds"][0]["scores"]) >= {"f1", "acc", "score"}
    assert set(stsb["seeds"][0]["scores"]) >= {"pearson", "spearman", "score"}
    for task in (mrpc, stsb):
        values = [s["score"] for s in task["seeds"]]
        assert all(s["status"] == "finished" for s in task["seeds"])
        assert task["min"] == min(values) and task["max"] == max(values) and task["median"] == sum(values) / 2
        for s in task["seeds"]:
            first_name, second_name = task["scores"]
            assert s["score"] == pytest.approx((s["scores"][first_name] + s["scores"][second_name]) / 2)
    assert summary["average"] == pytest.approx((mrpc["median"] + stsb["median"]) / 2)
    # the runs are the protocol's, with the command's data, seed and model
    config = (out / "stsb" / "seed1" / "config.yaml").read_text()
    assert "source: glue/stsb" in config and "seed: 1" in config and f"init: hf:{model_dir}" in config

    # majority class: MRPC's validation is 70% label 1, so predicting 1 scores acc 0.7 and F1 2p/(1+p)
    p = MRPC_VAL_POSITIVE
    assert mrpc["majority"] == pytest.approx((p + 2 * p / (1 + p)) / 2) and stsb["majority"] == 0.0
    table = (out / "glue.md").read_text()
    assert "majority class |" in table
    median, majority = f"{100 * mrpc['median']:.1f}", f"{100 * mrpc['majority']:.1f}"
    assert re.search(rf"\| MRPC \| f1\+acc \| {median} \| .* \| 2/2 \| {majority} \|", table)
    assert "| STS-B | pearson+spearman |" in table and "| **average** |" in table
    return summary


def check_report(first: Path, second: Path, mrpc: dict, report: Path) -> None:
    """xformer report on two GLUE folders: a row per model (a column per task, the average, the pretraining
    cost: not known for an HF model), the majority-class row."""
    assert main(["report", str(first), str(second), "--out", str(report)]) == 0
    text = (report / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert header.startswith("| model | MRPC | STS-B | average (2 tasks) | pretraining wall minutes |"), header
    cell = f"{100 * mrpc['median']:.1f} ({100 * mrpc['min']:.1f} to {100 * mrpc['max']:.1f})"
    for folder in (first, second):  # one model twice: each row names its folder
        assert re.search(rf"\| \S+ \({re.escape(str(folder))}\) \| {re.escape(cell)} \| .* \| — \| — \|", text)
    assert "| majority class |" in text


def test_a_glue_run_reproduces_and_a_rerun_skips_what_finished(model_dir, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_glue(model_dir, first, "--tasks", "mrpc,stsb", "--seeds", "2") == 0
    printed = capsys.readouterr().out
    assert len(re.findall(r"(mrpc|stsb) seed \d: score -?\d\.\d{4} \(.*\), \d+\.\d min", printed)) == 4, printed
    summary = check_summary(first, model_dir)

    assert run_glue(model_dir, second, "--tasks", "mrpc,stsb", "--seeds", "2") == 0
    assert seed_scores(second) == seed_scores(first)  # exactly: same seeds, same data, same protocol
    assert train_losses(second / "mrpc" / "seed1") == train_losses(first / "mrpc" / "seed1")
    capsys.readouterr()

    before = (first / "mrpc" / "seed0" / "metrics.jsonl").read_text()
    assert run_glue(model_dir, first, "--tasks", "mrpc,stsb", "--seeds", "2") == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 4
    assert (first / "mrpc" / "seed0" / "metrics.jsonl").read_text() == before
    assert seed_scores(first) == seed_scores(second)

    # a run cut after its last checkpoint (no result.json) resumes; with no step left it trains nothing, so
    # its scores come from the task's evaluate on the same validation rows
    (first / "stsb" / "seed0" / "result.json").unlink()
    assert run_glue(model_dir, first, "--tasks", "mrpc,stsb", "--seeds", "2") == 0
    assert re.search(r"stsb seed 0: resumed, score -?\d\.\d{4} \(pearson", capsys.readouterr().out)
    resumed, before = seed_scores(first)["stsb"][0][2], seed_scores(second)["stsb"][0][2]
    assert resumed == pytest.approx(before, abs=1e-5) and set(resumed) == set(before)

    check_report(first, second, summary["tasks"]["mrpc"], tmp_path / "report")


def test_a_failing_seed_is_recorded_and_the_others_go_on(model_dir, tmp_path, monkeypatch, capsys):
    real = tasks.run

    def flaky(cfg, resume=False):
        if cfg.train.seed == 0:
            raise RuntimeError("out of memory (simulated)")
        return real(cfg, resume=resume)

    monkeypatch.setattr(tasks, "run", flaky)
    out = tmp_path / "glue"
    assert run_glue(model_dir, out, "--tasks", "mrpc", "--seeds", "2") == 2
    captured = capsys.readouterr()
    assert "mrpc seed 0: failed after" in captured.out and "1 of 2 GLUE runs failed: mrpc/seed0" in captured.err
    seeds = json.loads((out / "glue.json").read_text())["tasks"]["mrpc"]["seeds"]
    assert seeds[0]["status"] == "failed" and "out of memory (simulated)" in seeds[0]["error"]
    assert seeds[1]["status"] == "finished" and seeds[1]["score"] is not None
    assert "Failed MRPC seed 0: RuntimeError: out of memory (simulated)" in (out / "glue.md").read_text()

    monkeypatch.setattr(tasks, "run", real)  # a rerun retries the failed seed only
    assert run_glue(model_dir, out, "--tasks", "mrpc", "--seeds", "2") == 0
    assert "[2/2] mrpc seed 1: finished before, skipped" in capsys.readouterr().out
    seeds = json.loads((out / "glue.json").read_text())["tasks"]["mrpc"]["seeds"]
    assert [s["status"] for s in seeds] == ["finished"] * 2


def test_default_tasks_are_those_with_data_and_the_protocol_is_per_task(model_dir, tmp_path, capsys):
    source = glue_command.check_model(f"hf:{model_dir}")
    run, skipped = glue_command.choose_tasks(None, source, f"hf:{model_dir}", False)
    assert run == ["mrpc", "stsb"] and set(skipped) == {"cola", "sst2", "qqp", "mnli", "qnli", "rte"}
    assert all("HF hub is off" in why for why in skipped.values())
    runs = glue_command.plan(f"hf:{model_dir}", source, run, 1, tmp_path, glue_command.RECIPE,
                             ["data.max_seq_len=64"], False)
    epochs = {g.task: (g.run.cfg.train.epochs, g.run.cfg.train.max_steps, g.run.cfg.train.lr) for g in runs}
    assert epochs == {"mrpc": (3, 2000, 3e-4), "stsb": (10, 2000, 3e-4)}  # recipes/glue.yaml: STS-B 10 epochs

    with pytest.raises(XformerError, match="data.max_seq_len=128 is longer than the 64 positions of model.init"):
        glue_command.plan(f"hf:{model_dir}", source, ["mrpc"], 1, tmp_path, glue_command.RECIPE, [], False)
    scratch = glue_command.plan(f"hf:{model_dir}", source, ["mrpc"], 1, tmp_path, glue_command.RECIPE,
                                ["data.max_seq_len=64"], True)
    cfg = scratch[0].run.cfg
    assert cfg.model.init is None and (cfg.model.dim, cfg.model.depth, cfg.model.vocab_size) == (32, 1, 25)
    assert cfg.model.dropout == 0.1 and Path(cfg.data.tokenizer.path) == model_dir


@pytest.mark.parametrize("args, message", [
    (["--tasks", "mrpc,cloa"], "unknown GLUE task 'cloa'.*did you mean cola"),
    (["--tasks", "cola"], "--tasks cola: no local train/validation split .* HF hub is off"),
    (["--seeds", "0"], "--seeds 0: at least 1"),
])
def test_bad_tasks_and_seeds_are_one_line_errors(model_dir, tmp_path, capsys, args, message):
    assert main(["glue", f"hf:{model_dir}", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_one_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for model in (str(tmp_path / "empty"), str(tmp_path / "missing")):
        assert main(["glue", model, "--tasks", "mrpc"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {model}: ") and err.count("\n") == 1 and "run directory" in err, err


def test_a_regression_task_asked_of_a_classifier_export_is_refused(tmp_path, capsys):
    export = hf_bert(tmp_path / "classifier", head="classifier", num_labels=3)
    capsys.readouterr()
    assert main(["glue", str(export), "--tasks", "stsb", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a 3-class classifier cannot start glue/stsb, a regression task" in err, err
    run, skipped = glue_command.choose_tasks(None, glue_command.check_model(str(export)), str(export), False)
    assert run == ["mrpc"] and "regression task" in skipped["stsb"]


def test_a_task_scored_on_two_splits_averages_them(model_dir, glue_data, tmp_path, monkeypatch, capsys):
    """MNLI's matched and mismatched validation sets, here as a local stand-in with MRPC's columns (the real
    MNLI is on the hub only): the second split is scored after training, the task score is the mean."""
    splits = ("validation_matched", "validation_mismatched")
    stand_in = dataclasses.replace(catalog.CATALOG["glue/mrpc"], name="glue/mnli", folder="glue/mnli",
                                   splits=("train", *splits), eval_splits=splits)
    monkeypatch.setitem(catalog.CATALOG, "glue/mnli", stand_in)
    write_task(glue_data, "mnli", 240, "train", 20)
    for i, split in enumerate(splits):
        write_task(glue_data, "mnli", 60, "validation", 21 + i)
        (glue_data / "glue" / "mnli" / "validation.parquet").rename(glue_data / "glue" / "mnli" / f"{split}.parquet")
    out = tmp_path / "glue"
    assert run_glue(model_dir, out, "--tasks", "mnli", "--seeds", "1") == 0
    seed = json.loads((out / "glue.json").read_text())["tasks"]["mnli"]["seeds"][0]
    matched, mismatched = seed["scores"]["score"], seed["scores"]["score/validation_mismatched"]
    assert {"f1", "acc", "f1/validation_mismatched", "acc/validation_mismatched"} <= set(seed["scores"])
    assert seed["score"] == pytest.approx((matched + mismatched) / 2)
    assert f"score {seed['score']:.4f}" in capsys.readouterr().out
    assert "| MNLI | f1+acc (m/mm) |" in (out / "glue.md").read_text()


def test_from_scratch_trains_the_architecture_with_random_weights(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["glue", str(model_dir), "--from-scratch", "--tasks", "mrpc", "--seeds", "1", *QUICK]) == 0
    out = tmp_path / "runs" / "glue" / f"{model_dir.name}-scratch"  # the default OUT
    summary = json.loads((out / "glue.json").read_text())
    assert summary["from_scratch"] and summary["tasks"]["mrpc"]["seeds"][0]["status"] == "finished"
    config = yaml.safe_load((out / "mrpc" / "seed0" / "config.yaml").read_text())
    assert config["model"]["init"] is None and config["model"]["dim"] == 32 and config["model"]["vocab_size"] == 25
    assert config["data"]["tokenizer"]["path"] == str(model_dir)
    assert "from scratch" in (out / "glue.md").read_text()
