"""``xformer sweep``: run every combination of a grid of recipe values, one run directory each.

The grid comes from the recipe's ``sweep`` section and ``--grid key=v1,v2`` flags (a flag replaces the
recipe's values for its key); each grid point is crossed with each of ``sweep.variants``. Runs go one
after another into ``OUT/<name>``, named by the values that vary (``optimizer=sgd_lr=0.01``).

Each run ends with ``RUN/result.json`` (its final metrics, or ``"status": "failed"`` and the error). On a
rerun, a finished run is skipped when its saved ``config.yaml`` matches what the recipe now decides (and
the rerun is refused when it does not), a failed one is retried and one that was cut short resumes from
its last checkpoint: rerunning a sweep finishes it. A failing run does not stop the others; at the end
the report (:mod:`xformer.commands.report`) is written, then the failures are raised as one error.

With ``--jobs N`` up to N runs train at once, each in a process of its own with the machine's cores shared
out (:mod:`xformer.commands.parallel_runs`): a run that starts from another run of the sweep (``model.init``
naming that run's directory or a checkpoint in it) starts when that run has finished, and is not started
when it failed.

A variant's text values may name the sweep's directory as ``{sweep}``: ``model.init: "{sweep}/mae"``
fine-tunes from the sweep's earlier run ``mae`` wherever ``--out`` puts the sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from xformer import tasks
from xformer.commands.parallel_runs import train_at_once
from xformer.commands.recipe import parse_override, set_path
from xformer.commands.report import write_report
from xformer.commands.results import SweepRun, error_line, is_finished, read_result
from xformer.config import load_yaml
from xformer.errors import XformerError
from xformer.train.checkpoint import atomic_write_text, latest_checkpoint
from xformer.train.metrics import finite_or_none
from xformer.train.run_dir import config_diff, prepare_dir, recipe_tree, saved_config
from xformer.tasks import parse_config


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """``"train.lr=1e-3,3e-4"`` -> ("train.lr", [0.001, 0.0003]); values are YAML, and commas inside
    brackets stay with their value (``model.channels=[32,64,128],[64,128,256]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise XformerError(f"--grid expects key=value1,value2,..., got {text!r}")
    parts, depth, current = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if depth != 0 or any(not p.strip() for p in parts):
        raise XformerError(f"--grid {text!r}: expected comma-separated values, e.g. {key.strip()}=1,2,3")
    return key.strip(), [parse_override(f"v={p.strip()}")[1] for p in parts]


def _fmt(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "none"


def run_name(variant: str | None, values: dict[str, Any]) -> str:
    """``variant_key=value_...`` with each key's last part, or its whole dotted name when two keys share one."""
    last = [k.split(".")[-1] for k in values]
    keys = [k.split(".")[-1] if last.count(k.split(".")[-1]) == 1 else k for k in values]
    parts = ([variant] if variant else []) + [f"{k}={_fmt(v)}" for k, v in zip(keys, values.values())]
    return "_".join(parts) or "run"



def _in_sweep(value: Any, root: Path) -> Any:
    """``value`` with ``{sweep}`` in its text (at any depth) replaced by the sweep directory ``root``."""
    if isinstance(value, str):
        return value.replace("{sweep}", str(root))
    if isinstance(value, dict):
        return {k: _in_sweep(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_sweep(v, root) for v in value]
    return value


def expand(recipe: str | Path, overrides: list[str] = (), grid: list[str] = (),
           out_dir: str | None = None) -> tuple[Path, list[SweepRun]]:
    """The sweep's directory and its runs, every config validated before anything trains. Each run
    keeps the recipe's ``sweep.metric``, so that a report on its directory ranks by that metric."""
    tree = load_yaml(recipe)
    for text in overrides:
        keys, value = parse_override(text)
        set_path(tree, keys, value)
    base = parse_config(tree, str(recipe))  # validates the recipe and its sweep section
    axes = dict(base.sweep.grid)
    for text in grid:
        key, values = parse_grid(text)
        axes[key] = values
    variants = base.sweep.variants or {None: {}}
    if not axes and not base.sweep.variants:
        raise XformerError(f"{recipe}: nothing to sweep; give --grid key=v1,v2 or a sweep.grid section")
    root = Path(out_dir or base.out_dir or Path("runs") / Path(recipe).stem)
    tree.pop("sweep", None)
    if base.sweep.metric is not None:
        tree["sweep"] = {"metric": base.sweep.metric}
    runs = []
    for variant, changes in variants.items():
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo))
            child = copy.deepcopy(tree)
            for key, value in [*changes.items(), *values.items()]:
                set_path(child, key.split("."), _in_sweep(value, root))
            name = run_name(variant, values)
            child["out_dir"] = str(root / name)
            what = f"{recipe} run {name}"
            runs.append(SweepRun(name, {**({"variant": variant} if variant else {}), **values}, parse_config(child, what)))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise XformerError(f"{recipe}: two sweep runs would share the name {next(n for n in names if names.count(n) > 1)!r}")
    return root, runs


# ----------------------------------------------------------------------------- running


def refuse_changed(recipe: str | Path, finished: list[SweepRun], what: str = "sweep") -> None:
    """XformerError when a finished run was trained with another config than the ``what`` (a sweep, a GLUE
    run) now gives it: skipping it would report stale results under the new values."""
    changed = []
    for r in finished:
        run_dir = Path(r.cfg.out_dir)
        try:
            saved = saved_config(run_dir)
        except XformerError as err:
            changed.append((r, run_dir, f"its config.yaml cannot be read ({err})"))
            continue
        diff = config_diff(saved, recipe_tree(r.cfg)) if saved is not None else "it has no config.yaml to compare with"
        if diff is not None:
            changed.append((r, run_dir, diff))
    if changed:
        r, run_dir, diff = changed[0]
        more = f" (and {len(changed) - 1} more of its runs)" if len(changed) > 1 else ""
        raise XformerError(f"{recipe}: {what} run {r.name} finished with another config than now: {diff}{more}; "
                           f"use another --out for the new {what}, or delete {run_dir} to run it again")


def describe(record: dict) -> str:
    """A finished run's progress line after its label: resumed or not, wall time, final validation metrics."""
    val = ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} -"
                    for k, v in record["val"].items() if not k.startswith(("i2t", "zs_")))
    return f"{'resumed, ' if record['resumed'] else ''}{record['wall_s']:.0f} s; val {val}"


def check_jobs(jobs: int) -> None:
    """XformerError unless ``--jobs`` asks for at least one run at once."""
    if jobs < 1:
        raise XformerError(f"--jobs {jobs}: at least 1 (the runs trained at once)")


def run_one(r: SweepRun, label: str, train, line=describe) -> dict:
    """Train one run with ``train`` (resuming from its checkpoints, if any; output to ``RUN/train.log``),
    write its ``result.json`` and print ``label: line(record)`` (or the error); returns the record, whose
    ``status`` is ``failed`` when it failed, whatever the error."""
    run_dir = Path(r.cfg.out_dir)
    resume = latest_checkpoint(run_dir) is not None
    prepare_dir(run_dir)
    r.cfg.train.progress = False
    error, t0 = None, time.perf_counter()
    with open(run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            result = train(r.cfg, resume=resume)
        except Exception as err:  # this run's failure only: the sweep goes on (KeyboardInterrupt still stops it)
            if isinstance(err, XformerError):
                print(f"error: {err}", file=sys.stderr)
            else:
                traceback.print_exc()
            error = error_line(err)
    wall = time.perf_counter() - t0
    record = {"name": r.name, "values": r.values, "wall_s": wall, "resumed": resume}
    if error is not None:
        record.update(status="failed", error=error)
        atomic_write_text(run_dir / "result.json", json.dumps(record, indent=2))
        print(f"{label}: failed after {wall:.0f} s: {error}", flush=True)
        return record
    record.update(status="finished", step=result["step"], val=finite_or_none(result["val"]),
                  train=finite_or_none(result["train"]))
    atomic_write_text(run_dir / "result.json", json.dumps(record, indent=2, allow_nan=False))
    print(f"{label}: {line(record)}", flush=True)
    return record


def run_captured(r: SweepRun, label: str, train, line=describe) -> tuple[dict, str]:
    """:func:`run_one`, with its progress line returned beside its record instead of printed: what a run in a
    process of its own hands the parent to print."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        record = run_one(r, label, train, line)
    return record, printed.getvalue()


def run_in_worker(r: SweepRun, label: str) -> tuple[dict, str]:
    """One sweep run in a process of its own (:func:`run_captured`)."""
    return run_captured(r, label, tasks.run)


def _starts_from(r: SweepRun, other: SweepRun) -> bool:
    """Whether ``r``'s ``model.init`` is ``other``'s run directory or a path inside it."""
    init = getattr(getattr(r.cfg, "model", None), "init", None)
    if not isinstance(init, str) or init.startswith("hf:"):
        return False
    there = Path(other.cfg.out_dir).resolve()
    return there == Path(init).resolve() or there in Path(init).resolve().parents


def prerequisites(runs: list[SweepRun]) -> list[set[int]]:
    """For each of ``runs``, the indices of the other runs of ``runs`` it starts from (``model.init``);
    XformerError when some of them start from each other."""
    after = [{j for j, other in enumerate(runs) if other is not r and _starts_from(r, other)} for r in runs]
    ordered: set[int] = set()
    while len(ordered) < len(runs):
        ready = {i for i in range(len(runs)) if i not in ordered and after[i] <= ordered}
        if not ready:
            left = [r.name for i, r in enumerate(runs) if i not in ordered]
            raise XformerError(f"sweep runs {', '.join(left)} start from each other (model.init)")
        ordered |= ready
    return after


def sweep(recipe: str | Path, overrides: list[str] = (), grid: list[str] = (), out_dir: str | None = None,
          jobs: int = 1) -> Path:
    """Run (or finish) the sweep, one run at a time or up to ``jobs`` at once in processes of their own; each
    run's output goes to ``RUN_DIR/train.log``. Returns the sweep directory, which then holds ``report.md``
    and the plots; XformerError after the report when some runs failed."""
    check_jobs(jobs)
    root, runs = expand(recipe, overrides, grid, out_dir)
    finished = {r.name for r in runs if is_finished(read_result(r.cfg.out_dir))}
    refuse_changed(recipe, [r for r in runs if r.name in finished])
    left = [r for r in runs if r.name not in finished]
    after = prerequisites(left)
    prepare_dir(root)
    atomic_write_text(root / "sweep.yaml", yaml.safe_dump(
        {"recipe": str(recipe), "overrides": list(overrides), "runs": {r.name: r.values for r in runs}}, sort_keys=False))
    labels = {r.name: f"[{i}/{len(runs)}] {r.name}" for i, r in enumerate(runs, 1)}
    failed = []
    for r in runs:
        if r.name in finished:
            print(f"{labels[r.name]}: finished before, skipped", flush=True)
        elif jobs == 1 and not is_finished(run_one(r, labels[r.name], tasks.run)):  # tasks.run looked up now: tests replace it
            failed.append(r.name)
    if jobs > 1:
        todo = [(labels[r.name], r, (r, labels[r.name]), describe) for r in left]
        failed += train_at_once(todo, jobs, run_in_worker, after)
    report = write_report([Path(r.cfg.out_dir) for r in runs], root)
    print(f"report: {report}")
    if failed:
        log = root / failed[0] / "train.log" if len(failed) == 1 else root / "<run>" / "train.log"
        raise XformerError(f"{len(failed)} of {len(runs)} sweep runs failed: {', '.join(failed)}; see {log}")
    return root


def cmd_sweep(args: argparse.Namespace) -> None:
    """``xformer sweep``: :func:`sweep` of the recipe, its ``--set`` overrides, ``--grid`` values and ``--jobs``."""
    sweep(args.recipe, args.set, args.grid, args.out, args.jobs)
