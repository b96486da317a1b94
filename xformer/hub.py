"""Fetching a model repository from the Hugging Face hub, with one-line errors when it cannot be had."""

from __future__ import annotations

from pathlib import Path

from xformer.errors import XformerError


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
