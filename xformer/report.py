"""``xformer report``: a table (``report.md``) and plots comparing finished runs.

For each run directory: its resolved ``config.yaml``, ``metrics.jsonl`` and, when a sweep wrote it,
``result.json``. The table lists the config keys that differ between the runs, the final and best
validation metrics, the parameter count and the wall time. The plots (matplotlib, the ``plots`` extra)
overlay the training and validation curves of every run and show the final metric per run as bars.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from xformer.errors import XformerError

IGNORED_KEYS = ("out_dir", "sweep.", "train.progress")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param_count(run_dir: Path) -> int | None:
    from safetensors import safe_open

    from xformer.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return None
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)


def read_run(run_dir: str | Path) -> dict:
    """A run's config (flattened), metric records by split, final and best validation metrics, size, time."""
    from xformer.runner import PRIMARY_METRIC

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "metrics.jsonl").is_file():
        raise XformerError(f"{run_dir}: not a run directory (config.yaml and metrics.jsonl expected)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    metric = (config.get("sweep") or {}).get("metric") or PRIMARY_METRIC.get(config.get("task"), "acc")
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
    scored = [r for r in val if metric in r]
    return {
        "dir": run_dir, "name": run_dir.name, "config": _flatten(config), "metric": metric,
        "train": train, "val": val, "final": val[-1] if val else {},
        "best": max((r[metric] for r in scored), default=None),
        "params": _param_count(run_dir),
        "wall_s": result.get("wall_s", train[-1].get("elapsed_s") if train else None),
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


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(runs: list[dict]) -> str:
    """The Markdown table of ``runs``: varied keys, final val loss and metric, best metric, size, time."""
    metric = runs[0]["metric"]
    keys = varied_keys(runs)
    head = ["run", *keys, "val loss", f"val {metric}", f"best val {metric}", "params", "wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "-"
        wall = f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-"
        row = [r["name"], *(_cell(r["config"].get(k)) for k in keys), _cell(r["final"].get("loss")),
               _cell(r["final"].get(metric)), _cell(r["best"]), params, wall]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], out_dir: Path) -> list[Path]:
    """``curves.png`` (loss and metric against step, train solid, validation dashed) and ``final.png``
    (the final validation metric per run); [] when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    metric = runs[0]["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(runs):
        colour = f"C{i % 10}"
        for ax, key in zip(axes, ("loss", metric)):
            for split, style in (("train", "-"), ("val", "--")):
                pts = [(p["step"], p[key]) for p in r[split] if key in p]
                if pts:
                    ax.plot(*zip(*pts), style, color=colour, label=f"{r['name']} ({split})", marker="." if split == "val" else None)
    for ax, key in zip(axes, ("loss", metric)):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    curves = out_dir / "curves.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(runs) + 2), 4))
    names = [r["name"] for r in runs]
    values = [r["final"].get(metric, float("nan")) for r in runs]
    bars = ax.bar(range(len(runs)), values, color=[f"C{i % 10}" for i in range(len(runs))])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(runs)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"final val {metric}")
    fig.tight_layout()
    final = out_dir / "final.png"
    fig.savefig(final, dpi=110)
    plt.close(fig)
    return [curves, final]


def expand_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories; a directory that is not a run but holds runs (a sweep) stands for them."""
    out = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            out.append(p)
        elif p.is_dir() and (subs := sorted(d for d in p.iterdir() if (d / "config.yaml").is_file())):
            out.extend(subs)
        else:
            raise XformerError(f"{p}: not a run directory, nor a folder of runs")
    return out


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Write ``OUT/report.md`` (and the plots beside it) for ``run_dirs``; returns the report's path."""
    runs = [read_run(d) for d in expand_dirs(run_dirs)]
    if not runs:
        raise XformerError("no runs to report on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = plot(runs, out_dir)
    text = f"# Report: {len(runs)} runs\n\nValidation metric: `{runs[0]['metric']}` (final = last evaluation).\n\n"
    text += table(runs)
    text += "".join(f"\n![{p.stem}]({p.name})\n" for p in images) or "\n(plots need matplotlib: pip install 'xformer[plots]')\n"
    (out_dir / "report.md").write_text(text)
    return out_dir / "report.md"
