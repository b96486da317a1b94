"""Issue 20, classes 6, 7, 8 and 11: errors name the key the user wrote, in one sentence; catalogue lookup
says which folder it read and refuses a malformed folder under $XFORMER_DATA; evaluation reports classes
its data lacks as absent; ``xformer report`` warns about bad metrics lines and keeps tasks apart; zero-shot
templates with placeholders other than ``{c}`` warn."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from pydantic import field_validator, model_validator

from tests.test_report import Images  # labelled images of a classifier's evaluation: only labels matter
from xformer.commands.recipe import load_recipe
from xformer.commands.report import read_run, write_report
from xformer.config import Section, validate
from xformer.data import catalog
from xformer.data.configs import TextClassificationDataConfig
from xformer.data import sources
from xformer.data.sources import at_split, resolve
from xformer.data.text.texts import load_text_data
from xformer.errors import XformerError
from xformer.train.run_dir import pin_data
from xformer.trained import zeroshot
from xformer.trained.evaluate import absent_warning, classification_report, metric_lines
from xformer.trained.evaluate import write_report as write_eval_report


def write(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- class 6: the key the user wrote


class Probe(Section):
    """A section with a check on one key and a check across keys, as the real sections have."""

    low: int = 0
    high: int = 1
    pair: tuple[int, int] = (0, 1)

    @field_validator("low")
    @classmethod
    def _not_seven(cls, v):
        if v == 7:
            raise ValueError("seven is not allowed")
        return v

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError("probe.low is above probe.high: lower one")
        return self


class Outer(Section):
    probe: Probe = Probe()


def test_a_check_across_keys_is_one_sentence_without_pydantic_words_or_the_section():
    with pytest.raises(XformerError) as err:
        validate(Outer, {"probe": {"low": 5, "high": 2, "pair": [3, 4]}}, "recipe.yaml")
    assert one_line(err) == "recipe.yaml: probe.low is above probe.high: lower one"
    with pytest.raises(XformerError) as err:  # a real section: no "Value error," and no dump of train
        load_recipe("recipes/encoder_tiny.yaml", ["train.warmup_steps=5", "train.warmup_ratio=0.1"])
    msg = one_line(err)
    assert msg.endswith("train.warmup_steps and train.warmup_ratio are both set: set one"), msg
    assert "Value error" not in msg and "{" not in msg


def test_a_check_on_one_key_names_it_without_pydantic_prefixes():
    with pytest.raises(XformerError) as err:
        validate(Outer, {"probe": {"low": 7, "high": 9}}, "r.yaml")
    assert one_line(err) == "r.yaml: probe.low: seven is not allowed (got 7)"
    with pytest.raises(XformerError) as err:
        validate(Outer, {"probe": {"pair": [1]}}, "r.yaml")
    assert one_line(err) == "r.yaml: probe.pair[1]: required, not set"
    with pytest.raises(XformerError) as err:  # a long value is cut, not dumped
        validate(Outer, {"probe": {"high": "x" * 500}}, "r.yaml")
    assert len(one_line(err)) < 200 and err.value.args[0].endswith("...)")


@pytest.fixture
def texts(tmp_path, monkeypatch):
    """A local labelled-text file; no data folder anywhere and the hub off."""
    monkeypatch.delenv("XFORMER_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(catalog, "REPO_DATA", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    return write(tmp_path / "train.parquet", sentence=["good", "bad"] * 8, label=[1, 0] * 8)


def test_a_bad_val_source_is_reported_as_data_val_source_when_the_run_pins_its_data(texts, tmp_path):
    for bad in ("missing.parquet", "sst2:nosuchsplit"):
        cfg = load_recipe(None, ["task=text_classification", f"data.source={texts}", f"data.val_source={bad}"])
        with pytest.raises(XformerError) as err:
            pin_data(tmp_path, cfg, resume=False)
        assert one_line(err).startswith(f"data.val_source {bad!r}"), err.value


def test_a_val_split_of_local_files_is_refused_naming_data_val_split(texts):
    """Local files have no splits: reading them again as 'validation' scored on the training data."""
    cfg = TextClassificationDataConfig(source=str(texts), val_split="validation")
    with pytest.raises(XformerError) as err:
        load_text_data(cfg)
    msg = one_line(err)
    assert msg.startswith("data.val_split='validation' needs an HF dataset name") and "data.val_source" in msg


def test_a_val_split_reads_that_split_of_the_named_set_not_the_split_in_its_value(texts, tmp_path, monkeypatch):
    data = tmp_path / "data"
    write(data / "sst2" / "train.parquet", sentence=["a"], label=[0])
    val = write(data / "sst2" / "validation.parquet", sentence=["b"], label=[1])
    monkeypatch.setenv("XFORMER_DATA", str(data))
    assert at_split("sst2:train", "validation", "data.val_split") == "sst2"
    assert resolve(at_split("sst2:train", "validation", "data.val_split"), split="validation").files == [val]
    with pytest.raises(XformerError) as err:  # a split the set lacks, offline: the key is the split's
        resolve(at_split("sst2", "bogus", "data.val_split"), "data.val_split", split="bogus")
    assert one_line(err).startswith("data.val_split 'sst2': no bogus split")


# ----------------------------------------------------------------------------- class 7: catalogue folders


@pytest.fixture
def two_places(tmp_path, monkeypatch):
    """sst2 beside the project (../shared/data from cwd) and an $XFORMER_DATA folder; the hub off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(catalog, "REPO_DATA", tmp_path / "repo_shared")
    monkeypatch.setattr(catalog, "_TOLD", set())
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    write(tmp_path / "shared" / "data" / "sst2" / "train.parquet", sentence=["beside"], label=[0])
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("XFORMER_DATA", str(data))
    return data


def test_a_name_in_two_places_says_which_folder_it_read_once(two_places, tmp_path, capsys):
    used = write(two_places / "sst2" / "train.parquet", sentence=["env"], label=[0])
    assert resolve("sst2").files == [used.resolve()]
    err = capsys.readouterr().err
    beside = (tmp_path / "shared" / "data" / "sst2").resolve()
    assert f"sst2:train: reading {used.parent.resolve()} (also found in {beside}" in err
    resolve("sst2")
    assert capsys.readouterr().err == ""  # once per process, not once per lookup


@pytest.mark.parametrize("layout", ["empty", "hf_snapshot", "csv", "file"])
def test_a_malformed_folder_under_xformer_data_is_an_error_not_a_fall_through(two_places, layout):
    folder = two_places / "sst2"
    if layout == "file":
        folder.write_text("not a folder")
    else:
        folder.mkdir()
    if layout == "hf_snapshot":
        write(folder / "data" / "train-00000-of-00001.parquet", sentence=["a"], label=[0])
    if layout == "csv":
        (folder / "train.csv").write_text("sentence,label\na,0\n")
    with pytest.raises(XformerError) as err:
        resolve("sst2", "data.source")
    msg = one_line(err)
    assert msg.startswith(f"data.source 'sst2': {folder.resolve()} (under $XFORMER_DATA)"), msg
    assert "data_prep/fetch.py sst2 --out $XFORMER_DATA" in msg
    assert {"hf_snapshot": "holds data/", "csv": "holds train.csv", "empty": "is empty",
            "file": "is a file"}[layout] in msg


def test_a_folder_that_lacks_only_the_split_still_falls_through(two_places, tmp_path):
    """cifar10's local copy holds train only: its test split may come from elsewhere."""
    write(two_places / "sst2" / "validation.parquet", sentence=["v"], label=[0])
    beside = tmp_path / "shared" / "data" / "sst2" / "train.parquet"
    assert resolve("sst2").files == [beside.resolve()]


# ----------------------------------------------------------------------------- class 8: absent classes, reports


class FirstClass(torch.nn.Module):
    """Predicts class 0 for every image."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, pixel_values):
        logits = torch.zeros(len(pixel_values), self.k)
        logits[:, 0] = 1.0
        return SimpleNamespace(logits=logits)


def test_classes_the_data_lacks_are_absent_not_zero_percent(tmp_path, capsys):
    augmenter = SimpleNamespace(eval=lambda x: x)
    report = classification_report(FirstClass(3), Images([0, 0, 1]), augmenter, ["cat", "dog", "eel"], 2,
                                    torch.device("cpu"))
    assert report["per_class_acc"] == {"cat": 1.0, "dog": 0.0, "eel": None}  # dog measured at 0%, eel not at all
    assert report["absent_classes"] == ["eel"]
    write_eval_report(report, tmp_path, "val")
    saved = json.loads((tmp_path / "eval_val.json").read_text())
    assert saved["per_class_acc"]["eel"] is None and saved["absent_classes"] == ["eel"]
    out = capsys.readouterr().out
    assert "(lowest: dog 0.00%; 1 of 3 classes absent from the data (eel), not scored)" in out
    assert all(len(line.split()) == 2 for line in metric_lines(report))  # `xformer eval` stdout: name value
    assert absent_warning(report, "test.parquet") == ("warning: --data test.parquet: no examples of 1 of the run's "
                                                      "classes (eel): absent, not scored (null in the JSON's "
                                                      "per-class figures)")
    present = classification_report(FirstClass(2), Images([0, 1]), augmenter, ["a", "b"], 2, torch.device("cpu"))
    assert present["absent_classes"] == [] and absent_warning(present, "x") is None


def make_run(path: Path, task: str, lines: list[str]) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"task": task, "train": {"max_steps": 30}}))
    (path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return path


def curve(metric: str, steps=(10, 20, 30), start=0.5) -> list[str]:
    return [json.dumps(r) for i, s in enumerate(steps) for r in (
        {"step": s, "split": "train", "loss": 2.0 - i, "elapsed_s": float(s)},
        {"step": s, "split": "val", "loss": 2.5 - i, metric: start + 0.1 * i})]


def test_report_warns_about_repeated_and_unreadable_metrics_lines(tmp_path, capsys):
    lines = curve("acc")
    stale = json.dumps({"step": 20, "split": "val", "loss": 9.0, "acc": 0.01})  # an older attempt's step 20
    run = make_run(tmp_path / "r", "image_classification", [*lines[:2], stale, "{garbage", *lines[2:]])
    r = read_run(run)
    assert [x["step"] for x in r["val"]] == [10, 20, 30] and r["val"][1]["acc"] == pytest.approx(0.6)
    err = capsys.readouterr().err
    assert "line 4: not a metrics record" in err  # the unreadable line
    assert f"{run / 'metrics.jsonl'}: 1 records repeat a step already logged (first: val step 20)" in err
    text = write_report([run], tmp_path / "out").read_text()
    assert "## Warnings" in text and "val step 20" in text


def test_report_keeps_runs_of_different_tasks_in_separate_tables(tmp_path):
    vit = make_run(tmp_path / "vit", "image_classification", curve("acc"))
    vit2 = make_run(tmp_path / "vit2", "image_classification", curve("acc", start=0.2))
    bert = make_run(tmp_path / "bert", "bert_pretraining", curve("mlm_acc", start=0.3))
    text = write_report([vit, bert, vit2], tmp_path / "out").read_text()
    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["image_classification: 2 runs", "bert_pretraining: 1 run"]
    images, pretraining = sections
    assert "| val acc |" in images and "mlm_acc" not in images and "| vit2 |" in images and "| bert |" not in images
    assert "| val mlm_acc |" in pretraining and "val acc" not in pretraining.replace("val mlm_acc", "")
    assert (tmp_path / "out" / "curves_image_classification.png").is_file() == ("curves_" in text)


# ----------------------------------------------------------------------------- class 11: zero-shot templates


@pytest.mark.parametrize("template, other", [("a {} photo of a {c}", "{}"), ("{label}: a {c}", "{label}"),
                                             ("{C} or {c}", "{C}"), ("a {{c}}", "{")])
def test_templates_with_other_placeholders_warn_once_naming_the_key(template, other, capsys, monkeypatch):
    monkeypatch.setattr(zeroshot, "_WARNED", set())
    zeroshot.check_templates(["a photo of a {c}.", template], "eval.templates")
    zeroshot.check_templates([template], "eval.templates")  # every evaluation checks again: one warning
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: eval.templates: prompt template {template!r} has {other}")
    zeroshot.check_templates(zeroshot.CIFAR10_TEMPLATES, "eval.templates")
    assert capsys.readouterr().err == ""


def test_a_template_with_only_another_placeholder_is_refused_with_the_fix():
    with pytest.raises(XformerError) as err:
        zeroshot.check_templates(["a photo of a {C}"], "--template")
    assert one_line(err) == ("--template: prompt template 'a photo of a {C}' has no '{c}' (where the class name "
                             "goes); {C} is not replaced: write {c}")


def test_a_local_path_that_is_also_a_catalogue_name_says_which_it_read(two_places, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "_SHADOWED", set())
    own = write(tmp_path / "project" / "sst2" / "mine.parquet", sentence=["a"], label=[0])
    assert resolve("sst2", "data.source").files == [Path("sst2/mine.parquet")] and own.is_file()
    err = capsys.readouterr().err
    assert f"[data] data.source 'sst2': reading the local path {own.parent.resolve()}, not the catalogue's" in err
    assert "write sst2:<split>" in err
    beside = tmp_path / "shared" / "data" / "sst2" / "train.parquet"
    assert resolve("sst2:train").files == [beside.resolve()]  # as the line says
    write(tmp_path / "project" / "glue" / "mine" / "a.parquet", sentence=["a"], label=[0])
    assert len(resolve("glue/mine").files) == 1  # a path under a catalogue family is a path, not a typo
