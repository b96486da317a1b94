"""What a model's pretraining cost, read from its own run directory, so that ``xformer glue`` can keep it in
``glue.json`` beside the model's scores (:mod:`xformer.commands.glue_summary` shows it in its tables).

- wall minutes: the last ``elapsed_s`` of the run's ``metrics.jsonl`` training records (the trainer's clock,
  carried across resumes: evaluations and checkpoints included, the data preparation before training not;
  slower when the machine was busy with other work);
- token positions: micro-batches x ``train.batch_size`` x ``data.max_seq_len``, where the micro-batches are
  optimizer steps x ``train.grad_accum`` (with a ``train.batch_ramp``, the count the checkpoint at that step
  saved). These are the positions the trainer fed, padding included where rows are padded (a packed ``mlm``
  run has none); and one process's batches: a run directory does not record how many processes trained
  it, and an N-process run read N times as many.

A model trained from scratch cost nothing (0); an HF model's cost, or that of a run that is not a
pretraining run, is not known here (None), and ``note`` says which. A checkpoint of a run counts up to its
step; a run that started from ``model.init`` continued another model's pretraining, whose cost ``note``
says is not included.
"""

from __future__ import annotations

import re
from pathlib import Path

from xformer.commands.recipe import PRETRAINING_TASKS
from xformer.config import load_yaml
from xformer.errors import XformerError
from xformer.train.checkpoint import read_train_state
from xformer.train.metrics import read_metrics

COUNTED = ("token positions: micro-batches x train.batch_size x data.max_seq_len, padding included where rows "
           "are padded, of one process (a run directory does not record its process count)")


def unknown(note: str) -> dict:
    """The cost of a model whose pretraining is not known here."""
    return {"minutes": None, "token_positions": None, "note": note}


def micro_batches(run: Path, step: int, train: dict) -> int | None:
    """Micro-batches read in ``step`` optimizer steps: ``grad_accum`` each, or under a batch ramp the count
    saved by the checkpoint at ``step`` (None when there is none)."""
    if not train.get("batch_ramp"):
        return step * int(train.get("grad_accum") or 1)
    state = run / "checkpoints" / f"step_{step:07d}" / "train_state.pt"
    return int(read_train_state(state)["micro_batches"]) if state.is_file() else None


def measure(run: Path, last_step: int | None) -> dict:
    """The cost of the pretraining run ``run`` up to ``last_step`` (None: all of it)."""
    config = load_yaml(run / "config.yaml", "run config")
    task = config.get("task")
    if task not in PRETRAINING_TASKS:
        return unknown(f"{run} is a {task} run, not a pretraining run: its pretraining cost is not known here")
    records = [r for r in read_metrics(run / "metrics.jsonl")
               if r["split"] == "train" and (last_step is None or r["step"] <= last_step)]
    if not records:
        return unknown(f"{run}/metrics.jsonl has no training record")
    last = records[0]
    for record in records:  # a resume may log a step again: the last record of the last step counts
        last = record if record["step"] >= last["step"] else last
    steps = last["step"] if last_step is None else last_step
    train, data, model = (config.get(k) if isinstance(config.get(k), dict) else {} for k in ("train", "data", "model"))
    micro = micro_batches(run, steps, train)
    known = micro is not None and data.get("max_seq_len") and train.get("batch_size")
    positions = micro * int(train["batch_size"]) * int(data["max_seq_len"]) if known else None
    notes = []
    if micro is None:
        notes.append(f"no checkpoint at step {steps} to read the micro-batches of its batch ramp from")
    if model.get("init"):
        notes.append(f"continued from {model['init']}, whose own pretraining is not included")
    elapsed = last.get("elapsed_s")
    return {"minutes": elapsed / 60 if isinstance(elapsed, (int, float)) else None, "token_positions": positions,
            "steps": steps, "run": str(run), "note": "; ".join(notes)}


def pretraining_cost(model: str, from_scratch: bool) -> dict:
    """``{"minutes", "token_positions", "note"}`` (and ``steps``, ``run`` when measured; then ``note`` is what
    the figures leave out, if anything) of MODEL as ``xformer glue`` was given it; an unreadable run's files
    make the cost unknown with the reason, not an error."""
    if from_scratch:
        return {"minutes": 0.0, "token_positions": 0, "note": "from scratch: no pretraining"}
    path = Path(model.removeprefix("hf:"))
    step = re.fullmatch(r"step_(\d+)", path.name)
    run, last_step = path, None
    if step and path.parent.name == "checkpoints":  # RUN/checkpoints/step_N: the run up to step N
        run, last_step = path.parent.parent, int(step.group(1))
    if model.startswith("hf:") or not (run / "config.yaml").is_file():
        return unknown("an HF model: its pretraining cost is not known here")
    if not (run / "metrics.jsonl").is_file():
        return unknown(f"{run} has no metrics.jsonl: its pretraining cost is not known")
    try:
        return measure(run, last_step)
    except XformerError as err:
        return unknown(f"not readable: {err}")
