"""``metrics.jsonl``: one strict-JSON object per line, written by the trainer and read by reports; and
what the trainer logs there: the counts of a log window with its throughput, model FLOPs utilisation and
mean gradient norm, the watches for a diverged step (non-finite) and an exploded loss (finite, but
:data:`EXPLOSION_FACTOR` times its start), and what a validation record warns about.

Non-finite numbers are written as ``null`` (bare ``NaN`` is not JSON). Readers skip a cut-off last
line (a run killed mid-write) silently and any other unreadable line with a warning naming it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch

from xformer import distributed
from xformer.errors import XformerError
from xformer.losses import no_targets

# A training loss this many times its start (its first step's, at least 1) has exploded: the weights grew
# without bound, even where nothing is NaN yet. Cross-entropy starts near ln(classes) and a regression near
# the targets' variance; neither gets 1000 times worse while training works.
EXPLOSION_FACTOR = 1e3


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


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters outside embedding tables (each is used in one multiply-add per token)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def add_counts(total: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]) -> None:
    """Add ``counts`` into ``total`` by name (on the device, no host sync)."""
    for name, value in counts.items():
        total[name] = total[name] + value if name in total else value


class LogWindow:
    """The training steps since the last log: their summed counts and gradient norms, and their time.

    Model FLOPs per token for MFU are 6 x the parameters outside embedding tables (the attention scores'
    own FLOPs are left out), for tasks that count tokens, against ``peak_tflops`` (or a known GPU's peak).
    """

    def __init__(self, model: torch.nn.Module, dist: distributed.DistInfo, peak_tflops: float | None):
        self.dist = dist
        self.peak = distributed.peak_tflops(dist.device, peak_tflops)
        self.flops_per_token = 6 * matmul_parameters(model)
        self.counts: dict[str, torch.Tensor] = {}
        self.norm_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
        self.steps, self.t_log = 0, 0.0

    def start(self, now: float) -> None:
        """Begin the first window at ``now`` (seconds)."""
        self.t_log = now

    def add(self, counts: dict[str, torch.Tensor]) -> None:
        """Add a step's counts; its ``grad_norm`` (before clipping) goes to the mean gradient norm."""
        counts = dict(counts)
        self.norm_sum = self.norm_sum + counts.pop("grad_norm").double()
        add_counts(self.counts, counts)
        self.steps += 1

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (evaluation, checkpointing) out of the throughput."""
        self.t_log += seconds

    def sums(self) -> dict[str, float]:
        """The counts of the steps not logged yet, summed over processes (one collective), the window kept."""
        return distributed.all_reduce_sums(self.counts)

    def close(self, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """The window's counts summed over processes (one collective) and its metrics: the mean gradient norm,
        throughput in whatever the task counts (``tokens``, ``images``) and MFU; the next window starts."""
        sums = distributed.all_reduce_sums(self.counts)
        metrics = {"grad_norm": float(self.norm_sum) / self.steps}
        for unit in ("tokens", "images"):
            if unit in sums:
                metrics[f"{unit}_per_s"] = sums[unit] / (now - self.t_log)
        if self.peak and "tokens" in sums:  # model FLOPs utilisation of each device
            achieved = self.flops_per_token * metrics["tokens_per_s"] / self.dist.world_size
            metrics["mfu"] = achieved / (self.peak * 1e12)
        self.counts, self.steps, self.t_log = {}, 0, now
        self.norm_sum = torch.zeros_like(self.norm_sum)
        return sums, metrics


class DivergenceWatch:
    """The first step whose loss or gradient norm was not finite, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.tensor(-1, device=device)

    def update(self, step: int, nonfinite: torch.Tensor) -> None:
        """Note ``step`` (1-based) when it counted ``nonfinite`` values and no step before it did."""
        self.first_bad = torch.where((self.first_bad < 0) & (nonfinite > 0), step, self.first_bad)

    def first(self) -> int | None:
        """The first non-finite step, or None (one host sync: call it at logs and saves)."""
        first_bad = int(self.first_bad)
        return None if first_bad < 0 else first_bad


class ExplosionWatch:
    """The training loss against its start, the loss of the first step after (re)starting: :meth:`check`
    says when a logged loss is :data:`EXPLOSION_FACTOR` times it (a finite explosion, which
    :class:`DivergenceWatch` does not see)."""

    def __init__(self):
        self.first: dict[str, torch.Tensor] | None = None  # the first step's counts, on the device
        self.start: tuple[int, float] | None = None  # (step, loss) once measured

    def add(self, step: int, counts: dict[str, torch.Tensor]) -> None:
        """Keep the counts of ``step`` (1-based) when it is the first one seen (no host sync)."""
        if self.first is None and self.start is None:
            self.first = {k: v for k, v in counts.items() if k != "grad_norm"}
            self.start = (step, math.nan)

    def check(self, step: int, loss: float, metrics_of) -> str | None:
        """What is wrong when the training loss ``loss`` logged after ``step`` is many times its start, or
        None. The first call measures the start (one collective, so every process decides alike);
        ``metrics_of`` turns summed counts into the task's metrics."""
        if self.start is None:
            return None
        if self.first is not None:
            first_loss = metrics_of(distributed.all_reduce_sums(self.first)).get("loss", math.nan)
            self.start = (self.start[0], float(first_loss))
            self.first = None
        first_step, start = self.start
        if not (math.isfinite(start) and math.isfinite(loss)) or loss <= EXPLOSION_FACTOR * max(start, 1.0):
            return None
        return (f"step {step}: the training loss exploded to {loss:.3g}, {loss / start:.2g} times its start "
                f"({start:.3g} at step {first_step}): the run diverged before any value was not finite")


def validation_warning(step: int, counts: dict[str, float], metrics: dict[str, float], label: str) -> str | None:
    """The warning a validation record after ``step`` calls for, or None: the validation data gave no targets
    (``counts``'s target counts are 0: its loss is "no targets", not 0), or its loss is not finite."""
    if missing := no_targets(counts):
        return (f"warning: step {step}: the validation data ({label}) gave no targets ({', '.join(missing)} = 0): "
                f"its loss and accuracy are not measured (no targets), not 0")
    loss = metrics.get("loss")
    if isinstance(loss, float) and not math.isfinite(loss):
        return (f"warning: step {step}: the validation loss is {loss} ({label}); the weights or the validation "
                f"data hold non-finite values")
    return None
