"""Checkpoints: ``RUN_DIR/checkpoints/step_0000100/`` with model weights (safetensors), the resolved
config, the training state (step, optimizer, RNG, micro-batches read, seconds spent) loadable with
``weights_only=True``, and ``manifest.json``: the size and sha256 of each of those files.

Every write goes to a temporary name first and is renamed into place, so an interrupted run never
leaves a half-written checkpoint or metrics file behind; a failed write (disk full) removes its
temporary files and raises XformerError. Damage that happens later (a truncated copy, a deleted file)
is caught by the manifest: :func:`latest_checkpoint` skips damaged checkpoints with a warning.

An FSDP run writes *sharded* checkpoints in the same layout plus a ``dcp/`` directory
(:mod:`xformer.train.sharded_checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import sys
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model
from safetensors.torch import save as safetensors_bytes

from xformer.config import save_config
from xformer.errors import XformerError

STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
FILES = ("model.safetensors", "config.yaml", "train_state.pt")  # what every checkpoint holds
DCP_DIR = "dcp"  # a sharded checkpoint's model + optimizer state
OPTIMIZER_IN_DCP = "dcp"  # train_state.pt's "optimizer" when the optimizer state is in dcp/

_warned: set[tuple[Path, str]] = set()  # each damaged checkpoint is reported once per process
_hashed: set[tuple] = set()  # (checkpoint, its files' mtimes and inodes) whose hashes matched in this process


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """All checkpoint directories of a run (``step_*``, intact or not), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_unsealed(path: Path) -> str | None:
    """What is wrong with a checkpoint written before manifests: ``model.safetensors`` and ``config.yaml``
    must exist and, like ``train_state.pt`` where present, be non-empty."""
    for name in FILES:
        if not (path / name).is_file():
            if name == "train_state.pt":  # weights-only copies load for inference; resuming says why not
                continue
            return f"{name} is missing (and there is no {MANIFEST})"
        if (path / name).stat().st_size == 0:
            return f"{name} is empty"
    return None


def _read_manifest(path: Path) -> dict[str, tuple[int, str]] | str:
    """The manifest's file name -> (size, sha256), or what is wrong with it."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        entries = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in manifest.items()}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        return f"{MANIFEST} is unreadable (expected file name -> size and sha256)"
    if unlisted := [name for name in FILES if name not in entries]:
        return f"{MANIFEST} does not list {unlisted[0]}"
    return entries


def verify_checkpoint(path: str | Path, hashes: bool = True) -> str | None:
    """What is wrong with the checkpoint directory ``path``, or None when it is intact.

    With a manifest, every file it lists must exist with the recorded size, then (with ``hashes``) the
    recorded sha256; a checkpoint whose hashes matched once in this process is not hashed again while none
    of its files was rewritten (same mtimes and inodes). Without one (checkpoints written before manifests),
    ``model.safetensors`` and ``config.yaml`` must exist and, like ``train_state.pt`` where present, be
    non-empty.
    """
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    if not any(path.iterdir()):
        return "the directory is empty"
    if not (path / MANIFEST).is_file():
        return _verify_unsealed(path)
    entries = _read_manifest(path)
    if isinstance(entries, str):
        return entries
    for name, (size, _) in entries.items():  # sizes first: cheap, and they catch truncation
        if not (path / name).is_file():
            return f"{name} is missing"
        if (actual := (path / name).stat().st_size) != size:
            return f"{name} has {actual} bytes, {MANIFEST} records {size} (truncated or overwritten)"
    # a file rewritten in place (a flipped bit) changes its mtime: hash again whenever any stat differs
    seal = (path.resolve(), tuple((name, (path / name).stat().st_mtime_ns, (path / name).stat().st_ino)
                                  for name in (MANIFEST, *entries)))
    if not hashes or seal in _hashed:
        return None
    for name, (_, digest) in entries.items():
        try:
            if _sha256(path / name) != digest:
                return f"{name} does not match its sha256 in {MANIFEST} (corrupted)"
        except OSError as err:
            return f"{name} cannot be read: {err.strerror or err}"
    _hashed.add(seal)
    return None


def _warn_damaged(path: Path, reason: str, action: str) -> None:
    if (path, reason) not in _warned:
        _warned.add((path, reason))
        print(f"warning: damaged checkpoint {path}: {reason}; {action}", file=sys.stderr)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest intact checkpoint of a run, or None; damaged ones are skipped with a warning on stderr."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        if (reason := verify_checkpoint(ckpt)) is None:
            return ckpt
        _warn_damaged(ckpt, reason, "skipping it")
    return None


def rng_state() -> dict:
    """The torch, numpy, python (and CUDA) RNG states, as tensors and lists that load with ``weights_only``."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer holding NaN or Inf, or None."""
    for name, t in chain(model.named_parameters(), model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def _weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's state dict as safetensors bytes, tied parameters stored once (as ``load_model`` expects)."""
    seen: set[int] = set()
    tensors = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            tensors[name] = t.detach().contiguous()  # channels-last conv weights are strided
    return safetensors_bytes(tensors)


def tensor_aliases(model: torch.nn.Module) -> list[list[str]]:
    """The state-dict names of ``model``, grouped by tensor: tied parameters share a group, first name first."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return list(groups.values())


def _write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync through Python's file I/O, so a full disk surfaces here as OSError (ENOSPC)."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_manifest(ckpt: Path) -> None:
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p != ckpt / MANIFEST)  # dcp/ files too
    manifest = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    _write_bytes(ckpt / MANIFEST, json.dumps(manifest, indent=1).encode())


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` intact checkpoints; remove older ones and damaged ones (missing or
    truncated files: sizes only, so a save does not re-read every checkpoint it keeps)."""
    kept = 0
    for ckpt in reversed(list_checkpoints(run_dir)):
        reason = verify_checkpoint(ckpt, hashes=False)
        if reason is None and kept < keep_last:
            kept += 1
            continue
        if reason is not None:
            _warn_damaged(ckpt, reason, "removing it")
        shutil.rmtree(ckpt, ignore_errors=True)


def complete_checkpoint(tmp: Path, final: Path, weights: bytes, cfg, train_state: dict) -> None:
    """Write the weights, config and training state into ``tmp``, then the manifest, then rename it to ``final``."""
    _write_bytes(tmp / "model.safetensors", weights)
    save_config(cfg, tmp / "config.yaml")
    state = io.BytesIO()
    torch.save(train_state, state)
    _write_bytes(tmp / "train_state.pt", state.getbuffer())
    _write_manifest(tmp)  # last: a manifest vouches for files already complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, cfg, train_state: dict,
                    keep_last: int) -> Path:
    """Write ``checkpoints/step_<step>`` atomically, then drop all but the newest ``keep_last`` intact ones.

    Raises XformerError, writing nothing, when the weights hold NaN/Inf; and when writing fails (disk
    full, permissions), after removing the temporary directory. Earlier checkpoints are left as they were.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    if (bad := _first_non_finite(model)) is not None:
        raise XformerError(f"refusing to save checkpoint {final}: weights are not finite (first: {bad})")
    tmp = root / f".tmp_step_{step:07d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        complete_checkpoint(tmp, final, _weights_bytes(model), cfg, train_state)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise XformerError(f"could not write checkpoint {final}: {err.strerror or err}") from None
    prune_checkpoints(Path(run_dir), keep_last)
    return final


def check_resumable(path: Path) -> Path:
    """The training-state file of the checkpoint at ``path``, once the checkpoint is known intact and able
    to resume training; XformerError saying why otherwise."""
    if (reason := verify_checkpoint(path)) is not None:
        raise XformerError(f"checkpoint {path} is damaged: {reason}")
    state = path / "train_state.pt"
    if not state.is_file():
        raise XformerError(f"{state} is missing: checkpoint {path} holds weights only and cannot resume training")
    return state


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict:
    """Load weights into ``model`` and return the training state (weights_only).

    Raises XformerError naming the checkpoint or file when it is damaged or cannot be read.
    """
    path = Path(path)
    state, weights = check_resumable(path), path / "model.safetensors"
    try:
        load_model(model, str(weights))
    except (SafetensorError, OSError) as err:
        raise XformerError(f"{weights} cannot be read: {str(err).strip().splitlines()[0]}") from None
    except RuntimeError as err:  # missing or unexpected keys, wrong shapes
        raise XformerError(f"{weights} does not fit the model: {str(err).strip().splitlines()[0]}") from None
    return read_train_state(state)


def read_train_state(state: Path) -> dict:
    """The training state in ``state`` (``train_state.pt``, weights_only); XformerError naming it otherwise."""
    try:
        return torch.load(state, weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XformerError(f"{state} cannot be read as a training state: {detail}") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` via a temporary file; on failure the old file stays as it was."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` via a temporary file beside it; on failure (disk full, a read-only
    folder, a file where a folder is expected) the old file stays as it was and XformerError names ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.is_dir():  # os.replace would put a file in place of a folder's name only on some systems
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
        _write_bytes(tmp, data)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise XformerError(f"could not write {path}: {err.strerror or err}") from None


def write_dir_whole(target: str | Path, fill) -> Path:
    """Make the folder ``target`` (absent before) in one rename: ``fill(work)`` writes into an empty folder
    beside it. On failure (disk full, read-only) nothing is left under either name and XformerError names
    ``target``; a half-written folder is never seen."""
    target = Path(target)
    work = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        fill(work)
        os.rename(work, target)
    except OSError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise XformerError(f"could not write {target}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _within(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it (both resolved; the same file by inode counts too)."""
    with contextlib.suppress(OSError):
        if inner.exists() and outer.exists() and os.path.samefile(inner, outer):
            return True
    return inner == outer or outer in inner.parents


def check_output(out: str | Path, inputs, overwrite: bool = False, flag: str = "--overwrite",
                 what: str = "output") -> Path:
    """Refuse to write ``out`` where it would destroy what the command did not make, before any work.

    Never over one of the command's own ``inputs`` (files or folders; nor a folder holding one, nor inside an
    input folder), whatever the flags; an existing file or non-empty folder only when the user asked
    (``overwrite``, the command's ``flag``). Returns ``out`` resolved."""
    out = Path(out).expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if _within(out, source) or _within(source, out):
            raise XformerError(f"{what} {out} would write over the command's own input {source}; choose another {what}")
    for above in [out, *out.parents]:
        if above.exists():
            if above != out and not above.is_dir():
                raise XformerError(f"{what} {out}: {above} is a file, not a folder")
            break
    taken = out.is_file() or (out.is_dir() and any(out.iterdir())) or (out.exists() and not out.is_dir())
    if taken and not overwrite:
        kind = "a non-empty folder" if out.is_dir() else "a file"
        raise XformerError(f"{what} {out} already exists ({kind} this command did not write); pass {flag} to "
                           f"replace it, or choose another {what}")
    return out
