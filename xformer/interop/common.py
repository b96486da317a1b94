"""What every HF conversion shares: activation names, reading weights, fetching from the hub."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from xformer.errors import XformerError

# HF activation name -> ours; HF's gelu_new and gelu_pytorch_tanh are both the tanh approximation.
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def fetch_from_hub(repo_id: str) -> Path:
    """Download a hub repo's configs, vocabularies and weights (safetensors, else .bin) to the HF cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
        if not any(folder.rglob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*pytorch_model.bin"]))
    except HFValidationError:
        raise XformerError(f"{repo_id}: no such directory (and not a valid Hugging Face hub id)") from None
    except RepositoryNotFoundError:
        raise XformerError(f"{repo_id!r}: no such local directory, and no accessible model of that id on the "
                           "Hugging Face hub") from None
    except Exception as err:  # offline mode, network or HTTP errors: all mean we cannot get it
        raise XformerError(f"{repo_id!r} is not a local directory and the Hugging Face hub is unreachable "
                           f"({type(err).__name__}); pass a local directory") from None
    return folder


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            if name.endswith(".safetensors"):
                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
    raise XformerError(f"{model_dir}: no weights found; expected {' or '.join(WEIGHT_FILES)}")
