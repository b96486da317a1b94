"""A run directory's guards: one process at a time (a lock), no overwriting, resuming only what was started.

- :class:`RunLock`: ``RUN/.lock`` holds the owner's PID and host; a second process is refused, a lock
  left by a dead process is taken over with a notice.
- :func:`check_start`: refuse to start over a run that has checkpoints (without ``--resume``), and on
  ``--resume`` refuse a config that differs from what the user set when the run started
  (``RUN/user_config.yaml``, :func:`config_diff`): values a task derives at run time (``model.nsp`` from
  ``data.objective``, sizes from the data) are compared resolved against ``RUN/config.yaml`` once the
  model is built (:func:`check_resolved`), never against the user's defaults.
- :func:`pin_data`: a run records the fingerprint of its data sources (``RUN/data.json``); resuming on
  changed data is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from xformer.train.checkpoint import atomic_write_text
from xformer.config import RunConfig, Section, config_text, load_yaml
from xformer.errors import XformerError

# Keys that never make two runs different: where they are written or cached, how they report progress,
# how many processes prepare the data (shards are its unit of work, so the examples do not depend on it),
# how many items an evaluation batches at once.
NOT_COMPARED = ("out_dir", "sweep", "train.progress", "data.cache_dir", "data.num_workers", "eval.batch_size")
# The config as the user set it (recipe and --set, before any value derived at run time): what --resume compares.
USER_CONFIG = "user_config.yaml"


def prepare_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and parents); XformerError when it is a file or cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise XformerError(f"--out {run_dir}: exists and is a file, not a run directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise XformerError(f"--out {run_dir}: cannot write there ({err.strerror})") from None


# What training writes: a run directory holding none of these never trained (only its config, data pins, tokenizer).
TRAINING_OUTPUTS = ("checkpoints", "metrics.jsonl")


def remove_unstarted(run_dir: Path) -> bool:
    """Remove ``run_dir`` (made by this command) when training wrote nothing into it: a start that failed on
    bad data or config leaves no empty run behind. True when it was removed."""
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in TRAINING_OUTPUTS):
        return False
    if (run_dir / ".lock").exists():  # still held (by another process, or a lock not released)
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` -- exclusive use of a run directory by this process."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def __enter__(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and (owner.get("host") != me["host"] or _alive(owner["pid"])):
                    raise XformerError(
                        f"{self.path.parent} is in use by process {owner['pid']} on {owner.get('host')} ({self.path}); "
                        f"wait for it to finish, or use another --out") from None
                print(f"notice: taking over the stale lock {self.path} of process "
                      f"{owner['pid'] if owner else '?'}, which is no longer running", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise XformerError(f"{self.path}: could not take the run directory's lock")

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None  # unreadable: a lock cut off mid-write, so its writer died

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# ----------------------------------------------------------------------------- comparing configs


def recipe_tree(cfg: BaseModel) -> dict:
    """What the recipe decides in ``cfg``, as a tree: a section that starts from ``init`` keeps only its
    runtime keys (its architecture comes from the checkpoint), at any depth."""

    def walk(section: Section) -> dict:
        whole = getattr(section, "init", None) is None
        out = {}
        for name in type(section).model_fields:
            value = getattr(section, name)
            if isinstance(value, Section):
                out[name] = walk(value)
            elif whole or name in section.runtime_keys:
                out[name] = value
        return out

    return _norm(walk(cfg))


def config_diff(saved: dict, new: dict, prefix: str = "") -> str | None:
    """The first key where ``new`` differs from ``saved``, as ``key (X there, Y now)``; None when they
    agree. Keys whose new value is None are filled in at run time (vocab_size, num_classes) and not
    compared; nor are the keys of :data:`NOT_COMPARED`."""
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if dotted in NOT_COMPARED or value is None:
            continue
        before = saved.get(key) if isinstance(saved, dict) else None
        if isinstance(value, dict):
            found = config_diff(before if isinstance(before, dict) else {}, value, f"{dotted}.")
            if found:
                return found
        elif _norm(before) != _norm(value):
            return f"{dotted} ({before!r} there, {value!r} now)"
    return None


def _norm(value: Any) -> Any:
    """Tuples as lists, as in a saved YAML config."""
    return json.loads(json.dumps(value))


def saved_config(run_dir: Path, name: str = "config.yaml") -> dict | None:
    """The config ``name`` saved in ``run_dir`` (the resolved ``config.yaml``, or :data:`USER_CONFIG`), or None."""
    file = run_dir / name
    return load_yaml(file, "run config") if file.is_file() else None


def _refuse_diff(run_dir: Path, name: str, saved: dict, new: dict) -> None:
    diff = config_diff(saved, {k: v for k, v in new.items() if k not in ("train", "task")})
    if diff:
        key, values = diff.split(" ", 1)
        raise XformerError(f"--resume: {key} differs from {run_dir / name} {values}; start a new run with --out "
                           f"to change it")


def check_start(run_dir: Path, cfg: RunConfig, resume: bool, has_checkpoint: bool) -> None:
    """Refuse to overwrite a run; on ``--resume``, refuse a config whose model or data sections changed
    (training settings may change on a resume, e.g. a longer ``train.max_steps``).

    ``cfg`` is what the user set, so it is compared with what the user set when the run started
    (:data:`USER_CONFIG`). A run started before that file existed has only its resolved ``config.yaml``:
    its sections but the model are compared here, the model once built (:func:`check_resolved`)."""
    if has_checkpoint and not resume:
        raise XformerError(f"{run_dir} already holds checkpoints: pass --resume to continue it, or --out another dir")
    if not (resume and has_checkpoint):
        return
    new = recipe_tree(cfg)
    if (user := saved_config(run_dir, USER_CONFIG)) is not None:
        _refuse_diff(run_dir, USER_CONFIG, user, new)
    elif (saved := saved_config(run_dir)) is not None:
        _refuse_diff(run_dir, "config.yaml", saved, {k: v for k, v in new.items() if k != "model"})


def check_resolved(run_dir: Path, resolved: RunConfig) -> None:
    """On ``--resume``, refuse a built model whose resolved section differs from the run's ``config.yaml``
    (both hold the values derived at run time, so like is compared with like); call before saving."""
    if (saved := saved_config(run_dir)) is not None and "model" in saved:
        _refuse_diff(run_dir, "config.yaml", {"model": saved["model"]}, {"model": recipe_tree(resolved)["model"]})


def save_user_config(run_dir: Path, cfg: RunConfig) -> None:
    """Write :data:`USER_CONFIG`: ``cfg`` as the user set it, before values derived at run time."""
    atomic_write_text(run_dir / USER_CONFIG, config_text(cfg))


# ----------------------------------------------------------------------------- data pinning


def data_sources(cfg: RunConfig) -> dict[str, tuple]:
    """Every data source a config names: dotted key -> (source, split), from any ``*source`` key of
    any section (``data.source``, ``data.val_source``, ``eval.source``, ...)."""
    found = {}
    for section_name in type(cfg).model_fields:
        section = getattr(cfg, section_name)
        if not isinstance(section, BaseModel):
            continue
        for key in type(section).model_fields:
            if key.endswith("source") and getattr(section, key) is not None:
                # the split each loader reads: its own *_split key, else the loaders' defaults
                split_key = key.replace("source", "split")
                default = {"val_source": "validation", "test_source": "test"}.get(key, "train")
                split = getattr(section, split_key, None) or default
                found[f"{section_name}.{key}"] = (getattr(section, key), split)
    return found


def pin_data(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """Record the fingerprints of the run's data in ``RUN/data.json``; on resume, refuse changed data (a run
    that recorded the older fingerprint of file stats resumes while those stats are unchanged)."""
    from xformer.data.sources import source_fingerprint, stat_fingerprint

    now = {key: source_fingerprint(source, split, key) for key, (source, split) in data_sources(cfg).items()}
    file = run_dir / "data.json"
    if resume and file.is_file():
        try:
            before = json.loads(file.read_text())
        except ValueError:
            before = None
        if isinstance(before, dict):
            changed = next((k for k in now if k in before and before[k] != now[k]
                            and before[k] != stat_fingerprint(*data_sources(cfg)[k], k)), None)
            if changed is not None:
                raise XformerError(
                    f"--resume: the data of {changed} ({data_sources(cfg)[changed][0]}) changed since {run_dir} "
                    f"started (fingerprint {before[changed]} then, {now[changed]} now); restore it, or start a "
                    f"new run with --out")
    atomic_write_text(file, json.dumps(now, indent=2))
