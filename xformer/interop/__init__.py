"""Interoperability with Hugging Face transformers checkpoints: BERT, ModernBERT, ViT, CLIP and generic
image classifiers.

Each submodule converts one family (``hf_bert``, ``hf_modernbert``, ``hf_vit``, ``hf_clip``) or wraps one
(``hf_image``); import the functions from there, e.g. ``from xformer.interop.hf_vit import load_hf_vit``.
"""

from xformer.interop.hf_bert import export_bert, load_hf_bert
from xformer.interop.hf_modernbert import export_modernbert, load_hf_modernbert
from xformer.interop.hf_vit import export_vit, load_hf_vit

__all__ = ["export_bert", "export_modernbert", "export_vit", "load_hf_bert", "load_hf_modernbert", "load_hf_vit"]
