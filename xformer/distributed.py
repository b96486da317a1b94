"""Process-group setup for ``torchrun`` (DDP) and the few collectives the trainer needs."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from xformer.errors import XformerError


@dataclass
class DistInfo:
    """Where this process stands: its rank among ``world_size`` and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"


# Dense bf16 peak TFLOP/s of the GPUs model FLOPs utilisation knows, by a part of the device's name.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0))


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """``override``, else the bf16 dense peak of a known CUDA device, else None (no MFU)."""
    if override is not None or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def pick_device(name: str) -> torch.device:
    """The ``train.device`` named ``name``: ``auto`` is this process's CUDA device if any, else the CPU;
    plain ``cuda`` is the GPU of this process's ``LOCAL_RANK``.

    Raises XformerError for a string that is none of auto, cpu, cuda, cuda:N, mps, and for a device
    this machine does not have.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise XformerError(f"train.device={name}: not a device; use one of {DEVICE_FORMS}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise XformerError(f"train.device={name}: no Apple GPU (MPS) is available here; use train.device=cpu or auto")
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise XformerError(f"train.device={name}: no CUDA GPU is visible here; use train.device=cpu or auto")
    count = torch.cuda.device_count()
    if device.index is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= count:
            raise XformerError(f"train.device={name}: LOCAL_RANK={local_rank} but only {count} CUDA GPU(s) are "
                               f"visible; start at most {count} processes per node")
        return torch.device("cuda", local_rank)
    if device.index >= count:
        raise XformerError(f"train.device={name}: only {count} CUDA GPU(s) are visible here "
                           f"(cuda:0 to cuda:{count - 1}); use one of {DEVICE_FORMS}")
    return device


def setup(device_name: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); NCCL on GPU, gloo on CPU."""
    device = pick_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world_size=world_size, device=device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the body first (filling the data and tokenizer caches), then the other ranks,
    which find the caches ready."""
    if not info.is_main:
        barrier()
    yield
    if info.is_main:
        barrier()


def all_reduce_sums(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum 0-d tensors over all processes (one collective) and bring them to the host."""
    if not values:
        return {}
    stacked = torch.stack([v.double() for v in values.values()])
    if dist.is_initialized():
        dist.all_reduce(stacked)
    return dict(zip(values, stacked.tolist()))


def all_reduce_tensors(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum 0-d tensors over all processes in one collective, staying on the device (no host sync)."""
    if not dist.is_initialized() or not values:
        return values
    stacked = torch.stack(list(values.values()))
    dist.all_reduce(stacked)
    return dict(zip(values, stacked.unbind()))


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every process's ``x`` (B, ...) along dim 0 -> (world_size * B, ...), and the offset of this
    process's rows. Gradients flow back to every process's own part, so a loss over the gathered rows
    trains as if one process held the whole batch. Every process must pass the same B."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.size(0)


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (e.g. 'time is up'), shared so every process stops at the same step."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def teardown() -> None:
    """Leave the process group; ranks wait for each other first (gloo aborts a process that leaves while a
    peer is still talking to it). A rank that failed does not wait: the others fail on their own.

    Unreferenced models are collected first: a DDP wrapper left in a reference cycle keeps the group, and
    with it gloo's worker threads, alive into interpreter shutdown, where a worker that releases a tensor
    needs the GIL and the process aborts ("terminate called without an active exception")."""
    if dist.is_initialized():
        gc.collect()
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` (e.g. its elapsed seconds) on every process, so decisions made from it (the LR of
    a time budget, when to stop) agree. One small collective and a host sync: call it at log steps only."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.item()
