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
