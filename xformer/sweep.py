"""``xformer sweep``: run every combination of a grid of recipe values, one run directory each.

The grid comes from the recipe's ``sweep`` section and ``--grid key=v1,v2`` flags (a flag replaces the
recipe's values for its key); each grid point is crossed with each of ``sweep.variants``. Runs go one
after another into ``OUT/<name>``, named by the values that vary (``optimizer=sgd_lr=0.01``). A run that
finished (``result.json`` written) is skipped on a rerun, one that was cut short resumes from its last
checkpoint: rerunning a sweep finishes it. At the end the report (:mod:`xformer.report`) is written.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xformer.checkpoint import atomic_write_text, latest_checkpoint
from xformer.config import _set_path, load_yaml, parse_config, parse_override
from xformer.errors import XformerError


@dataclass
class SweepRun:
    """One point of a sweep: its name, the values that make it, and its resolved config."""

    name: str
    values: dict[str, Any]
    cfg: Any


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


def expand(recipe: str | Path, overrides: list[str] = (), grid: list[str] = (),
           out_dir: str | None = None) -> tuple[Path, list[SweepRun]]:
    """The sweep's directory and its runs, every config validated before anything trains."""
    tree = load_yaml(recipe)
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(tree, keys, value)
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
    runs = []
    for variant, changes in variants.items():
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo))
            child = copy.deepcopy(tree)
            for key, value in [*changes.items(), *values.items()]:
                _set_path(child, key.split("."), value)
            name = run_name(variant, values)
            child["out_dir"] = str(root / name)
            what = f"{recipe} run {name}"
            runs.append(SweepRun(name, {**({"variant": variant} if variant else {}), **values}, parse_config(child, what)))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise XformerError(f"{recipe}: two sweep runs would share the name {next(n for n in names if names.count(n) > 1)!r}")
    return root, runs


def sweep(recipe: str | Path, overrides: list[str] = (), grid: list[str] = (), out_dir: str | None = None) -> Path:
    """Run (or finish) the sweep one run at a time; each run's output goes to ``RUN_DIR/train.log``.
    Returns the sweep directory, which then holds ``report.md`` and the plots."""
    from xformer.report import write_report
    from xformer.runner import run

    root, runs = expand(recipe, overrides, grid, out_dir)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "sweep.yaml", yaml.safe_dump(
        {"recipe": str(recipe), "overrides": list(overrides), "runs": {r.name: r.values for r in runs}}, sort_keys=False))
    for i, r in enumerate(runs, 1):
        run_dir = Path(r.cfg.out_dir)
        label = f"[{i}/{len(runs)}] {r.name}"
        if (run_dir / "result.json").is_file():
            print(f"{label}: finished before, skipped", flush=True)
            continue
        resume = latest_checkpoint(run_dir) is not None
        run_dir.mkdir(parents=True, exist_ok=True)
        r.cfg.train.progress = False
        t0 = time.perf_counter()
        with open(run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            result = run(r.cfg, resume=resume)
        wall = time.perf_counter() - t0
        atomic_write_text(run_dir / "result.json", json.dumps(
            {"name": r.name, "values": r.values, "step": result["step"], "val": result["val"],
             "train": result["train"], "wall_s": wall, "resumed": resume}, indent=2))
        val = ", ".join(f"{k} {v:.4g}" for k, v in result["val"].items() if not k.startswith(("i2t", "zs_")))
        print(f"{label}: {'resumed, ' if resume else ''}{wall:.0f} s; val {val}", flush=True)
    report = write_report([Path(r.cfg.out_dir) for r in runs], root)
    print(f"report: {report}")
    return root
