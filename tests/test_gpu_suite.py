"""bench/gpu_suite.sh on a CPU: the dry run checks arguments and files and runs nothing heavy; the
helpers of the GPU benchmarks that need no GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "bench" / "gpu_suite.sh"


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def suite(*args: str, timeout: int = 300, **extra_env: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(Path.home()),
           **extra_env}
    return subprocess.run(["bash", str(SUITE), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("args, env, arms", [
    ([], {}, "scratch 2, mae 1, finetune 1, probe 1"),
    (["--steps", "mae_study"], {"MAE_STUDY_MINUTES": "0.5", "SUITE_BUDGET_S": "100"},
     "scratch 0.5, mae 0.25, finetune 0.25, probe 0.25"),
])
def test_dry_run_checks_everything_and_runs_nothing(args, env, arms):
    """Exit 0 with the CIFAR copy present or not: its absence is a warning (it is carried only to the GPU).
    The MAE study's copy, its time budgets scaled by MAE_STUDY_MINUTES, expands into its four arms."""
    done = suite("--dry-run", *args, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "dry run OK" in out and "error:" not in out
    minutes = env.get("MAE_STUDY_MINUTES", 2)
    assert (f"ok:      recipes/studies/mae_cifar_gpu.yaml scaled to MAE_STUDY_MINUTES={minutes} "
            f"expands into its arms (minutes: {arms})") in out
    # the study alone (195 s at 0.5 minutes) is over a budget of 100 s; the default steps fit the default budget
    assert ("warning: the selected steps need about 195 s, more than SUITE_BUDGET_S=100" in out) == bool(args)
    assert f"steps: {'mae_study' if args else 'tests bert vit cnn profile'};" in out
    data = [line for line in out.splitlines() if "gpu_data/cifar10/train.parquet" in line]
    assert data and data[0].startswith("ok:" if (REPO / "gpu_data/cifar10/train.parquet").is_file() else "warning:")
    for what in ("bert_throughput.py accepts its eager arguments", "bert_throughput.py accepts its compile arguments",
                 "gpu_profile.py accepts its arguments", "recipes with the suite's --set overrides",
                 "the summary writes gpu_suite.json and gpu_suite.md"):
        assert f"ok:      bench/{what}" in out or f"ok:      {what}" in out, what


@pytest.mark.parametrize("args, env", [(["--bogus"], {}), (["--dry-run", "extra"], {}), (["--steps", "tests,nope"], {}),
                                       (["--steps"], {}), (["--dry-run"], {"MAE_STUDY_MINUTES": "0"}),
                                       (["--steps", "mae_study"], {"MAE_STUDY_MINUTES": "two"})])
def test_bad_arguments_exit_2_with_one_line(args, env):
    done = suite(*args, timeout=30, **env)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_suite.sh: error:"), done.stderr


def test_merge_busy_finds_the_idle_gaps():
    merge_busy = load_bench("gpu_profile").merge_busy
    start, end, busy, gaps = merge_busy([(10, 20), (15, 30), (40, 50), (50, 55), (100, 110)])
    assert (start, end, busy) == (10, 110, 20 + 15 + 10)
    assert gaps == [10, 45]
    assert merge_busy([]) == (0.0, 0.0, 0.0, [])


def test_bert_throughput_arguments():
    bench = load_bench("bert_throughput")
    args = bench.parse_args(["--size", "base", "--backend", "sdpa,varlen", "--pad-frac", "0", "0.3", "--compile"])
    assert args.backends == ["sdpa", "varlen"] and args.pad_frac == [0.0, 0.3] and args.compile
    for bad in (["--backend", "sdpa,nope"], ["--backend", "sdpa,sdpa"], ["--pad-frac", "1.0"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args(bad)
        assert exit_info.value.code == 2


# `xformer sweep` for the study step without training: the runs of the scaled copy, expanded as the real
# sweep does, each given the files a real run leaves (and a checkpoint, which the suite must not copy)
FAKE_SWEEP = """
import argparse, json
from pathlib import Path
from xformer.commands.sweep import expand
p = argparse.ArgumentParser()
p.add_argument("recipe")
p.add_argument("--out")
p.add_argument("--set", action="append", default=[])
args = p.parse_args()
root, runs = expand(args.recipe, args.set, out_dir=args.out)
val = {"scratch": {"acc": 0.5, "loss": 1.5}, "mae": {"loss": 0.4321, "baseline_loss": 0.9876},
       "finetune": {"acc": 0.625, "loss": 1.2}, "probe": {"acc": 0.3125, "loss": 1.9}}
for r in runs:
    run = Path(r.cfg.out_dir)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "model.safetensors").write_text("weights")
    records = [{"step": 10, "split": "train", "loss": 2.0, "elapsed_s": 15.0},
               {"step": 20, "split": "train", "loss": 1.0, "elapsed_s": 30.0},
               {"step": 20, "split": "val", **val[r.name]}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\\n" for x in records))
    (run / "result.json").write_text(json.dumps({"name": r.name, "status": "finished", "step": 21}))
    (run / "config.yaml").write_text(f"max_minutes: {r.cfg.train.max_minutes}\\nprogress: {r.cfg.train.progress}\\n")
    (run / "train.log").write_text("trained\\n")
    if r.name == "mae":
        (run / "recon").mkdir()
        (run / "recon" / "step_000020.png").write_bytes(b"png")
(root / "report.md").write_text("# report\\n")
(root / "curves.png").write_bytes(b"png")
"""


@pytest.mark.parametrize("works", [True, False])
def test_mae_study_step_copies_the_arms_and_summarizes_them(tmp_path, works):
    """A run of --steps mae_study with a stand-in `xformer sweep`: the study runs as a copy whose arms get the
    scaled minutes, each arm's files (no checkpoints) land in mae_study/, and the summary has a row per arm;
    a sweep that fails leaves "no results" and its exit status in the step table."""
    failing = "import sys\nsys.exit('error: the study is broken')\n"
    (tmp_path / "fake_sweep.py").write_text(FAKE_SWEEP if works else failing)
    stub = tmp_path / "python"
    stub.write_text(f"""#!/bin/bash
[ "$1 $2 $3" = "-m xformer sweep" ] && exec {sys.executable} {tmp_path / 'fake_sweep.py'} "${{@:4}}"
exec {sys.executable} "$@"
""")
    stub.chmod(0o755)
    out = tmp_path / "out"
    done = suite("--steps", "mae_study", timeout=120, PYTHON=str(stub), OUT=str(out), SUITE_WORK=str(tmp_path / "work"),
                 MAE_STUDY_MINUTES="3")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "gpu_suite.json").read_text())
    md = (out / "gpu_suite.md").read_text()
    study_md = md.split("## MAE study")[1].split("##")[0]
    if not works:
        assert summary["steps"]["mae_study"]["rc"] == 1 and not summary["mae_study"]
        assert "no results" in study_md and "error: the study is broken" in (out / "mae_study.log").read_text()
        return
    assert summary["steps"]["mae_study"]["rc"] == 0
    study = out / "mae_study"
    assert sorted(p.name for p in study.iterdir()) == ["curves.png", "finetune", "mae", "probe", "report.md", "scratch"]
    for arm, minutes in (("scratch", 3.0), ("mae", 1.5), ("finetune", 1.5), ("probe", 1.5)):
        files = sorted(p.name for p in (study / arm).iterdir())
        assert files == sorted(["config.yaml", "metrics.jsonl", "result.json", "train.log"]
                               + (["step_000020.png"] if arm == "mae" else [])), (arm, files)
        assert (study / arm / "config.yaml").read_text() == f"max_minutes: {minutes}\nprogress: False\n"
    assert list(summary["mae_study"]) == ["scratch", "mae", "finetune", "probe"]
    assert summary["mae_study"]["mae"]["baseline_loss"] == 0.9876
    rows = [line for line in study_md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| scratch | finished | 21 | 0.50 | 50.00% | 1.5000 |",
                    "| mae | finished | 21 | 0.50 | - | 0.4321 (baseline 0.9876) |",
                    "| finetune | finished | 21 | 0.50 | 62.50% | 1.2000 |",
                    "| probe | finished | 21 | 0.50 | 31.25% | 1.9000 |"]


def test_profile_runs_on_the_cpu_into_a_new_work_folder(tmp_path):
    """--work names a folder that does not exist yet (as the suite passes it): it is made, and the BERT
    target's synthetic corpus is written into it (an H100 run failed here before)."""
    bench = load_bench("gpu_profile")
    tiny = ["model.dim=32", "model.depth=1", "model.num_heads=2", "model.mlp_ratio=2", "train.batch_size=4",
            "data.max_seq_len=32", "train.device=cpu", "train.compile=false", "train.precision=fp32"]
    out = tmp_path / "profile.json"
    code = bench.main(["--targets", "bert", "--warmup", "1", "--steps", "1", "--work", str(tmp_path / "new" / "work"),
                       "--json", str(out), *[f"--bert-set={kv}" for kv in tiny]])
    record = json.loads(out.read_text())
    assert code == 0, record
    assert (tmp_path / "new" / "work" / "bert_corpus.parquet").is_file()
    assert "error" not in record["bert"] and record["bert"]["step_s"] > 0, record
