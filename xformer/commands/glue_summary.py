"""The summary of an ``xformer glue`` run (:mod:`xformer.commands.glue`): ``glue.json``, ``glue.md`` and a
bar chart, and the side-by-side table of several models that ``xformer report`` writes from their
``glue.json`` files.

A seed's task score is GLUE's: the mean of the task's scores (CoLA: Matthews correlation; MRPC, QQP: F1 and
accuracy; STS-B: Pearson and Spearman; the others accuracy), and for MNLI the mean over its matched and
mismatched validation sets. A task is reported by the median over its seeds and their spread (min-max); the
GLUE score of a run is the mean of its tasks' medians. Beside each task stands the score of predicting the
validation set's majority class for every example (a regression task's constant prediction scores 0), so
that nobody mistakes a model that learned nothing for one that learned a little.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from xformer.commands.pretraining_cost import COUNTED
from xformer.commands.results import is_finished, read_result
from xformer.data import catalog
from xformer.data.readers import TABLE_SUFFIXES
from xformer.data.sources import open_readers, resolve
from xformer.errors import XformerError
from xformer.train.checkpoint import atomic_write_text
from xformer.trained.scores import scores, task_score

TITLES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
          "qnli": "QNLI", "rte": "RTE"}


def seed_score(record: dict, splits) -> float | None:
    """A run's task score from its ``result.json`` record: the mean over the evaluation splits of each
    split's ``score`` (the first split's is ``score``, the others' ``score/<split>``); None if one is missing."""
    val = record.get("val") or {}
    values = [val.get("score" if i == 0 else f"score/{split}") for i, split in enumerate(splits)]
    return None if any(not isinstance(v, (int, float)) for v in values) else float(sum(values) / len(values))


def seed_entry(seed: int, run_dir: Path, names, splits) -> dict:
    """One seed of a task as ``glue.json`` keeps it: status, scores, task score and minutes (or the error)."""
    record = read_result(run_dir)
    item = {"seed": seed, "dir": str(run_dir), "status": record.get("status", "not run")}
    if record.get("status") == "failed":
        item["error"] = record.get("error")
    if is_finished(record):
        val = record.get("val") or {}
        item["scores"] = {k: v for k, v in val.items() if k.split("/")[0] in (*names, "score")}
        item["score"] = seed_score(record, splits)
    if isinstance(record.get("wall_s"), (int, float)):
        item["minutes"] = record["wall_s"] / 60
    return item


def validation_labels(dataset: catalog.Dataset, split: str, data_cfg) -> list:
    """The labels of ``split`` of a GLUE task, its first ``data.max_examples`` rows as the runs read them."""
    column = getattr(data_cfg, "label_column", None) or dataset.label_column
    limit, labels = data_cfg.max_examples, []
    for reader in open_readers(resolve(dataset.name, "data.val_source", TABLE_SUFFIXES, split)):
        for batch in reader.batches([column], 0, None if limit is None else limit - len(labels)):
            labels += batch[column]
        if limit is not None and len(labels) >= limit:
            break
    return [y for y in labels if y is not None]


def majority_score(dataset: catalog.Dataset, data_cfg) -> float | None:
    """The task score of predicting each validation set's majority class everywhere (0 for regression:
    a constant has no correlation); None when the labels cannot be read."""
    if dataset.label_type == "regression":
        return 0.0
    values = []
    for split in dataset.eval_splits:
        try:
            labels = validation_labels(dataset, split, data_cfg)
        except XformerError:
            return None
        if not labels:
            return None
        majority = Counter(labels).most_common(1)[0][0]
        values.append(task_score(scores(dataset.scores, [majority] * len(labels), labels), dataset.scores))
    return float(sum(values) / len(values))


def task_entry(dataset: catalog.Dataset, seeds: list[dict], majority: float | None) -> dict:
    """One task of ``glue.json``: its scores, its seeds, median and spread of their task scores, majority."""
    values = [s["score"] for s in seeds if s.get("score") is not None]
    return {
        "title": TITLES.get(dataset.name.removeprefix("glue/"), dataset.name), "scores": list(dataset.scores),
        "eval_splits": list(dataset.eval_splits), "seeds": seeds, "finished": len(values),
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None, "max": max(values) if values else None,
        "majority": majority,
    }


def summarise(about: dict, runs: list[tuple], skipped: dict[str, str]) -> dict:
    """``glue.json``'s content: ``about`` (model, protocol), every task's entry, the skipped tasks and the
    averages (of the tasks' medians, and of their majority baselines) over the tasks with a median."""
    by_task: dict[str, list] = {}
    for task, seed, dataset, cfg in runs:
        by_task.setdefault(task, []).append((seed, dataset, cfg))
    tasks = {}
    for task, items in by_task.items():
        dataset, cfg = items[0][1], items[0][2]
        seeds = [seed_entry(seed, Path(c.out_dir), dataset.scores, dataset.eval_splits) for seed, _, c in items]
        tasks[task] = task_entry(dataset, seeds, majority_score(dataset, cfg.data))
    scored = [t for t in tasks.values() if t["median"] is not None]
    majorities = [t["majority"] for t in scored]
    return {
        **about, "tasks": tasks, "skipped": skipped,
        "average": statistics.fmean(t["median"] for t in scored) if scored else None,
        "majority_average": statistics.fmean(majorities) if scored and None not in majorities else None,
        "averaged_tasks": [name for name, t in tasks.items() if t["median"] is not None],
    }


def pct(value: float | None) -> str:
    """A score as GLUE prints it: x100, one decimal; ``-`` for none."""
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(summary: dict, chart: Path | None) -> str:
    """``glue.md``: a row per task (median, spread, seeds finished, majority-class baseline), the average
    row, then the skipped tasks and the failed runs."""
    kind = "from scratch (its architecture and tokenizer, random weights)" if summary["from_scratch"] else "fine-tuned"
    lines = [f"# GLUE: {summary['name']}", "",
             f"Model `{summary['model']}`, {kind}; protocol `{summary['recipe']}`"
             + (f" with {', '.join(f'`{o}`' for o in summary['overrides'])}" if summary["overrides"] else "")
             + f"; {summary['seeds']} seed{'s' if summary['seeds'] > 1 else ''} per task. Scores x100 on the validation sets; a task's score is the "
             "mean of its metrics (MNLI: of matched and mismatched); median and spread (min to max) over seeds.", "",
             f"Pretraining: {cost_line(summary.get('pretraining'))}."
             + (f" Minutes are wall time; {COUNTED}." if (summary.get("pretraining") or {}).get("run") else ""), "",
             "| task | metric | median | spread | seeds | majority class |", "|---|---|---|---|---|---|"]
    for t in summary["tasks"].values():
        spread = "-" if t["min"] is None else f"{pct(t['min'])} to {pct(t['max'])}"
        metric = "+".join(t["scores"]) + (" (m/mm)" if len(t["eval_splits"]) > 1 else "")
        lines.append(f"| {t['title']} | {metric} | {pct(t['median'])} | {spread} | "
                     f"{t['finished']}/{len(t['seeds'])} | {pct(t['majority'])} |")
    lines.append(f"| **average** | | **{pct(summary['average'])}** | | | {pct(summary['majority_average'])} |")
    lines.append("")
    lines += [f"Skipped {task}: {why}." for task, why in summary["skipped"].items()]
    lines += [f"Failed {t['title']} seed {s['seed']}: {s.get('error')} (see {s['dir']}/train.log)."
              for t in summary["tasks"].values() for s in t["seeds"] if s["status"] == "failed"]
    no_chart = "(no chart: it needs matplotlib: pip install 'xformer[plots]')"
    lines.append(f"\n![GLUE]({chart.name})" if chart else f"\n{no_chart}")
    return "\n".join(lines) + "\n"


def chart(summary: dict, out: Path) -> Path | None:
    """``glue.png``: each task's median (bars), spread (error bars) and majority baseline (black ticks);
    None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [t for t in summary["tasks"].values() if t["median"] is not None]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 4))
    x = range(len(rows))
    medians = [100 * t["median"] for t in rows]
    errors = [[m - 100 * t["min"] for m, t in zip(medians, rows)], [100 * t["max"] - m for m, t in zip(medians, rows)]]
    ax.bar(x, medians, yerr=errors, capsize=4, color="C0", label="median (min-max over seeds)")
    majority = [(i, 100 * t["majority"]) for i, t in enumerate(rows) if t["majority"] is not None]
    if majority:
        ax.scatter(*zip(*majority), marker="_", s=600, color="black", label="majority class", zorder=3)
    ax.set_xticks(list(x), [t["title"] for t in rows])
    ax.set_ylabel("score x100")
    ax.set_title(f"GLUE: {summary['name']} (average {pct(summary['average'])})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "glue.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(out: Path, about: dict, runs: list[tuple], skipped: dict[str, str]) -> Path:
    """Write ``OUT/glue.json``, ``OUT/glue.png`` (with matplotlib) and ``OUT/glue.md``; returns glue.md's path."""
    summary = summarise(about, runs, skipped)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "glue.json", json.dumps(summary, indent=2, allow_nan=False))
    image = chart(summary, out)
    if image is None:
        print("notice: no glue.png: the chart needs matplotlib (pip install 'xformer[plots]')")
    atomic_write_text(out / "glue.md", markdown(summary, image))
    return out / "glue.md"


def read_glue(folder: Path) -> dict:
    """The ``glue.json`` of an ``xformer glue`` output folder; XformerError naming it when unreadable."""
    file = folder / "glue.json"
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise XformerError(f"{file}: not a GLUE summary ({type(err).__name__})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("tasks"), dict):
        raise XformerError(f"{file}: not a GLUE summary (no tasks)")
    return summary


def count(n: int | float | None) -> str:
    """A count as 24.6M, 1.2B or 640k; ``—`` for none (0 or not known)."""
    if not n:
        return "—"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def cost_cells(cost: dict | None) -> list[str]:
    """A model's pretraining cost as two table cells, wall minutes and token positions (see
    :mod:`xformer.commands.pretraining_cost`): ``—`` for none (from scratch), for a cost not known (an HF
    model) and for a ``glue.json`` that did not record it."""
    cost = cost or {}
    minutes = cost.get("minutes")
    return ["—" if not minutes else f"{minutes:.1f}", count(cost.get("token_positions"))]


def cost_line(cost: dict | None) -> str:
    """What a model's pretraining cost cells stand for, in words."""
    if not cost:
        return "pretraining cost not recorded (a glue.json written before xformer glue recorded it)"
    if cost.get("run") is None:
        return cost["note"]
    note = f"; {cost['note']}" if cost["note"] else ""
    return (f"pretrained {cost['minutes'] or 0:.1f} wall minutes, {cost['steps']:,} steps, "
            f"{count(cost['token_positions'])} token positions (`{cost['run']}`){note}")


def median(summary: dict, task: str) -> float | None:
    """The median score of ``task`` in a ``glue.json``; None when it did not run or no seed finished."""
    return (summary["tasks"].get(task) or {}).get("median")


def compare(folders: list[Path], names: list[str] | None = None) -> dict:
    """Several models' GLUE runs side by side, from their ``glue.json`` files: per model its tasks' medians
    and spreads, its average over the tasks every model ran and its pretraining cost; per task the majority
    baseline. ``names`` name the models (default: each summary's own name, with its folder when two agree)."""
    summaries = [read_glue(f) for f in folders]
    if names is None:
        names = [s.get("name") or f.name for s, f in zip(summaries, folders)]
        if len(set(names)) < len(names):  # two runs of one model (another protocol, another seed count)
            names = [f"{n} ({f})" for n, f in zip(names, folders)]
    order = [t for t in TITLES if any(t in s["tasks"] for s in summaries)]
    order += [t for s in summaries for t in s["tasks"] if t not in order]
    # the tasks every model ran, those that scored nothing (every run failed) aside: they would leave none
    scored = [s for s in summaries if any(median(s, t) is not None for t in order)]
    common = [t for t in order if all(median(s, t) is not None for s in scored)]
    majority = {t: next((s["tasks"][t].get("majority") for s in summaries if t in s["tasks"]), None) for t in order}
    models = []
    for name, folder, s in zip(names, folders, summaries):
        done = {t: {k: s["tasks"][t][k] for k in ("median", "min", "max")} for t in order if median(s, t) is not None}
        models.append({
            "name": name, "dir": str(folder), "model": s.get("model"), "from_scratch": s.get("from_scratch"),
            "recipe": s.get("recipe"), "overrides": s.get("overrides") or [], "seeds": s.get("seeds"), "tasks": done,
            "average": statistics.fmean(done[t]["median"] for t in common) if common and done else None,
            "pretraining": s.get("pretraining"),
        })
    known = [majority[t] for t in common]
    return {"tasks": order, "common": common, "models": models, "majority": majority,
            "majority_average": statistics.fmean(known) if known and None not in known else None}


def comparison_table(data: dict) -> str:
    """The Markdown table of :func:`compare`: a row per model (each task's median and spread, the average,
    the pretraining cost), then the majority-class row."""
    heads = [TITLES.get(t, t) for t in data["tasks"]]
    lines = ["| model | " + " | ".join(heads) + f" | average ({len(data['common'])} tasks) | pretraining wall "
             "minutes | pretraining token positions |", "|---|" + "---|" * (len(heads) + 3)]
    for m in data["models"]:
        cells = ["-" if (t := m["tasks"].get(task)) is None else f"{pct(t['median'])} ({pct(t['min'])} to "
                 f"{pct(t['max'])})" for task in data["tasks"]]
        lines.append(f"| {m['name']} | " + " | ".join(cells) + f" | **{pct(m['average'])}** | "
                     + " | ".join(cost_cells(m["pretraining"])) + " |")
    majority = [pct(data["majority"][t]) for t in data["tasks"]]
    lines.append("| majority class | " + " | ".join(majority) + f" | {pct(data['majority_average'])} | | |")
    return "\n".join(lines) + "\n"


def comparison_text(data: dict, title: str) -> str:
    """A Markdown page of :func:`compare`: what the numbers are, the table, what each model is."""
    about = [f"- {m['name']} (`{m['dir']}`): model `{m['model']}`{' from scratch' if m['from_scratch'] else ''}, "
             f"protocol `{m['recipe']}`" + (" with " + ", ".join(f"`{o}`" for o in m["overrides"]) if m["overrides"]
                                            else "") + f", {m['seeds']} seed{'s' if m['seeds'] != 1 else ''}; "
             f"{cost_line(m['pretraining'])}" for m in data["models"]]
    return (f"# {title}\n\nScores x100 on the validation sets: median over seeds (min to max); the average is over "
            "the tasks every model ran (those that scored none aside). Pretraining: the model's own pretraining run, "
            f"its wall minutes and {COUNTED}; — for none (from scratch) or not known (an HF model).\n\n"
            f"{comparison_table(data)}\n" + "\n".join(about) + "\n")


def write_comparison(folders: list[Path], out: Path) -> Path:
    """``OUT/report.md``: the :func:`compare` table of the GLUE runs in ``folders``, with what each model is."""
    data = compare(folders)  # reads and checks every glue.json first
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", comparison_text(data, f"GLUE: {len(folders)} models"))
    return out / "report.md"
