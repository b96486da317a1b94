"""MLM masking: rates, specials and padding untouched, whole words, determinism."""

import pytest
import torch
from transformers import BertTokenizerFast

from xformer.data import MLMMasker
from xformer.errors import XformerError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def tokenizer():
    words = [f"w{i}" for i in range(300)] + [f"##p{i}" for i in range(100)]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(SPECIALS + words)})


def make_batch(tokenizer, batch=1024, length=256, seed=0):
    """[CLS] A [SEP] B [SEP] [PAD]... rows of random words followed by 0-2 ## pieces."""
    g = torch.Generator().manual_seed(seed)
    n_words, n_pieces = 300, 100
    ids = torch.randint(5, 5 + n_words, (batch, length), generator=g)  # (B, T) word starts
    is_piece = torch.rand(batch, length, generator=g) < 0.3
    ids = torch.where(is_piece, torch.randint(5 + n_words, 5 + n_words + n_pieces, (batch, length), generator=g), ids)
    lengths = torch.randint(length * 3 // 4, length + 1, (batch,), generator=g)  # (B,)
    pos = torch.arange(length)
    mask = (pos[None, :] < lengths[:, None]).long()  # (B, T)
    ids[:, 0] = tokenizer.cls_token_id
    ids[torch.arange(batch), lengths // 2] = tokenizer.sep_token_id
    ids[torch.arange(batch), lengths - 1] = tokenizer.sep_token_id
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, tokenizer.pad_token_id))
    return ids, mask


def check_rates(tokenizer, ids, mask, masked, labels):
    special = torch.tensor([int(i) in tokenizer.all_special_ids for i in range(len(tokenizer))])
    maskable = mask.bool() & ~special[ids]
    selected = labels != -100
    assert maskable.sum() >= 100_000
    assert not (selected & ~maskable).any()  # never special, never padding
    assert torch.equal(masked[~maskable], ids[~maskable])
    assert torch.equal(labels[selected], ids[selected])
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.005
    n = selected.sum()
    to_mask = (masked == tokenizer.mask_token_id) & selected
    unchanged = (masked == ids) & selected
    replaced = selected & ~to_mask & ~unchanged
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    assert abs(replaced.sum() / n - 0.1) < 0.01
    assert abs(unchanged.sum() / n - 0.1) < 0.01
    assert not special[masked[replaced]].any()  # random tokens come from the non-special vocab
    return selected


def test_token_masking_rates(tokenizer):
    ids, mask = make_batch(tokenizer)
    masker = MLMMasker(tokenizer)
    masked, labels = masker(ids, mask, torch.Generator().manual_seed(1))
    assert masked.shape == labels.shape == ids.shape and masked.dtype == labels.dtype == torch.long
    check_rates(tokenizer, ids, mask, masked, labels)


def test_whole_word_masking_selects_all_pieces(tokenizer):
    ids, mask = make_batch(tokenizer)
    masker = MLMMasker(tokenizer, whole_word_mask=True)
    masked, labels = masker(ids, mask, torch.Generator().manual_seed(2))
    selected = check_rates(tokenizer, ids, mask, masked, labels)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    is_piece = torch.tensor([p.startswith("##") for p in pieces])[ids]  # (B, T)
    follows_word = torch.zeros_like(is_piece)
    follows_word[:, 1:] = ids[:, :-1] >= 5  # previous token is a word or piece, not special
    continues = is_piece & follows_word
    # every continuation piece is selected exactly when the token before it is
    assert torch.equal(selected[:, 1:][continues[:, 1:]], selected[:, :-1][continues[:, 1:]])
    assert continues.sum() > 10_000


def test_deterministic_under_the_same_seed(tokenizer):
    ids, mask = make_batch(tokenizer, batch=64)
    for whole_word in (False, True):
        masker = MLMMasker(tokenizer, whole_word_mask=whole_word)
        a = masker(ids, mask, torch.Generator().manual_seed(7))
        b = masker(ids, mask, torch.Generator().manual_seed(7))
        c = masker(ids, mask, torch.Generator().manual_seed(8))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[1], c[1])


def test_rejects_probabilities_over_one(tokenizer):
    with pytest.raises(XformerError, match="mask_token_prob"):
        MLMMasker(tokenizer, mask_token_prob=0.95, random_token_prob=0.1)
