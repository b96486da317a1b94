"""Issue 20, classes 1, 2 and 9: resume compares what the user set; no command writes over its own inputs or
over files it did not create; disk full, read-only folders and files in place of folders are one line and
leave nothing half-written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import make_documents
from xformer.commands.recipe import load_recipe
from xformer.errors import XformerError
from xformer.tasks import run
from xformer.train.run_dir import USER_CONFIG

ROOT = Path(__file__).resolve().parent.parent


def _encoder_tiny(tmp_path: Path, corpus: Path, *overrides: str):
    """recipes/encoder_tiny.yaml (masked LM only: model.nsp is derived False) shrunk to a few CPU steps."""
    return load_recipe(str(ROOT / "recipes" / "encoder_tiny.yaml"), [
        f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}",
        "data.val_documents=20", "data.max_seq_len=64", "data.tokenizer.vocab_size=400", "model.max_position=64",
        "model.dim=32", "train.budget=steps", "train.max_minutes=null", "train.batch_size=8",
        "train.eval_every=1000", "train.eval_batches=2", "train.log_every=1", "train.progress=false",
        "train.device=cpu", *overrides])


# ----------------------------------------------------------------------------- class 1: resume


def test_a_masked_lm_only_recipe_resumes(tmp_path, corpus_path):
    """model.nsp is derived from data.objective (False) while the recipe leaves its default (True)."""
    run(_encoder_tiny(tmp_path, corpus_path, "train.max_steps=2", "train.save_every=2", "data.num_workers=2"))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["nsp"] is False  # resolved
    assert yaml.safe_load((tmp_path / "run" / USER_CONFIG).read_text())["model"]["nsp"] is True  # as set
    # the preparation workers do not change the examples: they may change on resume
    result = run(_encoder_tiny(tmp_path, corpus_path, "train.max_steps=4", "train.save_every=2",
                               "data.num_workers=1"), resume=True)
    assert result["step"] == 4
    with pytest.raises(XformerError, match=r"^--resume: data.mlm_prob differs from .*user_config.yaml"):
        run(_encoder_tiny(tmp_path, corpus_path, "train.max_steps=6", "data.mlm_prob=0.3"), resume=True)


def test_a_run_saved_before_user_configs_resumes_and_still_refuses_a_changed_model(tiny_config, tmp_path):
    """Only the resolved config.yaml: the model is compared resolved (nsp derived on both sides)."""
    run(tiny_config("data.objective=mlm", "train.max_steps=2", "train.save_every=2"))
    (tmp_path / "run" / USER_CONFIG).unlink()
    assert run(tiny_config("data.objective=mlm", "train.max_steps=3"), resume=True)["step"] == 3
    (tmp_path / "run" / USER_CONFIG).unlink()
    with pytest.raises(XformerError, match=r"^--resume: model.dim differs from .*config.yaml \(32 there, 48 now\)"):
        run(tiny_config("data.objective=mlm", "train.max_steps=4", "model.dim=48"), resume=True)
    (tmp_path / "run" / USER_CONFIG).unlink(missing_ok=True)
    with pytest.raises(XformerError, match=r"^--resume: data.max_seq_len differs"):
        run(tiny_config("data.objective=mlm", "train.max_steps=4", "data.max_seq_len=32"), resume=True)


def test_an_explicit_default_is_the_same_setting(tiny_config, tmp_path):
    """Writing out a default (model.nsp=true) on resume is not a change; a derived value never is."""
    run(tiny_config("train.max_steps=2", "train.save_every=2"))
    assert run(tiny_config("train.max_steps=3", "model.nsp=true"), resume=True)["step"] == 3


# ----------------------------------------------------------------------------- class 2: own inputs, others' files


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pretraining_recipe(tmp_path) -> Path:
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": make_documents(60)}), corpus)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "bert_pretraining", "data": {
        "source": str(corpus), "val_documents": 5, "cache_dir": str(tmp_path / "cache"),
        "tokenizer": {"vocab_size": 200, "train_documents": 50}}}))
    return recipe


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_held_out_never_writes_over_its_corpus_or_recipe_or_a_foreign_file(pretraining_recipe, tmp_path, capsys):
    held_out = _script("held_out")
    corpus = tmp_path / "corpus.parquet"
    before = corpus.read_bytes(), pretraining_recipe.read_bytes()
    assert held_out.main([str(pretraining_recipe), str(corpus)]) == 2
    assert "own input" in _one_error_line(capsys)
    assert held_out.main([str(pretraining_recipe), str(corpus), "--overwrite"]) == 2  # not even when asked
    assert held_out.main([str(pretraining_recipe), str(tmp_path / "." / "recipe.yaml"), "--overwrite"]) == 2
    assert (corpus.read_bytes(), pretraining_recipe.read_bytes()) == before
    foreign = tmp_path / "mine.parquet"
    foreign.write_bytes(b"someone's file")
    assert held_out.main([str(pretraining_recipe), str(foreign)]) == 2
    assert "--overwrite" in _one_error_line(capsys) and foreign.read_bytes() == b"someone's file"
    assert held_out.main([str(pretraining_recipe), str(foreign), "--overwrite"]) == 0
    assert pq.read_table(foreign).num_rows == 5
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_train_tokenizer_keeps_a_foreign_folder_and_its_corpus(pretraining_recipe, tmp_path, capsys):
    train_tokenizer = _script("train_tokenizer")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "vocab.txt").write_text("mine")
    assert train_tokenizer.main([str(pretraining_recipe), "--out", str(tmp_path / "mine")]) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert (tmp_path / "mine" / "vocab.txt").read_text() == "mine"
    # the folder holding the corpus is an input, whatever the flags
    assert train_tokenizer.main([str(pretraining_recipe), "--out", str(tmp_path), "--overwrite"]) == 2
    assert "own input" in _one_error_line(capsys)
    assert train_tokenizer.main([str(pretraining_recipe), "--out", str(tmp_path / "mine"), "--overwrite"]) == 0
    vocab = tmp_path / "mine" / "vocab.txt"
    assert (tmp_path / "mine" / "tokenizer.json").is_file() and not (vocab.is_file() and vocab.read_text() == "mine")


def test_export_refuses_a_file_and_a_foreign_folder(tmp_path):
    from xformer.interop.common import write_hf_dir

    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("keep")
    for out, says in ((tmp_path / "file", "is a file"), (tmp_path / "full", "not empty"),
                      (tmp_path / "file" / "below", "cannot export")):
        with pytest.raises(XformerError, match=says):
            write_hf_dir(out, None, {})
    assert (tmp_path / "file").read_text() == "x" and (tmp_path / "full" / "keep").read_text() == "keep"


def test_report_keeps_a_report_md_it_did_not_write(tiny_config, tmp_path):
    from xformer.commands.report import write_report

    run(tiny_config("train.max_steps=1"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "report.md").write_text("my notes")
    with pytest.raises(XformerError, match="not a report of xformer report"):
        write_report([tmp_path / "run"], tmp_path / "notes")
    assert (tmp_path / "notes" / "report.md").read_text() == "my notes"
    write_report([tmp_path / "run"], tmp_path / "run")
    write_report([tmp_path / "run"], tmp_path / "run")  # its own report is replaced


# ----------------------------------------------------------------------------- class 9: disk full, read-only, files for folders


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]) if args else None)


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from xformer.train import checkpoint

    target = tmp_path / "config.yaml"
    target.write_text("old")
    monkeypatch.setattr(checkpoint, "_write_bytes", _enospc)
    with pytest.raises(XformerError, match=r"^could not write .*config.yaml: No space left on device$"):
        checkpoint.atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_folder_made_whole_or_not_at_all(tmp_path):
    from xformer.train.checkpoint import write_dir_whole

    def half(work: Path):
        (work / "a").write_text("a")
        _enospc(work / "b")

    with pytest.raises(XformerError, match="could not write .*tokenizer: No space left"):
        write_dir_whole(tmp_path / "tokenizer", half)
    (tmp_path / "file").write_text("x")
    with pytest.raises(XformerError, match="could not write .*file"):  # a file where the folder goes
        write_dir_whole(tmp_path / "file", lambda work: (work / "a").write_text("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_export_on_a_full_disk_writes_nothing(tmp_path, monkeypatch):
    import torch
    from transformers import BertConfig

    from xformer.interop import common

    monkeypatch.setattr(common, "save_file", _enospc)
    with pytest.raises(XformerError, match=r"could not export to .*out: .*No space left on device.*nothing was written"):
        common.write_hf_dir(tmp_path / "out", BertConfig(), {"w": torch.ones(2)})
    assert list(tmp_path.iterdir()) == []


def test_the_cli_turns_any_file_error_into_one_line(monkeypatch, capsys):
    from xformer.commands import on_runs
    from xformer.commands.cli import main

    monkeypatch.setattr(on_runs, "cmd_export", lambda args: _enospc("/somewhere/out/model.safetensors"))
    assert main(["export", "run", "out"]) == 2
    assert _one_error_line(capsys) == ("error: /somewhere/out/model.safetensors: No space left on device; "
                                       "free some space and run it again")


def test_data_prep_scripts_report_unwritable_places_in_one_line(pretraining_recipe, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    held_out, prepare, fetch = _script("held_out"), _script("prepare_bert"), _script("fetch")
    assert held_out.main([str(pretraining_recipe), str(tmp_path / "afile" / "out.parquet")]) == 2
    assert "is a file" in _one_error_line(capsys)
    assert prepare.main([str(pretraining_recipe), "--cache-dir", str(tmp_path / "afile" / "cache")]) == 2
    _one_error_line(capsys)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert fetch.main(["sst2-sentences", "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in _one_error_line(capsys)


def test_fetch_keeps_an_existing_split_unless_asked_and_on_a_full_disk(tmp_path, capsys, monkeypatch):
    import datasets

    fetch = _script("fetch")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls = []

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append(split)
        return datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0],
                                           "label_text": ["positive", "negative"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    folder = tmp_path / "data" / "sst2-sentences"
    folder.mkdir(parents=True)
    (folder / "train.parquet").write_bytes(b"mine")
    assert fetch.main(["sst2-sentences", "--out", str(tmp_path / "data"), "--split", "train"]) == 2
    assert "--overwrite" in _one_error_line(capsys) and calls == []  # refused before any download
    monkeypatch.setattr(fetch, "write_split", lambda data, folder, split, rows: _enospc(folder / f"{split}.parquet"))
    assert fetch.main(["sst2-sentences", "--out", str(tmp_path / "data"), "--split", "train", "--overwrite"]) == 2
    assert "No space left on device" in _one_error_line(capsys)
    assert (folder / "train.parquet").read_bytes() == b"mine"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["sst2-sentences"]  # no temporary folder
