"""A sweep run's ``result.json``: what a sweep wrote when the run ended (finished, with its final metrics,
or failed, with the error). :mod:`~xformer.commands.sweep` writes and reads it to know what to skip;
:mod:`~xformer.commands.report` reads it for a run's status and wall time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


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
