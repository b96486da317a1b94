"""Sharded checkpoints of an FSDP run: the model and optimizer state as a ``torch.distributed.checkpoint``
(DCP) directory ``dcp/`` (each process its shards; the manifest covers them too), next to the same full
``model.safetensors`` and ``config.yaml`` that ``xformer.load`` and export read, and a ``train_state.pt``
whose ``optimizer`` is :data:`~xformer.train.checkpoint.OPTIMIZER_IN_DCP`. DCP reshards on load, so such a
checkpoint resumes on any number of processes, FSDP or not (:func:`load_sharded_checkpoint`, which also
loads a full checkpoint into an FSDP model). Writing follows :mod:`xformer.train.checkpoint`'s rules.
"""

from __future__ import annotations

import shutil
import warnings
from itertools import chain
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from xformer.errors import XformerError
from xformer.train.checkpoint import (
    DCP_DIR,
    check_resumable,
    complete_checkpoint,
    prune_checkpoints,
    read_train_state,
    tensor_aliases,
)


def is_sharded(path: str | Path) -> bool:
    """Whether the checkpoint at ``path`` keeps its model and optimizer state as DCP shards (an FSDP run's)."""
    return (Path(path) / DCP_DIR).is_dir()


def _agree(message: str | None, is_main: bool) -> None:
    """Raise XformerError on every process when rank 0's ``message`` says a step failed (none waits forever)."""
    if dist.is_initialized():
        box = [message if is_main else None]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise XformerError(message)


def _first_non_finite_local(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer whose shard on this process holds NaN or Inf, or None."""
    from torch.distributed.tensor import DTensor

    for name, t in chain(model.named_parameters(), model.named_buffers()):
        t = t.to_local() if isinstance(t, DTensor) else t
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def _refuse_non_finite(model: torch.nn.Module, final: Path) -> None:
    """Raise XformerError on every process when any process's shards hold NaN/Inf."""
    bad = [_first_non_finite_local(model)] * (dist.get_world_size() if dist.is_initialized() else 1)
    if dist.is_initialized():
        dist.all_gather_object(bad, bad[0])
    if (first := next((b for b in bad if b is not None), None)) is not None:
        raise XformerError(f"refusing to save checkpoint {final}: weights are not finite (first: {first})")


def _fresh_directory(tmp: Path, final: Path, is_main: bool) -> None:
    """Rank 0 makes the empty temporary directory ``tmp``; every process returns once it exists."""
    error = None
    if is_main:
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as err:
            error = f"could not write checkpoint {final}: {err.strerror or err}"
    _agree(error, is_main)


def save_sharded_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            cfg, train_state: dict, keep_last: int, is_main: bool) -> Path:
    """Write ``checkpoints/step_<step>`` of an FSDP model: every process calls this and writes its DCP shards
    into ``dcp/``; rank 0 writes the full ``model.safetensors``, ``config.yaml``, ``train_state.pt`` and the
    manifest, then renames the directory into place and prunes, as ``save_checkpoint`` does.

    Raises XformerError on every process, writing nothing, when any shard holds NaN/Inf or a write fails.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step_{step:07d}", root / f".tmp_step_{step:07d}"
    _refuse_non_finite(model, final)
    _fresh_directory(tmp, final, is_main)
    model_state, optim_state = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / DCP_DIR)
    except dcp.CheckpointException as err:  # raised on every process, it wraps each one's failure
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise XformerError(f"could not write checkpoint {final}: {str(err).strip().splitlines()[0]}") from None
    # every process takes part in gathering the full weights; rank 0 gets them (on the CPU), the others {}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    error = None
    if is_main:
        try:
            tensors = {names[0]: full[names[0]].detach().contiguous() for names in tensor_aliases(model)}
            complete_checkpoint(tmp, final, safetensors_bytes(tensors), cfg, train_state)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            error = f"could not write checkpoint {final}: {err.strerror or err}"
        if error is None:
            prune_checkpoints(Path(run_dir), keep_last)
    _agree(error, is_main)  # the others wait until rank 0 has renamed it into place
    return final


def _load_shards(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Fill ``model`` and ``optimizer`` from the DCP shards of ``path``, resharded to this run's processes
    (with no process group, loaded whole)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)  # templates of this run's layout
    both = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():  # with no process group DCP loads whole, and says so each time
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(both, checkpoint_id=path / DCP_DIR, no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"])


def _load_full(weights: Path, saved_optimizer: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Shard the full ``weights`` and the optimizer state of a full checkpoint into ``model`` and ``optimizer``."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise XformerError(f"{weights} cannot be read: {str(err).strip().splitlines()[0]}") from None
    full = {}
    for names in tensor_aliases(model):  # tied parameters are stored once, under one of their names
        found = next((tensors[n] for n in names if n in tensors), None)
        if found is None:
            raise XformerError(f"{weights} does not fit the model: {names[0]} is missing")
        full.update(dict.fromkeys(names, found))
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, full, options=options)
    # train_state.pt numbers parameters in optimizer order; DSD names them: the k-th name is the k-th parameter
    names = [n for g in get_optimizer_state_dict(model, optimizer)["param_groups"] for n in g["params"]]
    groups = saved_optimizer["param_groups"]
    named = {"state": {names[k]: v for k, v in saved_optimizer["state"].items()},
             "param_groups": [{**g, "params": [names[k] for k in g["params"]]} for g in groups]}
    set_optimizer_state_dict(model, optimizer, named, options=options)


def load_sharded_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load the model and optimizer state of checkpoint ``path`` into ``model`` (FSDP-sharded or plain) and
    ``optimizer``; return the rest of the training state. Every process calls this.

    A sharded checkpoint (``dcp/``) is resharded to this run's processes (with no process group, loaded
    whole); a full one (DDP or one process) is sharded from ``model.safetensors`` and the optimizer state
    in ``train_state.pt``. Raises XformerError naming the checkpoint or file when it is damaged or does not fit.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    state = read_train_state(check_resumable(path))
    try:
        if is_sharded(path):
            _load_shards(path, model, optimizer)
        else:
            _load_full(path / "model.safetensors", state["optimizer"], model, optimizer)
    except (RuntimeError, ValueError, KeyError, IndexError, dcp.CheckpointException) as err:  # keys, shapes
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XformerError(f"checkpoint {path} does not fit the model: {detail}") from None
    return state
