"""Interoperability with other libraries' checkpoints (Hugging Face transformers BERT)."""

from xformer.interop.hf_bert import (
    config_from_hf,
    config_to_hf,
    export_bert,
    load_hf_bert,
    state_dict_from_hf,
    state_dict_to_hf,
)

__all__ = ["config_from_hf", "config_to_hf", "export_bert", "load_hf_bert", "state_dict_from_hf", "state_dict_to_hf"]
