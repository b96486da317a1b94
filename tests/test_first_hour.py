"""A new user's first hour (issue 21): budgets that say what they run and obey max_steps / max_minutes
whatever the recipe's unit, Ctrl-C and SIGTERM that stop cleanly and resume, exports HF tools accept,
labelled validation figures, partial zero-shot results kept apart, no empty run directories, the CLI's
--version and --help, and the shared data found through $XFORMER_DATA."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import REPO, make_documents, shared_data
from xformer.commands.cli import main
from xformer.commands.on_runs import scores_path
from xformer.config import TrainConfig
from xformer.errors import XformerError
from xformer.tasks import run as train
from xformer.train.schedule import Schedule, budget_steps, describe_budget, warmup_warning

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


# ----------------------------------------------------------------------------- budgets


def test_max_steps_caps_epochs_and_a_time_budget():
    assert budget_steps(TrainConfig(epochs=100, max_steps=40), 88) == (40, 88)  # 8,800 steps of epochs, capped
    assert budget_steps(TrainConfig(epochs=2, max_steps=400), 88) == (176, 88)  # the smaller decides
    assert budget_steps(TrainConfig(epochs=2), 88) == (176, 88) and budget_steps(TrainConfig(), 88) == (1000, 88)
    timed = Schedule(TrainConfig(budget="time", max_minutes=1, max_steps=3), None, sgd())
    assert timed.stop_step == 3 and not timed.spent(2, 10.0) and timed.spent(3, 10.0) and timed.spent(1, 60.0)
    assert timed.early_stop(3, 36.0) == "stopped by train.max_steps=3 at step 3, 0.6 of 1 minutes (LR not decayed)"
    assert timed.early_stop(2, 60.0) is None
    stepped = Schedule(TrainConfig(max_steps=5600, max_minutes=30), 5600, sgd())
    assert stepped.early_stop(2500, 1800.0) == \
        "stopped by train.max_minutes=30 at step 2,500 of 5,600 (LR not decayed)"
    assert stepped.early_stop(5600, 1800.0) is None


def test_the_budget_line_names_the_unit_the_steps_and_what_else_may_stop_it():
    line = describe_budget(TrainConfig(epochs=100, max_steps=40), 40, 88)
    assert line.startswith("budget: 40 steps (train.max_steps=40 caps train.epochs=100, which is 8,800 steps)")
    assert describe_budget(TrainConfig(epochs=5), 440, 88) == \
        "budget: 5 epochs = 440 steps of 88 an epoch (train.epochs)"
    line = describe_budget(TrainConfig(max_steps=5600, max_minutes=30), 5600, 88)
    assert "budget: 5,600 steps (train.max_steps=5600)" in line and "train.max_minutes=30 still applies" in line
    line = describe_budget(TrainConfig(budget="time", max_minutes=30, max_steps=40), None, 88)
    assert "30 minutes" in line and "train.max_steps=40 stops it earlier" in line
    assert "default" in describe_budget(TrainConfig(), 1000, 88)


def test_warmup_longer_than_the_run_is_warned_with_the_numbers():
    warning = warmup_warning(TrainConfig(warmup_steps=440, lr=1e-3), 40)
    assert "train.warmup_steps=440" in warning and "40 steps" in warning and "9% of its peak" in warning
    assert warmup_warning(TrainConfig(warmup_steps=40), 40) is None
    assert warmup_warning(TrainConfig(budget="time", max_minutes=1, warmup_ratio=0.5), None) is None


def test_an_epoch_recipe_obeys_max_steps_and_says_so(tiny_config, tmp_path, capsys):
    result = train(tiny_config("train.epochs=100", "train.max_steps=6", "train.warmup_steps=10"))
    out, err = capsys.readouterr()
    assert result["step"] == 6 and result["stopped_by"] is None
    assert "budget: 6 steps (train.max_steps=6 caps train.epochs=100" in out
    assert "train.warmup_steps=10 is longer than the run's 6 steps" in err
    assert result["val_label"] == "val (first 2 batches, 16 examples)"  # tiny_config: eval_batches=2, batch 8


def test_max_minutes_that_ends_a_step_budget_says_so(tiny_config, capsys):
    result = train(tiny_config("train.max_minutes=0.00001"))  # spent by the first log step
    out = capsys.readouterr().out
    assert result["step"] < 20 and result["stopped_by"] in out
    assert f"stopped by train.max_minutes=1e-05 at step {result['step']} of 20 (LR not decayed)" in out


# ----------------------------------------------------------------------------- signals and resuming


def write_recipe(folder: Path) -> Path:
    pq.write_table(pa.table({"text": make_documents(300)}), folder / "docs.parquet")
    recipe = folder / "tiny.yaml"
    recipe.write_text(f"""task: bert_pretraining
data: {{source: {folder / 'docs.parquet'}, cache_dir: {folder / 'cache'}, val_documents: 20, max_seq_len: 64,
       tokenizer: {{vocab_size: 400}}}}
model: {{dim: 32, depth: 2, num_heads: 2, max_position: 64}}
train: {{batch_size: 8, max_steps: 100000, lr: 1.0e-3, log_every: 1, eval_every: 100000, eval_batches: 2,
        save_every: 100000, save_on_signal_after: 0, progress: false, device: cpu}}
""")
    return recipe


def test_sigterm_writes_a_checkpoint_releases_the_lock_and_resume_continues(tmp_path):
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "xformer", "pretrain", str(recipe), "--out", str(run)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # until a few steps are logged
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert (run / ".lock").is_file()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped: SIGTERM: training stopped at step ") and "wrote checkpoint" in last, err
    step = int(last.split("at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step_{step:07d}").is_dir() and not (run / ".lock").exists()
    done = subprocess.run([sys.executable, "-m", "xformer", "pretrain", str(recipe), "--out", str(run), "--resume",
                           "--set", f"train.max_steps={step + 2}"], env=ENV, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"resumed from step {step} " in done.stdout and "init random" not in done.stdout
    assert f"done: step {step + 2}," in done.stdout and "val (first 2 batches, 16 examples)" in done.stdout


def test_tokenizer_training_stops_within_two_seconds_of_ctrl_c(tmp_path):
    script = """
import itertools, time
from xformer.data.configs import TokenizerConfig
from xformer.data.text.tokenizer import train_wordpiece
words = [f"w{i}x{i * 7 % 13}" for i in range(50000)]
docs = (" ".join(words[(i * 31 + j) % 50000] for j in range(200)) for i in itertools.count())
print("ready", flush=True)
train_wordpiece(docs, TokenizerConfig(vocab_size=30000, train_documents=None, train_chars=None))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    line = ""
    while "interrupted" not in line and proc.poll() is None:  # the line said on stopping, not the exit after it
        line = proc.stderr.readline()
    seconds = time.monotonic() - t0
    watchdog.cancel()
    proc.communicate(timeout=60)
    assert "interrupted while training WordPiece tokenizer: nothing is cached" in line and seconds < 2.0


def test_a_failed_start_leaves_no_run_directory(tiny_config, tmp_path):
    cfg = tiny_config(f"out_dir={tmp_path / 'fresh'}", "train.batch_size=100000")  # found after the dir is made
    with pytest.raises(XformerError, match="fewer than one batch"):
        train(cfg)
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "kept").mkdir()  # a directory the user made is never removed
    with pytest.raises(XformerError):
        train(cfg.model_copy(update={"out_dir": str(tmp_path / "kept")}))
    assert (tmp_path / "kept").is_dir()


# ----------------------------------------------------------------------------- export


def test_export_writes_readable_files_and_a_tokenizer_with_the_model_length(tiny_config, tmp_path):
    from transformers import pipeline

    train(tiny_config("train.max_steps=2"))
    old = os.umask(0o022)
    try:
        assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    for file in (tmp_path / "hf").iterdir():
        assert file.stat().st_mode & 0o777 == 0o644, file
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 64 and "is_local" not in config and "local_files_only" not in config
    fill = pipeline("fill-mask", model=str(tmp_path / "hf"), device="cpu")
    assert len(fill("[MASK] " + "wa " * 600, tokenizer_kwargs={"truncation": True})) == 5  # over 64 tokens


# ----------------------------------------------------------------------------- zero-shot files


def test_partial_zero_shot_results_are_named_by_their_size():
    assert scores_path("run", "zeroshot", "cifar10:train", None, 50000).name == "zeroshot_cifar10_train.json"
    assert scores_path("run", "zeroshot", "cifar10:train", 500, 500).name == "zeroshot_cifar10_train_first500.json"
    assert scores_path("run", "zeroshot", "cifar10:train", 900, 300).name == "zeroshot_cifar10_train.json"  # all


def test_each_max_images_slices_one_decoded_copy(tmp_path):
    from xformer.tasks.contrastive import zeroshot_set

    def png(value: int) -> dict:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    pq.write_table(pa.table({"image": [png(i) for i in range(12)], "label": ["red", "blue"] * 6}),
                   tmp_path / "imgs.parquet")
    sets = [zeroshot_set(str(tmp_path / "imgs.parquet"), "train", n, None, str(tmp_path / "cache"), ("a", "b"))
            for n in (5, 8, None)]
    assert [len(s.images) for s in sets] == [5, 8, 12]
    assert torch.equal(sets[0].images, sets[2].images[:5]) and torch.equal(sets[1].labels, sets[2].labels[:8])
    assert len(list((tmp_path / "cache" / "images").iterdir())) == 1


# ----------------------------------------------------------------------------- the command line, test data


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip().startswith("xformer 0.")
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "examples:" in text and "xformer pretrain recipes/" in text
    for variable in ("XFORMER_DATA", "XFORMER_CACHE", "HF_HUB_OFFLINE"):
        assert variable in text


def test_shared_data_is_found_under_xformer_data(tmp_path, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "train.parquet").write_bytes(b"")
    monkeypatch.setenv("XFORMER_DATA", str(tmp_path))
    assert shared_data("cifar10", "train.parquet") == tmp_path / "cifar10" / "train.parquet"
    with pytest.raises(pytest.skip.Exception):
        shared_data("no-such-set")
