"""``xformer glue MODEL``: fine-tune MODEL on the GLUE tasks under one fixed protocol, several seeds each,
then summarise the scores (``glue.json``, ``glue.md``, ``glue.png``; :mod:`xformer.commands.glue_summary`)
beside MODEL's pretraining cost (:mod:`xformer.commands.pretraining_cost`). Several models under one protocol:
``xformer glue --study FILE`` (:mod:`xformer.commands.glue_study`).

The protocol is a recipe (``recipes/glue.yaml``): a text_classification recipe, the same for every model,
and a ``glue`` section of per-task overrides (``glue: {tasks: {rte: {train: {epochs: 10}}}}``). Each
(task, seed) run is the protocol, then its task's overrides, then what the command decides (model.init =
MODEL, or with ``--from-scratch`` MODEL's architecture and tokenizer with random weights; data.source =
``glue/<task>`` and its first evaluation split; train.seed; out_dir ``OUT/<task>/seed<k>``), then ``--set``.

Runs go through the sweep's machinery (:func:`xformer.commands.sweep.run_one`, ``result.json``): on a
rerun a finished run is skipped (refused if its config changed), a cut one resumes from its last
checkpoint, a failed one is retried; a failure is recorded and the other runs go on. A task's other
evaluation splits (MNLI's mismatched) are scored after training by the task's ``evaluate`` and kept in
``result.json`` as ``<metric>/<split>``.

With ``--jobs N`` up to N runs train at once, each in a process of its own
(:mod:`xformer.commands.parallel_runs`); one whose process dies is recorded as failed. The runs of a task
write no shared cache entry: each reads the task's files (or the hub's copy through ``datasets``, which
locks its cache while it fills it) and tokenizes with MODEL's tokenizer, so nothing is prepared first.
"""

from __future__ import annotations

import argparse
import copy
import functools
from dataclasses import dataclass
from pathlib import Path

from xformer import tasks
from xformer.commands.glue_summary import seed_score, write_summary
from xformer.commands.parallel_runs import train_at_once
from xformer.commands.pretraining_cost import pretraining_cost
from xformer.commands.recipe import parse_override, set_path
from xformer.commands.results import SweepRun, is_finished, read_result
from xformer.commands.sweep import check_jobs, refuse_changed, run_captured, run_one
from xformer.config import Section, load_yaml, validate
from xformer.data import catalog
from xformer.errors import XformerError, did_you_mean
from xformer.models.bert import BertClassifierConfig, BertConfig
from xformer.trained.init import check_sequence_length, merge_config
from xformer.trained.loading import load_config, tokenizer_dir
from xformer.trained.scores import task_score

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "glue.yaml"


@dataclass
class GlueRun:
    """One (task, seed) run: its catalogue entry and the sweep run that trains it."""

    task: str
    seed: int
    entry: catalog.Dataset
    run: SweepRun


def entry(task: str) -> catalog.Dataset:
    """The catalogue entry ``glue/<task>``."""
    return catalog.CATALOG[f"glue/{task}"]


def parse_tasks(text: str | None) -> list[str] | None:
    """``"cola,rte"`` -> ["cola", "rte"] in GLUE's order; None (every task) for None; unknown names refused."""
    if text is None:
        return None
    names = [t.strip().lower().removeprefix("glue/") for t in text.split(",") if t.strip()]
    for name in names:
        if name not in GLUE_TASKS:
            raise XformerError(f"--tasks: unknown GLUE task {name!r} (tasks: {', '.join(GLUE_TASKS)})"
                               f"{did_you_mean(name, GLUE_TASKS)}")
    if not names:
        raise XformerError("--tasks: no task named; e.g. --tasks cola,rte")
    return [t for t in GLUE_TASKS if t in names]


def hub_problem(hub: str) -> str | None:
    """Why the HF hub cannot serve dataset ``hub`` (offline, or no answer), None when it can."""
    if catalog.offline():
        return "the HF hub is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    return ask_hub(hub)


@functools.cache  # one question per dataset and process: every GLUE task is one hub dataset
def ask_hub(hub: str) -> str | None:
    """Why the HF hub does not answer for dataset ``hub`` (one try, 10 s), None when it does."""
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(hub, timeout=10)
    except Exception as err:  # no network, no such dataset, a proxy's error: the task is not available
        return f"the HF hub did not answer ({type(err).__name__})"
    return None


def missing_data(dataset: catalog.Dataset) -> str | None:
    """Why a GLUE task cannot run here: a split found neither locally nor on the hub; None when it can."""
    splits = ("train", *dataset.eval_splits)
    missing = [s for s in splits if not catalog.local_files(dataset, s)]
    if not missing or (why := hub_problem(dataset.hub)) is None:
        return None
    where = ", ".join(map(str, catalog.search_dirs(dataset, missing[0])))
    return f"no local {'/'.join(missing)} split (looked in {where}) and {why}"


def model_mismatch(source: Section, dataset: catalog.Dataset) -> str | None:
    """Why a fine-tuned classifier export cannot start ``dataset``'s task (regression asked of a
    K-class classifier, classes asked of a regressor); None when it can (an encoder always can)."""
    num = getattr(source, "num_classes", None)
    regression = dataset.label_type == "regression"
    if num is not None and num > 1 and regression:
        return f"a {num}-class classifier cannot start {dataset.name}, a regression task"
    if num == 1 and not regression:
        return f"a regression model (one output) cannot start {dataset.name}, a classification task"
    return None


def choose_tasks(asked: list[str] | None, source: Section, model: str, from_scratch: bool) -> tuple[list, dict]:
    """(the tasks to run, {skipped task: why}). Tasks asked by name must be runnable (XformerError
    otherwise); by default every task whose data is here and that MODEL can start runs, the rest are skipped."""
    run, skipped = [], {}
    for task in asked or GLUE_TASKS:
        dataset = entry(task)
        why = missing_data(dataset)
        if why is not None and asked:
            raise XformerError(f"--tasks {task}: {why}; {catalog.fetch_hint(dataset)}")
        if why is None and not from_scratch and (why := model_mismatch(source, dataset)) and asked:
            raise XformerError(f"--tasks {task}: {model} is a fine-tuned export: {why}; give the encoder it was "
                               f"fine-tuned from, or --from-scratch")
        if why is None:
            run.append(task)
        else:
            skipped[task] = why
    if not run:
        raise XformerError(f"no GLUE task can run here: {'; '.join(f'{t}: {w}' for t, w in skipped.items())}")
    return run, skipped


def read_protocol(recipe: str | Path) -> tuple[dict, dict[str, dict]]:
    """(the recipe without its ``glue`` section, {task: its overrides}), the section checked."""
    tree = load_yaml(recipe)
    section = tree.pop("glue", None) or {}
    if not isinstance(section, dict) or set(section) - {"tasks"}:
        raise XformerError(f"{recipe}: glue must be a section with one key, tasks (task -> overrides)")
    per_task = section.get("tasks") or {}
    example = "e.g. {rte: {train: {epochs: 10}}}"
    if not isinstance(per_task, dict):
        raise XformerError(f"{recipe}: glue.tasks must map task names to recipe keys, {example}")
    for task, changes in per_task.items():
        if task not in GLUE_TASKS:
            raise XformerError(f"{recipe}: glue.tasks.{task}: not a GLUE task (tasks: {', '.join(GLUE_TASKS)})"
                               f"{did_you_mean(task, GLUE_TASKS)}")
        if not isinstance(changes, dict):
            raise XformerError(f"{recipe}: glue.tasks.{task} must be a section of recipe keys, {example}")
    return tree, per_task


def merged(base: dict, changes: dict) -> dict:
    """A copy of ``base`` with ``changes`` applied key by key, sections merged at any depth."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else copy.deepcopy(value)
    return out


def check_model(model: str) -> Section:
    """MODEL's model config, read without its weights; XformerError unless it is a BERT-family text
    encoder (a run, a checkpoint or an HF directory) with a tokenizer."""
    source = load_config(model)
    if not isinstance(source, BertConfig):
        raise XformerError(f"{model}: a {type(source).__name__.removesuffix('Config')} model, not a BERT-family "
                           f"text encoder; GLUE fine-tunes text encoders")
    tokenizer_dir(model)  # a model without its tokenizer cannot read the tasks' texts
    return source


def start_from(model: str, source: Section, tree: dict, from_scratch: bool, origin: str) -> dict:
    """``tree`` (a run's recipe) starting from MODEL: its ``model.init``, or with ``from_scratch`` MODEL's
    architecture (the protocol's runtime keys kept: dropout, ...) and tokenizer with random weights."""
    tree = copy.deepcopy(tree)
    if not from_scratch:
        tree.setdefault("model", {})["init"] = model
        return tree
    protocol = validate(BertClassifierConfig, tree.get("model") or {}, origin, "model")
    architecture = merge_config(protocol, source).model_dump(mode="json", exclude={"init", "num_classes"})
    tree["model"] = architecture
    set_path(tree, ["data", "tokenizer", "path"], tokenizer_dir(model))
    return tree


def plan(model: str, source: Section, run_tasks: list[str], seeds: int, out: Path, recipe: str | Path,
         overrides: list[str], from_scratch: bool) -> list[GlueRun]:
    """Every (task, seed) run, each config validated before anything trains."""
    protocol, per_task = read_protocol(recipe)
    runs = []
    for task in run_tasks:
        dataset = entry(task)
        for seed in range(seeds):
            origin = f"{recipe} ({task}, seed {seed})"
            tree = start_from(model, source, merged(protocol, per_task.get(task, {})), from_scratch, origin)
            set_path(tree, ["data", "source"], dataset.name)
            set_path(tree, ["data", "val_split"], dataset.eval_splits[0])
            set_path(tree, ["train", "seed"], seed)
            tree["out_dir"] = str(out / task / f"seed{seed}")
            for text in overrides:
                keys, value = parse_override(text)
                set_path(tree, keys, value)
            cfg = tasks.parse_config(tree, origin if not overrides else f"{origin} with --set")
            check_sequence_length(cfg.model, cfg.data.max_seq_len)  # now, not as a failure of every run
            name = f"{task}/seed{seed}"
            runs.append(GlueRun(task, seed, dataset, SweepRun(name, {"task": task, "seed": seed}, cfg)))
    return runs


def split_scores(cfg, dataset: catalog.Dataset, split: str, suffix: str) -> dict:
    """Loss and scores of a finished run on ``split`` of its task (the run's own reading of the data, its
    ``max_examples`` included), keyed ``<name><suffix>``; ``score`` computed when evaluate gives none."""
    spec = tasks.get_task(cfg.task)
    values = spec.evaluate(Path(cfg.out_dir), dataset.name, split, cfg.data.max_examples)
    names = list(cfg.data.scores or dataset.scores)
    if values.get("score") is None and all(values.get(n) is not None for n in names):
        values["score"] = task_score(values, names)
    return {f"{k}{suffix}": values[k] for k in ("loss", *names, "score") if k in values}


def train_and_score(dataset: catalog.Dataset):
    """The ``train`` a GLUE run hands :func:`run_one`: train (or resume), then score every evaluation split
    that the final validation did not (MNLI's mismatched; all of them when a resumed run had nothing left
    to train and so did not evaluate)."""

    def train(cfg, resume: bool = False) -> dict:
        result = tasks.run(cfg, resume=resume)  # looked up now: tests replace it
        val = dict(result["val"])
        if val.get("score") is None:
            val.update(split_scores(cfg, dataset, dataset.eval_splits[0], ""))
        for split in dataset.eval_splits[1:]:
            val.update(split_scores(cfg, dataset, split, f"/{split}"))
        return {**result, "val": val}

    return train


def progress(g: GlueRun):
    """The progress line of a finished run: its task score, the scores it averages, and its minutes."""

    def line(record: dict) -> str:
        val, score = record["val"], seed_score(record, g.entry.eval_splits)
        parts = ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                          if isinstance(v, float) and k.split("/")[0] in g.entry.scores)
        shown = "-" if score is None else f"{score:.4f}"
        return f"{'resumed, ' if record['resumed'] else ''}score {shown} ({parts}), {record['wall_s'] / 60:.1f} min"

    return line


def run_in_worker(g: GlueRun, label: str) -> tuple[dict, str]:
    """One GLUE run in a process of its own (:func:`~xformer.commands.sweep.run_captured`)."""
    return run_captured(g.run, label, train_and_score(g.entry), progress(g))


def model_name(model: str, from_scratch: bool) -> str:
    """A short name for MODEL: its directory's (a checkpoint's: run_step), ``-scratch`` for the baseline."""
    path = Path(model.removeprefix("hf:"))
    name = f"{path.parent.parent.name}_{path.name}" if path.parent.name == "checkpoints" else path.name or "model"
    return f"{name}-scratch" if from_scratch else name


def glue(model: str, task_names: str | None = None, seeds: int = 3, out: str | Path | None = None,
         overrides: list[str] = (), from_scratch: bool = False, recipe: str | Path = RECIPE, jobs: int = 1) -> Path:
    """Run (or finish) MODEL's GLUE runs, one at a time in this process or up to ``jobs`` at once in processes
    of their own, and write the summary into OUT; returns OUT. XformerError for bad input before anything
    trains, and after the summary when some runs failed."""
    if seeds < 1:
        raise XformerError(f"--seeds {seeds}: at least 1")
    check_jobs(jobs)
    source = check_model(model)
    run_tasks, skipped = choose_tasks(parse_tasks(task_names), source, model, from_scratch)
    out = Path(out or Path("runs") / "glue" / model_name(model, from_scratch))
    runs = plan(model, source, run_tasks, seeds, out, recipe, list(overrides), from_scratch)
    finished = {g.run.name for g in runs if is_finished(read_result(g.run.cfg.out_dir))}
    refuse_changed(recipe, [g.run for g in runs if g.run.name in finished], "GLUE")
    for task, why in skipped.items():
        print(f"{task}: skipped: {why}", flush=True)
    failed, todo = [], []
    for i, g in enumerate(runs, 1):
        label = f"[{i}/{len(runs)}] {g.task} seed {g.seed}"
        if g.run.name in finished:
            print(f"{label}: finished before, skipped", flush=True)
        elif jobs > 1:
            todo.append((label, g.run, (g, label), progress(g)))
        elif not is_finished(run_one(g.run, label, train_and_score(g.entry), progress(g))):
            failed.append(g.run.name)
    if todo:
        failed = train_at_once(todo, jobs, run_in_worker)  # run_in_worker looked up now: tests replace it
    about = {"model": model, "name": model_name(model, from_scratch), "from_scratch": from_scratch,
             "recipe": str(recipe), "protocol": load_yaml(recipe), "overrides": list(overrides), "seeds": seeds,
             "pretraining": pretraining_cost(model, from_scratch)}
    summary = write_summary(out, about, [(g.task, g.seed, g.entry, g.run.cfg) for g in runs], skipped)
    print(f"GLUE: {summary}")
    if failed:
        raise XformerError(f"{len(failed)} of {len(runs)} GLUE runs failed: {', '.join(failed)}; "
                           f"see {out / failed[0] / 'train.log'}")
    return out


def cmd_glue(args: argparse.Namespace) -> None:
    """``xformer glue``: :func:`glue` with the command's flags."""
    seeds = 3 if args.seeds is None else args.seeds
    glue(args.model, args.tasks, seeds, args.out, args.set, args.from_scratch, args.recipe or RECIPE, args.jobs)
