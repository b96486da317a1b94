"""Data pipeline: corpus reading, tokenizer, cached BERT pretraining examples and MLM masking."""

from xformer.data.text.corpus import corpus_fingerprint, read_documents, split_sentences
from xformer.data.text.masking import MLMMasker
from xformer.data.text.pretraining import (
    PretrainingData,
    PretrainingDataset,
    prepare_pretraining_data,
)
from xformer.data.text.tokenizer import build_tokenizer, train_wordpiece

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
