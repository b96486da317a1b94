"""``metrics.jsonl``: one strict-JSON object per line, written by the trainer and read by reports.

Non-finite numbers are written as ``null`` (bare ``NaN`` is not JSON). Readers skip a cut-off last
line (a run killed mid-write) silently and any other unreadable line with a warning naming it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from xformer.errors import XformerError


def finite_or_none(record: dict) -> dict:
    """``record`` with NaN / infinite floats replaced by None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (each has ``step`` and ``split``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise XformerError(f"{path}: cannot read ({err.strerror})") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or "split" not in record:
            if n < len(lines):  # the last line may be cut off by a kill: nothing to say
                print(f"warning: {path} line {n}: not a metrics record, skipped", file=sys.stderr)
            continue
        records.append(record)
    return records


def start_wandb(cfg, run_dir: Path):
    """A wandb run when ``train.wandb.enabled`` (online with WANDB_API_KEY, else offline), or None."""
    wcfg = cfg.train.wandb
    if not wcfg.enabled:
        return None
    try:
        import wandb
    except ImportError:
        raise XformerError("train.wandb.enabled is true but wandb is not installed (pip install 'xformer[wandb]')") from None
    mode = wcfg.mode if wcfg.mode != "auto" else ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project=wcfg.project, name=wcfg.name or run_dir.name, dir=str(run_dir), mode=mode,
                      config=cfg.model_dump(mode="json"))


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (and wandb); on resume, records after the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None, wandb_run=None):
        from xformer.train.checkpoint import atomic_write_text

        self.path, self.wandb_run = path, wandb_run
        if resume_step is not None and path.exists():
            kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        record = finite_or_none(record)
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as err:
            raise XformerError(f"could not write {self.path}: {err.strerror or err}") from None
        if self.wandb_run is not None:
            split = record["split"]
            self.wandb_run.log({f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")},
                               step=record["step"])

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
