"""The command line: bad input gives one line and exit code 2; a tiny recipe trains."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "xformer", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_unknown_key_and_wrong_type(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_step: 10\n")
    assert_one_line_error(run_cli("pretrain", str(recipe)), "unknown key 'train.max_step'", "train.max_steps")
    assert_one_line_error(run_cli("pretrain", "recipes/bert_tiny.yaml", "--set", "train.batch_size=lots"),
                          "train.batch_size", "'lots'")


def test_bad_data(tmp_path):
    base = ["pretrain", "recipes/bert_tiny.yaml", "--out", str(tmp_path / "run"),
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    missing = tmp_path / "nope" / "*.parquet"
    assert_one_line_error(run_cli(*base, "--set", f"data.source={missing}"), str(missing))
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"body": ["some text here."]}), wrong)
    assert_one_line_error(run_cli(*base, "--set", f"data.source={wrong}"), "text", "body")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": ["", "  "]}), empty)
    assert_one_line_error(run_cli(*base, "--set", f"data.source={empty}", "--set", "data.val_documents=1"), "empty")


def test_tiny_recipe_trains_and_exports(corpus_path, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("pretrain", "recipes/bert_tiny.yaml", "--out", str(run),
                   "--set", f"data.source={corpus_path}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
                   "--set", "data.tokenizer.vocab_size=400", "--set", "data.val_documents=20",
                   "--set", "train.max_steps=40", "--set", "train.log_every=5", "--set", "train.warmup_steps=5",
                   "--set", "train.batch_size=16", "--set", "train.progress=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["split"] == "train"]
    assert losses[-1] < losses[0] - 0.5, losses
    out = tmp_path / "hf"
    proc = run_cli("export", str(run), str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    from transformers import AutoTokenizer, BertForPreTraining

    assert BertForPreTraining.from_pretrained(out).config.hidden_size == 128
    assert AutoTokenizer.from_pretrained(out)("hello world")["input_ids"][0] is not None
    proc = run_cli("eval", str(run), "--data", str(corpus_path), "--max-documents", "30")
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = dict(line.split() for line in proc.stdout.splitlines())
    saved = json.loads((run / f"eval_{corpus_path.stem}.json").read_text())
    assert printed["mlm_acc"] == f"{saved['mlm_acc']:.4f}" and printed["masked"] == str(saved["masked"])
    assert_one_line_error(run_cli("eval", str(out), "--data", str(corpus_path)), "not an HF directory")
