"""The text side of the data: corpora, tokenizers, pretraining examples (sharded, packed or sentence pairs),
MLM masking and labelled texts."""
