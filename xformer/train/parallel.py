"""How a model is made ready to train, as functions applied to it in order (:func:`parallelize`): the
attention backend for the device and precision, activation checkpointing, regional compilation, then
data parallelism over the processes, replicated (DDP) or sharded per transformer block (FSDP2).

DDP and FSDP average gradients over processes alike, so losses match; FSDP shards before the optimizer is
built (its parameters become DTensors) and its checkpoints are sharded too (see
:mod:`xformer.train.checkpointer`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from xformer.config import TrainConfig
from xformer.distributed import DistInfo
from xformer.layers import blocks_of, configure_attention, set_activation_checkpointing


def uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: ``precision=bf16``, or ``auto`` on a CUDA device."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def autocast_for(cfg: TrainConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context each forward runs in (bf16, or disabled)."""
    bf16 = uses_bf16(cfg, device)
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def is_sharded_run(cfg: TrainConfig, dist: DistInfo) -> bool:
    """Whether the model is sharded (FSDP): ``train.parallel=fsdp`` with several processes; one is plain."""
    return cfg.parallel == "fsdp" and dist.world_size > 1


def compile_blocks(model: torch.nn.Module) -> None:
    """Regional compilation: each transformer block in place (they share one compiled graph)."""
    for block in blocks_of(model):
        block.compile()


def shard_model(model: torch.nn.Module, blocks: list[torch.nn.Module], info: DistInfo, bf16: bool,
                reshard_after_forward: bool) -> None:
    """FSDP2 (``fully_shard``) over all processes: each of ``blocks`` is its own unit (gathered for its
    forward and backward only), then the root holds the rest (embeddings, heads). Parameters become
    DTensors in place, so the optimizer must be built afterwards. Under bf16, parameters are gathered in
    bf16 and gradients reduced in fp32. The model's ``forward_methods`` (e.g. CLIP's ``encode_image``),
    which run it outside ``forward``, gather the root's parameters as ``forward`` does."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    with torch.no_grad():  # FSDP shards contiguous parameters only (the image models' are channels-last)
        for param in model.parameters():
            if not param.is_contiguous():
                param.data = param.data.contiguous()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    for method in getattr(model, "forward_methods", ()):
        register_fsdp_forward_method(model, method)


def unshard_model(model: torch.nn.Module) -> None:
    """Gather an FSDP model's full parameters on every process and keep them (no resharding after forward),
    so that afterwards one process alone can run it (final reports on rank 0). Every process calls this."""
    from torch.distributed.fsdp import FSDPModule

    model.set_reshard_after_forward(False)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.unshard()


def replicate(model: torch.nn.Module, info: DistInfo) -> DistributedDataParallel:
    """DDP over all processes: a full copy on each, gradients averaged in backward."""
    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def parallelize(model: torch.nn.Module, cfg: TrainConfig, dist: DistInfo) -> torch.nn.Module:
    """Make ``model`` (already on ``dist.device``) ready to train under ``cfg``, in place where possible, and
    return what a training step runs: ``model`` itself, compiled whole (a model without blocks: the CNN), or
    wrapped in DDP. Evaluation and checkpoints use ``model``."""
    bf16 = uses_bf16(cfg, dist.device)
    configure_attention(model, dist.device, torch.bfloat16 if bf16 else torch.float32)
    set_activation_checkpointing(model, cfg.activation_checkpointing)
    if cfg.compile:
        compile_blocks(model)
    if is_sharded_run(cfg, dist):
        shard_model(model, blocks_of(model), dist, bf16, cfg.reshard_after_forward)
    step_model = torch.compile(model) if cfg.compile and not blocks_of(model) else model
    if dist.world_size > 1 and not is_sharded_run(cfg, dist):
        step_model = replicate(step_model, dist)
    return step_model


def gradient_sync(model: torch.nn.Module, step_model: torch.nn.Module, sync: bool, sharded: bool):
    """The context a micro-step's backward runs in: gradients are reduced over processes only when ``sync``
    (the step's last micro-step). FSDP is told so up front; DDP skips its reduction inside ``no_sync``."""
    if sharded:
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not isinstance(step_model, DistributedDataParallel):
        return contextlib.nullcontext()
    return step_model.no_sync()


def clip_gradients(model: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
    """Clip the gradient norm to ``max_norm`` (None: no clipping) and return the norm before clipping, over
    all shards of an FSDP model."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or math.inf)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
