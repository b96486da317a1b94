"""``xformer glue --study FILE``: several models under one GLUE protocol, then one side-by-side table with
each model's pretraining cost (``study.md``, ``study.json``).

A study file names the protocol, the tasks, the seeds and the models::

    glue_study:
      protocol: recipes/glue.yaml          # relative to the working directory
      tasks: [cola, sst2, mrpc, stsb, rte]
      seeds: 3
      models:                              # name -> model; the name is its folder under --out
        scratch: {model: runs/encoder_tiny, from_scratch: true}
        encoder_tiny: {model: runs/encoder_tiny, pretrain: recipes/encoder_tiny.yaml}
        minilm: {model: "hf:/path/to/all-MiniLM-L6-v2", overrides: ["train.lr=5e-5"], seeds: 1}

Each model is :func:`xformer.commands.glue.glue` into ``OUT/<name>``, in file order, so that finished runs
are skipped and cut ones resume as they do there. A model whose path does not exist is skipped with how to
make it (``xformer pretrain <its pretrain recipe> --out <model>``); a model whose runs fail does not stop
the others; the command ends with one error naming each model that was skipped or failed. The table
(:func:`xformer.commands.glue_summary.compare`) covers every model with a ``glue.json``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pydantic import Field, field_validator

from xformer.commands.glue import GLUE_TASKS, RECIPE, cmd_glue, glue, read_protocol
from xformer.commands.glue_summary import compare, comparison_text
from xformer.commands.sweep import check_jobs
from xformer.config import Section, load_yaml, validate
from xformer.errors import XformerError, did_you_mean
from xformer.train.checkpoint import atomic_write_text


class StudyModel(Section):
    """One model of a GLUE study."""

    model: str = Field(description="a run directory, a checkpoint, an HF directory or hf:<dir or hub id>")
    from_scratch: bool = Field(False, description="the model's architecture and tokenizer with random weights")
    pretrain: str | None = Field(None, description="the recipe that makes the model: `xformer pretrain "
                                 "<pretrain> --out <model>` (the hint when the model is missing)")
    overrides: list[str] = Field([], description="--set overrides of the protocol for this model's runs")
    seeds: int | None = Field(None, ge=1, description="runs per task for this model (a costly reference model "
                              "may run fewer); None: the study's seeds")


class GlueStudy(Section):
    """A GLUE study: every model fine-tuned under one protocol, on the same tasks and seeds."""

    protocol: str = Field(str(RECIPE), description="the GLUE protocol recipe (relative to the working directory)")
    tasks: list[str] | None = Field(None, description="GLUE tasks; None: every one whose data is here or on the hub")
    seeds: int = Field(3, ge=1, description="runs per task, train.seed 0..N-1")
    models: dict[str, StudyModel] = Field(min_length=1, description="name (the output folder) -> model")

    @field_validator("tasks")
    @classmethod
    def _glue_tasks(cls, names: list[str] | None) -> list[str] | None:
        for name in names or ():
            if name not in GLUE_TASKS:
                raise ValueError(f"unknown GLUE task {name!r} (tasks: {', '.join(GLUE_TASKS)})"
                                 f"{did_you_mean(name, GLUE_TASKS)}")
        if names == []:
            raise ValueError("no task named; e.g. [cola, rte], or leave tasks out for every task")
        return names

    @field_validator("models")
    @classmethod
    def _folder_names(cls, models: dict[str, StudyModel]) -> dict[str, StudyModel]:
        for name in models:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"model name {name!r} is a folder under --out: letters, digits, _ . - only")
        return models


class StudyFile(Section):
    """A study file: one ``glue_study`` section."""

    glue_study: GlueStudy


def read_study(path: str | Path) -> GlueStudy:
    """The study in ``path``, validated; XformerError naming the file and the first bad key."""
    tree, origin = load_yaml(path, "study file"), str(path)
    if "glue_study" not in tree:
        found = f"; found {', '.join(map(str, tree))}{did_you_mean(next(iter(tree)), ['glue_study'])}" if tree else ""
        raise XformerError(f"{origin}: a GLUE study file has one section, glue_study{found}")
    section = tree["glue_study"]
    models = section.get("models") if isinstance(section, dict) else None
    for name, entry in (models.items() if isinstance(models, dict) else ()):
        # each model on its own first: its unknown keys are then named with the closest of a model's keys
        validate(StudyModel, entry, origin, f"glue_study.models.{name}")
    return validate(StudyFile, tree, origin).glue_study


def pick(study: GlueStudy, text: str | None, path: str | Path) -> list[str]:
    """The models ``--models a,b`` names, in the study's order (all for None); unknown names refused."""
    if text is None:
        return list(study.models)
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in study.models:
            raise XformerError(f"--models: {path} has no model {name!r} (models: {', '.join(study.models)})"
                               f"{did_you_mean(name, study.models)}")
    if not names:
        raise XformerError(f"--models: no model named; e.g. --models {next(iter(study.models))}")
    return [n for n in study.models if n in names]


def missing(name: str, entry: StudyModel) -> str | None:
    """Why model ``name`` cannot run (its local path does not exist), with how to make it; None when it can.
    An ``hf:`` hub id is not checked here: glue reports what the hub says."""
    source = entry.model.removeprefix("hf:")
    local = not entry.model.startswith("hf:") or Path(source).is_absolute() or source.startswith(("./", "../"))
    if not local or Path(source).exists():
        return None
    if entry.pretrain:
        return f"{source} does not exist; make it with: xformer pretrain {entry.pretrain} --out {source}"
    return f"{source} does not exist; set glue_study.models.{name}.model to a trained model"


def write_study(out: Path, path: str | Path, study: GlueStudy, problems: dict[str, str]) -> Path:
    """``OUT/study.md`` and ``OUT/study.json``: the side-by-side table of every model of the study with a
    ``glue.json`` in OUT (those of earlier ``--models`` runs too), then those that were skipped or failed
    now, and those not run yet; returns study.md's path."""
    done = [n for n in study.models if (out / n / "glue.json").is_file()]
    data = compare([out / n for n in done], done) if done else None
    text = comparison_text(data, f"GLUE study: {Path(path).stem}") if data else f"# GLUE study: {Path(path).stem}\n"
    problems = {**problems, **{n: "not run yet" for n in study.models if n not in done and n not in problems}}
    text += "".join(f"\n{name}: {why}\n" for name, why in problems.items())
    out.mkdir(parents=True, exist_ok=True)
    record = {"study": str(path), "protocol": study.protocol, "tasks": study.tasks, "seeds": study.seeds,
              "comparison": data, "problems": problems}
    atomic_write_text(out / "study.json", json.dumps(record, indent=2, allow_nan=False))
    atomic_write_text(out / "study.md", text)
    return out / "study.md"


def run_study(path: str | Path, out: str | Path | None = None, models: str | None = None,
              overrides: list[str] = (), jobs: int = 1) -> Path:
    """Run (or finish) the GLUE runs of each model of the study in ``path`` (``models``: some of them; each
    model's runs ``jobs`` at once), then write the table into OUT; returns OUT. XformerError for a bad study
    before anything trains, and at the end naming the models that were skipped or failed."""
    check_jobs(jobs)
    study = read_study(path)
    names = pick(study, models, path)
    if not Path(study.protocol).is_file():
        raise XformerError(f"{path}: glue_study.protocol: {study.protocol} not found (a path relative to the "
                           f"working directory, {Path.cwd()})")
    read_protocol(study.protocol)  # its glue section checked once, before any model
    out = Path(out or Path("runs") / "glue" / Path(path).stem)
    tasks = ",".join(study.tasks) if study.tasks else None
    problems: dict[str, str] = {}
    for i, name in enumerate(names, 1):
        entry = study.models[name]
        print(f"== [{i}/{len(names)}] {name}: {entry.model}{' from scratch' if entry.from_scratch else ''}",
              flush=True)
        if (why := missing(name, entry)) is not None:
            problems[name] = f"skipped: {why}"
        else:
            try:
                glue(entry.model, tasks, entry.seeds or study.seeds, out / name, [*entry.overrides, *overrides],
                     entry.from_scratch, study.protocol, jobs)
            except XformerError as err:  # this model's problem: the others go on
                problems[name] = f"failed: {err}"
        if name in problems:
            print(f"{name}: {problems[name]}", flush=True)
    table = write_study(out, path, study, problems)
    print(f"GLUE study: {table}")
    if problems:
        raise XformerError(f"{len(problems)} of {len(names)} models of {path} did not finish: "
                           + "; ".join(f"{n} {why}" for n, why in problems.items()))
    return out


def cmd_glue_or_study(args: argparse.Namespace) -> None:
    """``xformer glue``: one MODEL (:func:`xformer.commands.glue.cmd_glue`), or with ``--study`` a study."""
    if (args.model is None) == (args.study is None):
        raise XformerError("xformer glue: give one MODEL or --study FILE, not both" if args.model else
                           "xformer glue: give a MODEL, or --study FILE")
    if args.study is None:
        if args.models is not None:
            raise XformerError("--models picks models of a --study; with one MODEL there is nothing to pick")
        return cmd_glue(args)
    given = [flag for flag, value in (("--tasks", args.tasks), ("--seeds", args.seeds), ("--recipe", args.recipe),
                                      ("--from-scratch", args.from_scratch or None)) if value is not None]
    if given:
        raise XformerError(f"--study {args.study}: {', '.join(given)}: not with a study, whose file sets them "
                           f"(glue_study.tasks, seeds, protocol, each model's from_scratch); --set, --out, "
                           f"--models and --jobs apply")
    run_study(args.study, args.out, args.models, args.set, args.jobs)
