"""The tokenizer: an existing HF tokenizer, or a BERT WordPiece tokenizer trained on the corpus.

A trained tokenizer is cached under ``CACHE/tokenizers/<hash>`` (keyed by the corpus and the
tokenizer config) as a ``save_pretrained`` directory, so ``AutoTokenizer.from_pretrained`` (or
``data.tokenizer.path``) loads it like any other. It is trained on a bounded sample streamed from the
corpus (:func:`tokenizer_sample`): the first ``train_documents`` documents, at most ``train_chars``
characters in all, so the corpus is never held in memory. Training runs in a background thread
(:func:`in_background`) so that Ctrl-C stops it at once rather than when the Rust trainer returns.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

from xformer.data.configs import TokenizerConfig
from xformer.data.cache import log, publish_dir
from xformer.errors import XformerError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # in this order: [PAD] = 0
LIMIT_ALPHABET = 1000  # keep the 1000 most frequent characters; rarer ones become [UNK]


def tokenizer_sample(documents: Iterable[str], max_documents: int | None, max_chars: int | None) -> Iterator[str]:
    """The first ``max_documents`` of ``documents``, cut so that they hold at most ``max_chars`` characters
    in all (the document that crosses the budget is truncated); ``documents`` is read no further."""
    chars = 0
    for n, doc in enumerate(documents):
        if max_documents is not None and n >= max_documents:
            return
        if max_chars is not None:
            doc = doc[: max_chars - chars]
            chars += len(doc)
        yield doc
        if max_chars is not None and chars >= max_chars:
            return


def in_background(work: Callable[[], object], what: str, on_interrupt: str) -> None:
    """Run ``work`` (Rust code that does not see Ctrl-C, such as tokenizer training) in a thread while this
    one shows a spinner with the time spent and stays interruptible: Ctrl-C or SIGTERM return at once (the
    thread is left to end with the process), with a line saying ``what`` was dropped (``on_interrupt``)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as err:  # handed to the waiting thread
            failure.append(err)

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    with tqdm(desc=what, bar_format="{desc}: {elapsed}", disable=None) as spinner:
        try:
            while thread.is_alive():
                thread.join(0.25)
                spinner.refresh()
        except KeyboardInterrupt:
            log(f"interrupted while {what}: {on_interrupt}")
            raise
    if failure:
        raise failure[0]


def train_wordpiece(documents: Iterable[str], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a BERT WordPiece tokenizer on the :func:`tokenizer_sample` of ``documents`` that ``cfg``
    bounds (``train_documents``, ``train_chars``), streamed."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        limit_alphabet=LIMIT_ALPHABET,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    sample = tokenizer_sample(documents, cfg.train_documents, cfg.train_chars)
    in_background(lambda: tok.train_from_iterator(sample, trainer=trainer), "training WordPiece tokenizer",
                  "nothing is cached: the next run trains it again")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=cfg.lowercase,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tokenizer_cache_path(cfg: TokenizerConfig, cache_dir: Path, corpus_key: str) -> Path:
    """Where the tokenizer trained for ``cfg`` on the corpus named ``corpus_key`` is cached."""
    payload = json.dumps([corpus_key, cfg.model_dump(mode="json"), LIMIT_ALPHABET], sort_keys=True)
    return Path(cache_dir) / "tokenizers" / hashlib.sha256(payload.encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A short hash of everything that decides token ids: vocab, normalizer, pre-tokenizer."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def _load(path: str | Path, what: str) -> PreTrainedTokenizerFast:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XformerError(
            f"{what} {str(path)!r}: could not load the tokenizer: not a local tokenizer directory, and the HF hub "
            f"is unreachable or has no such tokenizer ({reason[:200]}); pass a local directory written by "
            f"save_pretrained"
        ) from None
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise XformerError(f"{what} {str(path)!r}: {type(tokenizer).__name__} is not a fast (Rust) tokenizer")
    needed = ("cls_token", "sep_token", "pad_token", "mask_token")
    missing = [name for name in needed if getattr(tokenizer, name) is None]
    if missing:
        raise XformerError(f"{what} {str(path)!r}: BERT pretraining needs a tokenizer with {', '.join(missing)}")
    return tokenizer


def build_tokenizer(
    cfg: TokenizerConfig, documents: Iterable[str] | None, cache_dir: Path, corpus_key: str
) -> PreTrainedTokenizerFast:
    """Load ``cfg.path``, or the cached WordPiece tokenizer for this corpus, or train and cache it.

    ``documents`` (a list or a stream) are only read when training, and only as far as the sample
    goes; pass None when the tokenizer is known to be loadable (``cfg.path`` set or
    :func:`tokenizer_cache_path` present).
    """
    if cfg.path is not None:
        return _load(cfg.path, "data.tokenizer.path")
    path = tokenizer_cache_path(cfg, cache_dir, corpus_key)
    if path.is_dir():
        return _load(path, "cached tokenizer")
    if documents is None:
        raise ValueError(f"no cached tokenizer at {path}: documents are needed to train one")

    t0 = time.perf_counter()
    limits = []
    if cfg.train_documents is not None:
        limits.append(f"{cfg.train_documents} documents")
    if cfg.train_chars is not None:
        limits.append(f"{cfg.train_chars:,} characters")
    sample = "at most " + " / ".join(limits) if limits else "every document"
    log(f"training WordPiece tokenizer (vocab {cfg.vocab_size}) on {sample} ...")
    tokenizer = train_wordpiece(documents, cfg)
    with publish_dir(path) as work:
        tokenizer.save_pretrained(str(work))
    log(f"tokenizer: {len(tokenizer)} tokens in {time.perf_counter() - t0:.1f}s -> {path}")
    return tokenizer
