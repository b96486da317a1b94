"""xformer: pretrain and fine-tune transformer encoders (BERT, ViT, CLIP) from YAML recipes.

``import xformer`` stays light: :func:`load` and :func:`load_tokenizer` import torch (and, for HF
inputs, transformers) on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "load_tokenizer"]


def __getattr__(name: str):
    if name in ("load", "load_tokenizer"):
        from xformer.trained import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'xformer' has no attribute {name!r}")
