"""Masked-language-model masking, applied per batch (so every epoch sees a different masking).

Of the non-special, non-padding tokens, each is selected with probability ``mlm_prob`` (or, with
whole-word masking, each word is, and then all of its WordPiece pieces are). A selected token is
replaced by [MASK] with probability ``mask_token_prob``, by a random token with probability
``random_token_prob``, and kept otherwise; the loss is computed at selected positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from xformer.errors import XformerError
from xformer.losses import IGNORE_INDEX


class MLMMasker:
    """BERT's 80/10/10 masking as vectorised torch ops, on whatever device the batch is on."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        mlm_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        whole_word_mask: bool = False,
    ):
        if tokenizer.mask_token_id is None:
            raise XformerError(f"MLM masking needs a tokenizer with a mask token; {type(tokenizer).__name__} has none")
        if mask_token_prob + random_token_prob > 1:
            raise XformerError(
                f"data.mask_token_prob + data.random_token_prob must be <= 1 "
                f"(got {mask_token_prob} + {random_token_prob})"
            )
        self.mlm_prob = mlm_prob
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob
        self.whole_word_mask = whole_word_mask
        self.mask_token_id = tokenizer.mask_token_id
        vocab_size = len(tokenizer)
        self.is_special = torch.zeros(vocab_size, dtype=torch.bool)  # (V,)
        self.is_special[list(tokenizer.all_special_ids)] = True
        self.random_ids = torch.nonzero(~self.is_special).squeeze(1)  # (V - specials,) random replacements
        pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        self.is_continuation = torch.tensor([p is not None and p.startswith("##") for p in pieces])  # (V,)
        self._on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            tables = (self.is_special, self.random_ids, self.is_continuation)
            self._on_device[device] = tuple(t.to(device) for t in tables)
        return self._on_device[device]

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator,
        rows: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a (B, T) batch; returns (masked input_ids, labels: original id where selected, else -100).

        With ``rows=(offset, total)`` the batch is rows ``offset:offset+B`` of a micro-batch of ``total``
        rows: the random draws are made for all of them and sliced, so each row is masked as it would be
        in the whole micro-batch."""
        device = input_ids.device
        B, T = input_ids.shape
        offset, total = rows or (0, B)

        def draw(fn, *args):  # (total, T) draws -> this batch's (B, T) rows
            return fn(*args, (total, T), generator=generator, device=device)[offset:offset + B]

        is_special, random_ids, is_continuation = self._tables(device)
        maskable = attention_mask.bool() & ~is_special[input_ids]  # (B, T)
        chosen = draw(torch.rand) < self.mlm_prob  # (B, T)
        if self.whole_word_mask:
            # A word starts at a maskable token that is not a ## piece, or that follows a non-maskable one.
            prev_maskable = F.pad(maskable[:, :-1], (1, 0), value=False)
            word_start = maskable & (~is_continuation[input_ids] | ~prev_maskable)  # (B, T)
            positions = torch.arange(input_ids.shape[1], device=device).expand_as(input_ids)
            start_of = torch.where(word_start, positions, 0).cummax(dim=1).values  # (B, T) start of own word
            selected = (chosen & word_start).gather(1, start_of) & maskable
        else:
            selected = chosen & maskable
        action = draw(torch.rand)  # (B, T)
        to_mask = selected & (action < self.mask_token_prob)
        keep_from = self.mask_token_prob + self.random_token_prob
        to_random = selected & (action >= self.mask_token_prob) & (action < keep_from)
        replacement = random_ids[draw(torch.randint, len(random_ids))]
        masked = torch.where(to_mask, torch.full_like(input_ids, self.mask_token_id), input_ids)
        masked = torch.where(to_random, replacement, masked)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        return masked, labels
