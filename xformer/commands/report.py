"""``xformer report``: a table (``report.md``) and plots comparing runs; or, given ``xformer glue`` output
folders (holding ``glue.json``), a table of their models' GLUE scores side by side.

For each run directory: its resolved ``config.yaml``, ``metrics.jsonl`` and, when a sweep wrote it,
``result.json``. The table lists the config keys that differ between the runs, each run's status
(finished, failed, stopped early, no metrics), the final and best validation metrics, the parameter
count and the wall time. Runs ranked by different metrics (an image run's ``acc``, a BERT's
``mlm_acc``) get a column each. The plots (matplotlib, the ``plots`` extra) overlay the training and
validation curves of every run and show the final metric per run as bars, one chart per metric.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from xformer.commands.glue_summary import write_comparison
from xformer.commands.results import read_result
from xformer.config import load_yaml
from xformer.errors import XformerError
from xformer.train.checkpoint import atomic_write_text
from xformer.train.metrics import read_metrics
from xformer.train.schedule import DEFAULT_STEPS
from xformer.tasks import DEFAULT_TASK, get_task

IGNORED_KEYS = ("out_dir", "sweep.", "train.progress")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _number(value) -> float | None:
    """``value`` when it is a finite number (not a bool), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def _param_count(run_dir: Path) -> int | None:
    from safetensors import SafetensorError, safe_open

    from xformer.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    try:
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)
    except (OSError, SafetensorError):
        return None


def is_run_dir(path: Path) -> bool:
    """A run directory has its resolved ``config.yaml`` or, for a sweep run that failed early, ``result.json``."""
    return (path / "config.yaml").is_file() or (path / "result.json").is_file()


def _metric(config: dict) -> str | None:
    """The validation metric that ranks a run: ``sweep.metric``, else its task's; None without a config."""
    sweep = config.get("sweep")
    if isinstance(sweep, dict) and isinstance(sweep.get("metric"), str):
        return sweep["metric"]
    if not config:
        return None
    try:
        return get_task(config.get("task", DEFAULT_TASK)).primary_metric
    except XformerError:  # a task this version does not know
        return None


def _status(config: dict, result: dict, records: list[dict]) -> str:
    """``finished``, ``failed: <error>``, ``no metrics``, ``stopped at step N``, or what is known of the end."""
    if result.get("status") == "failed":
        return f"failed: {result.get('error') or 'see train.log'}"
    if not records:
        return "no metrics"
    last = max(r["step"] for r in records)
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    if isinstance(result.get("step"), int):
        end = result["step"]  # a sweep's record of where the run ended
    elif train.get("epochs") is None and isinstance(train.get("max_steps") or DEFAULT_STEPS, int):
        end = train.get("max_steps") or DEFAULT_STEPS  # max_steps null: the default step budget
    else:
        return f"step {last} (train.epochs: last step not known)"
    if last >= end:
        return "finished"
    minutes = _number(train.get("max_minutes"))
    elapsed = max((_number(r.get("elapsed_s")) or 0 for r in records), default=0)
    if minutes is not None and elapsed >= 60 * minutes:
        return f"finished (train.max_minutes, step {last})"
    return f"stopped at step {last}"


def _best(records: list[dict], metric: str) -> float | None:
    """The highest finite value of ``metric`` in ``records``, or None."""
    return max((v for r in records if (v := _number(r.get(metric))) is not None), default=None)


def unique_records(records: list[dict]) -> tuple[list[dict], str | None]:
    """``records`` with one record per (split, step), the last one written kept, in step order; and what
    was repeated (None when nothing was): a repeat is a run that logged a step twice (a resume that kept
    the old records, two runs writing one directory), and drawing both would show two curves as one."""
    last: dict[tuple, dict] = {}
    repeats: list[tuple] = []
    for record in records:
        key = (str(record["split"]), record["step"])
        if key in last:
            repeats.append(key)
        last[key] = record
    if not repeats:
        return records, None
    kept = sorted(last.values(), key=lambda r: r["step"])  # stable: train before val at a step, as written
    split, step = repeats[0]
    return kept, (f"{len(repeats)} records repeat a step already logged (first: {split} step {step}); "
                  f"the last of each is reported")


def read_run(run_dir: str | Path) -> dict:
    """A run's config (flattened), metric records by split, final and best validation metrics, status,
    size and time. A run that failed, stopped early or logged nothing is read as such; XformerError only
    for a directory that is not a run."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise XformerError(f"{run_dir}: not a run directory (config.yaml expected)")
    result, problem = read_result(run_dir), None
    try:
        config = load_yaml(run_dir / "config.yaml", "run config") if (run_dir / "config.yaml").is_file() else {}
        records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    except XformerError as err:
        config, records, problem = {}, [], f"unreadable: {err}"
    records, repeated = unique_records(records)
    warnings = [] if repeated is None else [f"{run_dir / 'metrics.jsonl'}: {repeated}"]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    metric = _metric(config)
    if metric and val and not any(metric in r for r in val):
        held = sorted({k for r in val for k in r} - {"step", "split"})
        warnings.append(f"{run_dir}: the ranking metric {metric!r} is in none of its validation records "
                        f"(they hold {', '.join(held)}), so its columns are empty")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    wall = _number(result.get("wall_s"))
    return {
        "dir": run_dir, "name": run_dir.name, "config": _flatten(config), "metric": metric,
        "task": config.get("task") if isinstance(config.get("task"), str) else None, "warnings": warnings,
        "status": problem or _status(config, result, records),
        "train": train, "val": val, "final": val[-1] if val else {},
        "best": _best(val, metric) if metric else None,
        "params": _param_count(run_dir),
        "wall_s": wall if wall is not None else _number(train[-1].get("elapsed_s")) if train else None,
    }


def varied_keys(runs: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every run, in config order. A key that only some
    runs have, with one value wherever it is, is left out: its presence follows another varied key
    (``model.arch`` decides which model keys exist)."""
    keys = []
    for run in runs:
        keys += [k for k in run["config"] if k not in keys]
    return [k for k in keys if not k.startswith(IGNORED_KEYS)
            and len({json.dumps(r["config"][k], sort_keys=True) for r in runs if k in r["config"]}) > 1]


def metrics(runs: list[dict]) -> list[str]:
    """The validation metrics that rank ``runs``, each once, in run order (one per task, or ``sweep.metric``)."""
    return list(dict.fromkeys(r["metric"] for r in runs if r["metric"]))


def _cell(value) -> str:
    """A table cell: ``-`` for None, 4 significant digits for a float (``nan`` stays ``nan``), text
    on one line with ``|`` escaped."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return " ".join(str(value).split()).replace("|", "\\|")


def table(runs: list[dict]) -> str:
    """The Markdown table of ``runs``: varied keys, status, final val loss, then the final and best value
    of each ranking metric (``-`` where a run has none), size, time."""
    keys = varied_keys(runs)
    ranked = metrics(runs)
    head = ["run", *keys, "status", "val loss", *(f"{w}val {m}" for m in ranked for w in ("", "best ")),
            "params", "wall time (s)"]
    lines = ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "-"
        wall = f"{r['wall_s']:.0f}" if _number(r["wall_s"]) is not None else "-"
        scores = [_cell(v) for m in ranked for v in (r["final"].get(m), _best(r["val"], m))]
        row = [_cell(r["name"]), *(_cell(r["config"].get(k)) for k in keys), _cell(r["status"]),
               _cell(r["final"].get("loss")), *scores, params, wall]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def minutes_at(train: list[dict], steps: list[int]) -> list[float]:
    """The training minutes at each of ``steps``, interpolated between the train records' ``elapsed_s``."""
    known = [(p["step"], t) for p in train if (t := _number(p.get("elapsed_s"))) is not None]
    if not known:
        return [float("nan")] * len(steps)
    return [t / 60 for t in np.interp(steps, [0, *(k for k, _ in known)], [0.0, *(t for _, t in known)])]


def plot(runs: list[dict], out_dir: Path, suffix: str = "") -> list[Path]:
    """``curves<suffix>.png`` (loss and each ranking metric against step, or against minutes when every run
    had a time budget; train solid, validation dashed) and
    ``final<suffix>.png`` (the final validation value per run, one chart per metric); [] when matplotlib is
    not installed. Missing and non-finite values are left out of the curves and shown as ``-`` bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    ranked = metrics(runs)
    keys = ["loss", *ranked]
    by_time = all(r["config"].get("train.budget") == "time" for r in runs)
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    axes = axes[0]
    for i, r in enumerate(runs):
        colour = f"C{i % 10}"
        for ax, key in zip(axes, keys):
            for split, style in (("train", "-"), ("val", "--")):
                pts = [(p["step"], v) for p in r[split] if (v := _number(p.get(key))) is not None]
                if pts:
                    xs = minutes_at(r["train"], [s for s, _ in pts]) if by_time else [s for s, _ in pts]
                    ax.plot(xs, [v for _, v in pts], style, color=colour, label=f"{r['name']} ({split})",
                            marker="." if split == "val" else None)
    for ax, key in zip(axes, keys):
        ax.set_xlabel("minutes of training" if by_time else "step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    curves = out_dir / f"curves{suffix}.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    if not ranked:
        return [curves]
    fig, axes = plt.subplots(len(ranked), 1, figsize=(max(5, 0.9 * len(runs) + 2), 4 * len(ranked)), squeeze=False)
    names = [r["name"] for r in runs]
    for ax, metric in zip(axes[:, 0], ranked):
        values = [_number(r["final"].get(metric)) for r in runs]
        bars = ax.bar(range(len(runs)), [v or 0.0 for v in values], color=[f"C{i % 10}" for i in range(len(runs))])
        ax.bar_label(bars, labels=[f"{v:.3f}" if v is not None else "-" for v in values], fontsize=8)
        ax.set_xticks(range(len(runs)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"final val {metric}")
    fig.tight_layout()
    final = out_dir / f"final{suffix}.png"
    fig.savefig(final, dpi=110)
    plt.close(fig)
    return [curves, final]


def expand_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories; a directory that is not a run but holds runs (a sweep) stands for them."""
    out = []
    for p in map(Path, paths):
        if is_run_dir(p):
            out.append(p)
        elif p.is_dir() and (subs := sorted(d for d in p.iterdir() if d.is_dir() and is_run_dir(d))):
            out.extend(subs)
        else:
            raise XformerError(f"{p}: not a run directory, nor a folder of runs")
    return out


def _metric_note(runs: list[dict]) -> str:
    """The report's line on the ranking metric(s), naming which runs use which when they differ."""
    ranked = metrics(runs)
    if len(ranked) <= 1:
        return f"Validation metric: `{ranked[0] if ranked else '-'}` (final = last evaluation).\n"
    uses = "; ".join(f"`{m}` ({', '.join(r['name'] for r in runs if r['metric'] == m)})" for m in ranked)
    return f"Validation metrics differ between the runs, one column each: {uses} (final = last evaluation).\n"


def task_groups(runs: list[dict]) -> dict[str, list[dict]]:
    """``runs`` by task, in order of first appearance: runs of different tasks share no config keys or
    metrics worth a column, so each task gets its own table. A run whose task is not known (a sweep run that
    failed before writing its config) joins the one task of the others, else a group of its own."""
    known = list(dict.fromkeys(r["task"] for r in runs if r["task"]))
    groups: dict[str, list[dict]] = {}
    for r in runs:
        task = r["task"] or (known[0] if len(known) == 1 else "task not known")
        groups.setdefault(task, []).append(r)
    return groups


def _section(runs: list[dict], out_dir: Path, suffix: str) -> str:
    """The metric note, the table and the plots of one group of runs, as Markdown."""
    images = plot(runs, out_dir, suffix)
    text = f"{_metric_note(runs)}\n{table(runs)}"
    return text + ("".join(f"\n![{p.stem}]({p.name})\n" for p in images)
                   or "\n(plots need matplotlib: pip install 'xformer[plots]')\n")


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Write ``OUT/report.md`` (and the plots beside it) for ``run_dirs``; returns the report's path. Runs
    of different tasks get a table (and plots, ``curves_<task>.png``) each; problems found in the runs'
    files are listed under the tables. Folders holding ``glue.json`` (``xformer glue``) get the side-by-side
    GLUE table of their models."""
    glue = [Path(d) for d in run_dirs if (Path(d) / "glue.json").is_file()]
    if glue and len(glue) < len(run_dirs):
        other = next(d for d in run_dirs if Path(d) not in glue)
        raise XformerError(f"{other}: no glue.json; report either GLUE folders (xformer glue --out) or runs, not both")
    if glue:
        return write_comparison(glue, Path(out_dir))
    runs = [read_run(d) for d in expand_dirs(run_dirs)]
    if not runs:
        raise XformerError("no runs to report on")
    out_dir = Path(out_dir)
    _refuse_foreign(out_dir / "report.md")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = task_groups(runs)
    if len(groups) == 1:
        text = f"# Report: {len(runs)} runs\n\n{_section(runs, out_dir, '')}"
    else:
        text = f"# Report: {len(runs)} runs of {len(groups)} tasks, a table each\n"
        for task, group in groups.items():
            suffix = "_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in task)
            runs_of = f"{len(group)} run{'s' if len(group) > 1 else ''}"
            text += f"\n## {task}: {runs_of}\n\n{_section(group, out_dir, suffix)}"
    warnings = [w for r in runs for w in r["warnings"]]
    if warnings:
        text += "\n## Warnings\n\n" + "".join(f"- {w}\n" for w in warnings)
    atomic_write_text(out_dir / "report.md", text)
    return out_dir / "report.md"


def _refuse_foreign(report: Path) -> None:
    """A ``report.md`` this command did not write (its first line starts ``# Report``) is never written over."""
    if report.exists():
        head = b""
        if report.is_file():
            with report.open("rb") as f:
                head = f.read(8)
        if head != b"# Report":
            raise XformerError(f"{report} exists and is not a report of xformer report; choose another --out")


def cmd_report(args: argparse.Namespace) -> None:
    """``xformer report``: :func:`write_report` into ``--out`` (default: the one directory given, else ``.``)."""
    out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else ".")
    print(f"report: {write_report(args.run_dirs, out)}")
