"""Runs trained side by side, each in a spawned process: ``xformer glue --jobs N`` trains up to N (task, seed)
runs at once (:func:`train_at_once`) through :func:`run_parallel`, which runs any calls that way.

Each call gets a fresh process (spawned: fork and the tokenizer's Rust thread pool do not mix), whose torch
thread pool is the machine's cores shared out among the processes running at once: small models use two
threads poorly, so two runs of one thread each finish sooner than one run after another of two.

A call that raises, or whose process dies (killed, out of memory), comes back as an error and the other
calls go on. Ctrl-C (or SIGTERM, which the command line turns into Ctrl-C) stops every running process: the
parent sends each a SIGTERM, and kills one still alive after :data:`STOP_WAIT_S`. A SIGTERM sent to the
parent alone reaches each training loop as its one stop request (a checkpoint if its last one is old);
after a terminal's Ctrl-C, which reaches every process, it is the second and the loops stop at once, so
those runs resume from their last periodic checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import connection
from pathlib import Path
from typing import Any

from xformer.commands.results import SweepRun, error_line, is_finished, read_result
from xformer.train.checkpoint import atomic_write_text
from xformer.train.run_dir import prepare_dir

STOP_WAIT_S = 30.0  # how long a stopped process may take to write its checkpoint and exit


@dataclass
class Outcome:
    """How one call ended: what it returned, or why it failed (``error``, one line), and its seconds."""

    value: Any
    error: str | None
    wall_s: float


def cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _child(send, fn: Callable, args: tuple, threads: int) -> None:
    """A spawned process: ``fn(*args)`` with ``threads`` torch threads; sends (value, None) or (None, error)."""
    import torch

    torch.set_num_threads(threads)
    try:
        try:
            message = (fn(*args), None)
        except Exception as err:  # the call's failure, reported to the parent, which goes on
            message = (None, error_line(err))
        send.send(message)
    except KeyboardInterrupt:  # Ctrl-C or the parent's SIGTERM: exit without a traceback per process
        sys.exit(130)
    finally:
        send.close()


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"its process was killed ({signal.Signals(-exitcode).name})"
    return f"its process exited with code {exitcode} without a result"


def _stop(running: dict) -> None:
    """Terminate the running processes (SIGTERM), wait for them, kill those still alive after STOP_WAIT_S."""
    processes = [process for _, process, _ in running.values()]
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + STOP_WAIT_S
    try:
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:  # a second Ctrl-C while waiting: no more waiting
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()


def run_parallel(calls: list[tuple[Callable, tuple]], jobs: int, done: Callable[[int, Outcome], bool | None],
                 after: list[set[int]] | None = None) -> None:
    """Run each ``fn(*args)`` of ``calls`` in its own spawned process, at most ``jobs`` at once, each with
    ``cores() // jobs`` torch threads (at least one; ``jobs`` counted as at most the number of calls), and
    hand ``done(index, outcome)`` each call's :class:`Outcome` as it ends, in the order they end. ``after[i]``
    (when given) holds the indices of the calls that must succeed before call ``i`` starts: a call fails when
    its outcome has an error or ``done`` returns False for it. A free slot goes to the first call in list
    order that may start; a call one of whose prerequisites failed is not started: it ends with an error
    saying so. ``fn`` and ``args`` must pickle (``fn`` a module-level function). Any exception here (Ctrl-C,
    one raised by ``done``) stops the running processes before it propagates."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    threads = max(1, cores() // max(1, min(jobs, len(calls))))
    after = after or [set() for _ in calls]
    waiting = list(range(len(calls)))
    succeeded, failed = set(), set()
    running: dict = {}  # the parent's end of each process's pipe -> (index, process, start time)

    def end(index: int, outcome: Outcome) -> None:
        ok = done(index, outcome) is not False and outcome.error is None
        (succeeded if ok else failed).add(index)

    try:
        while waiting or running:
            while blocked := [i for i in waiting if after[i] & failed]:  # and those that wait for them, in turn
                for index in blocked:
                    waiting.remove(index)
                    end(index, Outcome(None, "not started: a run it waits for failed", 0.0))
            for index in [i for i in waiting if after[i] <= succeeded][:max(0, jobs - len(running))]:
                waiting.remove(index)
                fn, args = calls[index]
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(send, fn, args, threads), name=f"xformer-run-{index}")
                process.start()
                send.close()  # the child holds the only write end now: its death reads as end-of-file
                running[receive] = (index, process, time.perf_counter())
            if not running:
                if waiting:  # only a cycle in ``after`` leaves calls that can never start
                    raise ValueError(f"calls {waiting} wait for each other")
                break
            for receive in connection.wait(list(running)):
                index, process, t0 = running.pop(receive)
                try:
                    value, error = receive.recv()
                except EOFError:  # the process died before it sent a result
                    process.join()
                    value, error = None, _died(process.exitcode)
                receive.close()
                process.join()
                end(index, Outcome(value, error, time.perf_counter() - t0))
    finally:
        _stop(running)


# ----------------------------------------------------------------------------- runs


def record_outcome(run: SweepRun, label: str, outcome: Outcome, line: Callable[[dict], str]) -> dict:
    """Print a run's progress line as its process ends and return its record. ``outcome.value`` is what the
    process returned: :func:`~xformer.commands.sweep.run_one`'s record and what it printed. A run whose
    process died (or failed outside ``run_one``) is recorded in its ``result.json`` as ``run_one`` records a
    failure, with that error, unless it finished before it died."""
    if outcome.error is None:
        record, printed = outcome.value
        print(printed, end="", flush=True)
        return record
    record = read_result(run.cfg.out_dir)
    if is_finished(record):  # its process died after run_one wrote the result
        print(f"{label}: {line(record)}", flush=True)
        return record
    record = {"name": run.name, "values": run.values, "wall_s": outcome.wall_s, "status": "failed",
              "error": outcome.error}
    prepare_dir(Path(run.cfg.out_dir))  # a process that died starting did not make it
    atomic_write_text(Path(run.cfg.out_dir) / "result.json", json.dumps(record, indent=2))
    print(f"{label}: failed after {outcome.wall_s:.0f} s: {outcome.error}", flush=True)
    return record


def train_at_once(todo: list[tuple[str, SweepRun, tuple, Callable[[dict], str]]], jobs: int,
                  worker: Callable, after: list[set[int]] | None = None) -> list[str]:
    """Train each (label, run, args, line) of ``todo`` as ``worker(*args)`` in a process of its own, up to
    ``jobs`` at once, each after the runs ``after`` names for it (indices into ``todo``, as
    :func:`run_parallel` takes them); ``worker`` (module-level, to pickle) runs ``run_one`` and returns its
    record and what it printed; ``line`` makes the progress line of a finished record. Each run's line is
    printed as it ends; returns the names of the runs that failed, in ``todo``'s order."""
    failed = set()

    def done(index: int, outcome: Outcome) -> bool:
        label, run, _, line = todo[index]
        if is_finished(record_outcome(run, label, outcome, line)):
            return True
        failed.add(run.name)
        return False

    run_parallel([(worker, args) for _, _, args, _ in todo], jobs, done, after)
    return [run.name for _, run, _, _ in todo if run.name in failed]
