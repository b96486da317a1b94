"""``xformer glue --jobs N``: runs trained side by side in processes of their own score as one after another in
this process and share no cache entry; a run whose process is killed is recorded as failed while the others
finish, and retried on a rerun; the runner's thread shares, errors, deaths and Ctrl-C; bad --jobs values;
``--study`` passes --jobs to each model's glue."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.test_glue import hf_bert, run_glue, seed_scores, tiny_glue_folders
from xformer.commands import glue as glue_command
from xformer.commands import glue_study
from xformer.commands.cli import main
from xformer.commands.parallel_runs import cores, run_parallel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return hf_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(autouse=True)
def glue_data(tmp_path, monkeypatch, offline) -> Path:
    """test_glue's tiny MRPC and STS-B folders (240 training, 60 validation rows); the hub is off."""
    return tiny_glue_folders(tmp_path, monkeypatch, 240, 60)


def killed_on_seed0(g, label: str):
    """run_in_worker, except that the process of seed 0 is killed (SIGKILL: as by the out-of-memory killer)."""
    if g.seed == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return glue_command.run_in_worker(g, label)  # in the spawned process: the real one


def test_two_jobs_score_as_one_and_share_no_cache(model_dir, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_glue(model_dir, one, "--tasks", "mrpc,stsb", "--seeds", "1") == 0
    capsys.readouterr()
    assert run_glue(model_dir, two, "--tasks", "mrpc,stsb", "--seeds", "1", "--jobs", "2") == 0
    printed = capsys.readouterr().out  # the parent prints each run's line, with its label, as it ends
    for label in (r"\[1/2\] mrpc seed 0", r"\[2/2\] stsb seed 0"):
        assert re.search(rf"^{label}: score -?\d\.\d{{4}} \(.*\), \d+\.\d min$", printed, re.M), printed
    for run in ("mrpc/seed0", "stsb/seed0"):
        assert (two / run / "result.json").is_file() and (two / run / "metrics.jsonl").is_file()
    first, second = seed_scores(one), seed_scores(two)
    assert [s[:2] for t in second.values() for s in t] == [(0, "finished")] * 2
    # one thread per process against this process's pool of cores: sums in another order, so not bit-identical
    # (STS-B's Pearson moved by 8e-6 here, MRPC's scores not at all); another seed moves them by 0.06 and more
    for task in first:
        (_, _, expected), = first[task]
        (_, _, scores), = second[task]
        assert scores.keys() == expected.keys()
        assert scores == pytest.approx(expected, abs=1e-4), task
    # the runs of one task wrote no shared cache entry: nothing was written under $XFORMER_CACHE
    cache = Path(os.environ["XFORMER_CACHE"])
    assert not cache.exists() or not any(cache.iterdir())


def test_a_killed_run_is_recorded_the_others_finish_and_a_rerun_retries_it(model_dir, tmp_path, monkeypatch,
                                                                           capsys):
    real = glue_command.run_in_worker
    monkeypatch.setattr(glue_command, "run_in_worker", killed_on_seed0)
    out = tmp_path / "glue"
    assert run_glue(model_dir, out, "--tasks", "mrpc", "--seeds", "2", "--jobs", "2") == 2
    captured = capsys.readouterr()
    assert re.search(r"^\[1/2\] mrpc seed 0: failed after \d+ s: its process was killed \(SIGKILL\)$", captured.out,
                     re.M), captured.out
    assert re.search(r"^\[2/2\] mrpc seed 1: score \d\.\d{4}", captured.out, re.M), captured.out
    assert "1 of 2 GLUE runs failed: mrpc/seed0" in captured.err
    (seed0, status0, _), (seed1, status1, scores1) = seed_scores(out)["mrpc"]
    assert (status0, status1) == ("failed", "finished") and scores1["score"] is not None

    monkeypatch.setattr(glue_command, "run_in_worker", real)
    assert run_glue(model_dir, out, "--tasks", "mrpc", "--seeds", "2", "--jobs", "2") == 0
    assert "[2/2] mrpc seed 1: finished before, skipped" in capsys.readouterr().out
    assert [s[1] for s in seed_scores(out)["mrpc"]] == ["finished", "finished"]


# ----------------------------------------------------------------------------- the runner


def torch_threads() -> int:
    return torch.get_num_threads()


def fails() -> None:
    raise RuntimeError("bad input\nsecond line")


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleeps(folder: str) -> None:
    Path(folder, str(os.getpid())).touch()
    time.sleep(120)


def test_the_runner_shares_the_cores_and_reports_errors_and_deaths():
    outcomes = {}
    calls = [(torch_threads, ()), (fails, ()), (killed, ()), (torch_threads, ())]
    run_parallel(calls, 2, lambda i, outcome: outcomes.__setitem__(i, outcome))
    assert outcomes[0].value == outcomes[3].value == max(1, cores() // 2) and outcomes[0].error is None
    assert outcomes[1].error == "RuntimeError: bad input second line"  # its lines joined, as sweeps record errors
    assert outcomes[2].value is None and outcomes[2].error == "its process was killed (SIGKILL)"
    assert all(o.wall_s > 0 for o in outcomes.values())


def stamps(folder: str, name: str) -> None:
    """Leave ``name.start`` and ``name.end`` in ``folder``, each holding the time it was written, 0.3 s apart."""
    Path(folder, f"{name}.start").write_text(repr(time.time()))
    time.sleep(0.3)
    Path(folder, f"{name}.end").write_text(repr(time.time()))


def test_a_call_starts_when_its_prerequisites_succeeded_and_not_after_a_failure(tmp_path):
    """``after``: b waits for a alone (not for c, which runs beside a); d waits for a run that failed
    (an error), e for one its ``done`` counts as failed, f for d: none of the three starts."""
    (tmp_path / "stamps").mkdir()
    folder = str(tmp_path / "stamps")
    calls = [(stamps, (folder, "a")), (stamps, (folder, "b")), (stamps, (folder, "c")), (fails, ()),
             (stamps, (folder, "d")), (stamps, (folder, "e")), (stamps, (folder, "f")), (stamps, (folder, "g"))]
    after = [set(), {0}, set(), set(), {3}, {7}, {4}, set()]
    outcomes = {}

    def done(index, outcome):
        outcomes[index] = outcome
        return index != 7  # g ran, but counts as failed

    run_parallel(calls, 2, done, after)
    t = {p.name: float(p.read_text()) for p in Path(folder).iterdir()}
    assert sorted(t) == sorted(f"{n}.{w}" for n in "abcg" for w in ("start", "end"))
    assert t["b.start"] >= t["a.end"] and t["c.start"] < t["a.end"]  # c took the second slot at once
    assert all(outcomes[i].error is None for i in (0, 1, 2, 7))
    assert outcomes[3].error == "RuntimeError: bad input second line"
    for i in (4, 5, 6):
        assert outcomes[i].error == "not started: a run it waits for failed" and outcomes[i].value is None


def test_calls_that_wait_for_each_other_are_refused_before_any_starts(tmp_path):
    folder = tmp_path / "stamps"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"calls \[0, 1\] wait for each other"):
        run_parallel([(stamps, (str(folder), "a")), (stamps, (str(folder), "b"))], 2, lambda i, o: None, [{1}, {0}])
    assert not list(folder.iterdir())


def test_ctrl_c_stops_the_running_processes(tmp_path):
    pids = tmp_path / "pids"  # each sleeping process leaves its pid here
    pids.mkdir()

    def interrupt_when_both_run():
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_both_run, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_parallel([(sleeps, (str(pids),))] * 3, 2, lambda i, outcome: None)
    started = list(pids.iterdir())
    assert len(started) == 2 and time.monotonic() - t0 < 60  # the third never started
    for pid in (int(p.name) for p in started):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (terminated and reaped), not sleeping on


# ----------------------------------------------------------------------------- bad values, --study


@pytest.mark.parametrize("value", ["0", "-2"])
def test_jobs_below_one_is_a_one_line_error(model_dir, tmp_path, capsys, value):
    for args in ([f"hf:{model_dir}", "--tasks", "mrpc"], ["--study", str(tmp_path / "study.yaml")]):
        assert main(["glue", *args, "--out", str(tmp_path / "out"), "--jobs", value]) == 2
        err = capsys.readouterr().err
        assert err == f"error: --jobs {value}: at least 1 (the runs trained at once)\n", err
    assert not (tmp_path / "out").exists()


def test_study_passes_jobs_to_each_model(model_dir, tmp_path, monkeypatch):
    study = tmp_path / "study.yaml"
    study.write_text(f"glue_study:\n  protocol: {glue_command.RECIPE}\n  tasks: [mrpc]\n  seeds: 1\n"
                     f"  models:\n    a: {{model: {model_dir}}}\n    b: {{model: {model_dir}}}\n")
    asked = []
    monkeypatch.setattr(glue_study, "glue", lambda model, *args, **kw: asked.append(args[-1]))
    assert main(["glue", "--study", str(study), "--out", str(tmp_path / "out"), "--jobs", "3"]) == 0
    assert asked == [3, 3]
