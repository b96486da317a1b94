"""Shared building blocks: attention, MLP, embeddings, block/encoder, padding helpers."""

from xformer.layers.attention import Attention, AttnContext, resolve_backend
from xformer.layers.block import Block, Encoder, configure_attention
from xformer.layers.embeddings import TokenEmbeddings
from xformer.layers.mlp import MLP

__all__ = ["Attention", "AttnContext", "Block", "Encoder", "MLP", "TokenEmbeddings", "configure_attention",
           "resolve_backend"]
