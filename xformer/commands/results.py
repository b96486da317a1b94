"""A sweep run (:class:`SweepRun`) and its ``result.json``: what a sweep wrote when the run ended (finished,
with its final metrics, or failed, with the error as one line: :func:`error_line`).
:mod:`~xformer.commands.sweep` writes and reads it to know what to skip; :mod:`~xformer.commands.report`
reads it for a run's status and wall time.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xformer.errors import XformerError


@dataclass
class SweepRun:
    """One point of a sweep: its name, the values that make it, and its resolved config."""

    name: str
    values: dict[str, Any]
    cfg: Any


def error_line(err: Exception) -> str:
    """An exception as one line: its message (with its type unless it is an XformerError), at most 300 characters."""
    text = " ".join(str(err).split())
    if not isinstance(err, XformerError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def read_result(run_dir: str | Path) -> dict:
    """A run's ``result.json`` as a sweep wrote it; {} when there is none, or (with a warning) when it
    cannot be read."""
    file = Path(run_dir) / "result.json"
    if not file.is_file():
        return {}
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        result = None
    if not isinstance(result, dict):
        print(f"warning: {file}: not a sweep result (a JSON object expected), ignored", file=sys.stderr)
        return {}
    return result


def is_finished(result: dict) -> bool:
    """Whether a :func:`read_result` is of a finished run (one written before runs had a ``status`` is)."""
    return bool(result) and result.get("status", "finished") == "finished"
