"""Data pipeline: corpus reading, tokenizer, cached BERT pretraining examples and MLM masking."""

from xformer.data.corpus import corpus_fingerprint, read_documents, split_sentences
from xformer.data.masking import MLMMasker
from xformer.data.pretraining import (
    PretrainingData,
    PretrainingDataset,
    prepare_pretraining_data,
)
from xformer.data.tokenizer import build_tokenizer, train_wordpiece

__all__ = [
    "MLMMasker",
    "PretrainingData",
    "PretrainingDataset",
    "build_tokenizer",
    "corpus_fingerprint",
    "prepare_pretraining_data",
    "read_documents",
    "split_sentences",
    "train_wordpiece",
]
