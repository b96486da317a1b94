"""The run directory's guards and the trainer's faults: locks, pinned data, divergence, resume limits."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import make_documents
from xformer.train.checkpoint import list_checkpoints
from xformer.commands.cli import main
from xformer.data.sources import source_fingerprint, stat_fingerprint
from xformer.errors import XformerError
from xformer.train.run_dir import RunLock, config_diff
from xformer.tasks import run


def test_a_second_process_is_refused_and_a_stale_lock_taken_over(tiny_config, tmp_path, capsys):
    cfg = tiny_config("train.max_steps=2")
    (tmp_path / "run").mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": __import__("socket").gethostname()}))
        with pytest.raises(XformerError, match=f"in use by process {sleeper.pid}"):
            run(cfg)
    finally:
        sleeper.kill()
        sleeper.wait()
    run(cfg)  # the sleeper is gone: its lock is stale
    assert "taking over the stale lock" in capsys.readouterr().err
    assert not (tmp_path / "run" / ".lock").exists()  # released at the end
    with RunLock(tmp_path / "run"), pytest.raises(XformerError, match="in use"):
        RunLock(tmp_path / "run").__enter__()


def test_resume_refuses_changed_data_and_keeps_its_tokenizer(tiny_config, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": make_documents(200)}), corpus)
    cfg = tiny_config(f"data.source={corpus}", "train.max_steps=4", "train.save_every=2")
    run(cfg)
    vocab = (tmp_path / "run" / "tokenizer" / "tokenizer.json").read_bytes()
    # a cold cache would train a new tokenizer; the run keeps its own
    longer = tiny_config(f"data.source={corpus}", "train.max_steps=6", "train.save_every=2",
                         f"data.cache_dir={tmp_path / 'cold'}")
    assert run(longer, resume=True)["step"] == 6
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").read_bytes() == vocab
    # a run that pinned the older fingerprint of file stats resumes while they hold
    (tmp_path / "run" / "data.json").write_text(json.dumps({"data.source": stat_fingerprint(str(corpus))}))
    assert run(tiny_config(f"data.source={corpus}", "train.max_steps=7", "train.save_every=2"), resume=True)["step"] == 7
    assert json.loads((tmp_path / "run" / "data.json").read_text()) == {"data.source": source_fingerprint(str(corpus))}
    pq.write_table(pa.table({"text": make_documents(150, seed=3)}), corpus)
    with pytest.raises(XformerError, match="data.source .* changed since"):
        run(tiny_config(f"data.source={corpus}", "train.max_steps=8"), resume=True)


def test_divergence_stops_with_the_step_and_saves_nothing(tiny_config, tmp_path):
    cfg = tiny_config("train.lr=1e6", "train.clip_grad=null", "train.max_steps=30", "train.save_every=1",
                      "train.warmup_steps=0")
    with pytest.raises(XformerError, match=r"^step \d+: the training loss or gradient is not finite") as err:
        run(cfg)
    bad = int(str(err.value).split()[1].rstrip(":"))
    saved = [int(p.name.split("_")[1]) for p in list_checkpoints(tmp_path / "run")]
    assert all(step < bad for step in saved)  # nothing saved from the diverged step on
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


def test_divergence_from_the_cli_is_one_line_exit_2(corpus_path, tmp_path, capsys):
    sets = [f"data.source={corpus_path}", f"data.cache_dir={tmp_path / 'cache'}", "data.val_documents=20",
            "data.max_seq_len=64", "data.tokenizer.vocab_size=400", "model.dim=32", "model.depth=2",
            "model.num_heads=2", "model.max_position=64", "train.batch_size=8", "train.max_steps=20",
            "train.lr=1e6", "train.clip_grad=null", "train.log_every=1", "train.progress=false", "train.device=cpu"]
    code = main(["pretrain", "recipes/bert_tiny.yaml", "--out", str(tmp_path / "run"),
                 *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: step ") and "not finite" in err
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2  # nothing good to export


def test_resume_edge_cases(tiny_config, tmp_path, capsys):
    run(tiny_config("train.max_steps=4"), resume=True)
    assert "has no checkpoint yet; starting from step 0" in capsys.readouterr().err
    with pytest.raises(XformerError, match="at step 4, beyond the 2 steps"):
        run(tiny_config("train.max_steps=2"), resume=True)
    with pytest.raises(XformerError, match="model.dim differs"):
        run(tiny_config("train.max_steps=6", "model.dim=48", "model.num_heads=2"), resume=True)


def test_bad_out_dirs(tiny_config, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(XformerError, match="is a file"):
        run(tiny_config(f"out_dir={tmp_path / 'file'}"))
    with pytest.raises(XformerError, match="cannot write there"):
        run(tiny_config(f"out_dir={tmp_path / 'file' / 'below'}"))


def test_config_diff_compares_at_any_depth_and_skips_runtime_values():
    saved = {"model": {"text": {"vocab_size": 812, "dim": 32}, "dim": 8}, "data": {"source": "a"}}
    assert config_diff(saved, {"model": {"text": {"vocab_size": None, "dim": 32}, "dim": 8}}) is None
    assert config_diff(saved, {"model": {"text": {"dim": 64}}}) == "model.text.dim (32 there, 64 now)"
    assert config_diff(saved, {"out_dir": "x", "data": {"source": "b"}}) == "data.source ('a' there, 'b' now)"


def test_sequence_longer_than_positions_is_refused_before_any_data(tmp_path):
    from xformer.commands.recipe import load_recipe

    with pytest.raises(XformerError, match="max_seq_len=256 is longer than model.max_position=128"):
        load_recipe(None, ["data.max_seq_len=256", "model.max_position=128", f"data.source={tmp_path}"])


def test_resume_falls_back_past_a_damaged_latest_checkpoint(tiny_config, tmp_path, capsys):
    run(tiny_config("train.max_steps=4", "train.save_every=2", "train.keep_last=2"))
    latest = list_checkpoints(tmp_path / "run")[-1]
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk or a copy cut short
    result = run(tiny_config("train.max_steps=6", "train.save_every=2", "train.keep_last=2"), resume=True)
    assert result["step"] == 6
    err = capsys.readouterr().err
    assert f"damaged checkpoint {latest}" in err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == sorted(steps) and steps.count(3) == 1  # resumed from step 2: steps 3-4 were redone once


def test_nothing_non_finite_is_exported(tmp_path):
    from xformer.interop.common import write_hf_dir

    with pytest.raises(XformerError, match="not finite .first: w"):
        write_hf_dir(tmp_path / "out", None, {"w": torch.tensor([1.0, float("nan")])})
    assert not (tmp_path / "out").exists()


def test_metrics_write_failure_is_one_line(tmp_path):
    from xformer.train.metrics import MetricsLog, read_metrics

    log = MetricsLog(tmp_path / "m.jsonl", None)
    log.write({"step": 1, "split": "train", "loss": float("nan")})
    assert read_metrics(tmp_path / "m.jsonl") == [{"step": 1, "split": "train", "loss": None}]
    (tmp_path / "m.jsonl").unlink()
    (tmp_path / "m.jsonl").mkdir()  # writing now fails (EISDIR)
    with pytest.raises(XformerError, match="could not write"):
        log.write({"step": 2, "split": "train"})
