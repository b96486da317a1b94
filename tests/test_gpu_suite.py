"""bench/gpu_suite.sh on a CPU: the dry run checks arguments and files and runs nothing heavy; the
helpers of the GPU benchmarks that need no GPU."""

from __future__ import annotations

import importlib.util
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


def suite(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(Path.home())}
    return subprocess.run(["bash", str(SUITE), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_dry_run_checks_everything_and_runs_nothing():
    """Exit 0 with the CIFAR copy present or not: its absence is a warning (it is carried only to the GPU)."""
    done = suite("--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "dry run OK" in out and "error:" not in out
    data = [line for line in out.splitlines() if "gpu_data/cifar10/train.parquet" in line]
    assert data and data[0].startswith("ok:" if (REPO / "gpu_data/cifar10/train.parquet").is_file() else "warning:")
    for what in ("bert_throughput.py accepts its eager arguments", "bert_throughput.py accepts its compile arguments",
                 "gpu_profile.py accepts its arguments", "recipes with the suite's --set overrides",
                 "the summary writes gpu_suite.json and gpu_suite.md"):
        assert f"ok:      bench/{what}" in out or f"ok:      {what}" in out, what


@pytest.mark.parametrize("args", [["--bogus"], ["--dry-run", "extra"], ["--steps", "tests,nope"], ["--steps"]])
def test_bad_arguments_exit_2_with_one_line(args):
    done = suite(*args, timeout=30)
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
