"""Shared building blocks: attention, MLP, embeddings, block/encoder, padding helpers."""

from xformer.layers.attention import Attention, AttnContext, resolve_backend
from xformer.layers.block import Block, Encoder, blocks_of, configure_attention, set_activation_checkpointing
from xformer.layers.embeddings import TokenEmbeddings
from xformer.layers.mlp import MLP

__all__ = ["Attention", "AttnContext", "Block", "Encoder", "MLP", "TokenEmbeddings", "blocks_of",
           "configure_attention", "resolve_backend", "set_activation_checkpointing"]
