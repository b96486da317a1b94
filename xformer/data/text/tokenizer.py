"""The tokenizer: an existing HF tokenizer, or a BERT WordPiece tokenizer trained on the corpus.

A trained tokenizer is cached under ``CACHE/tokenizers/<hash>`` (keyed by the corpus and the
tokenizer config) as a ``save_pretrained`` directory, so ``AutoTokenizer.from_pretrained`` (or
``data.tokenizer.path``) loads it like any other. It is trained on a bounded sample streamed from the
corpus (:func:`tokenizer_sample`): the first ``train_documents`` documents, at most ``train_chars``
characters in all, so the corpus is never held in memory. Training runs in a background thread
(:func:`in_background`) so that Ctrl-C stops it at once.

Training is deterministic: the same sample and settings give byte-identical tokenizer files, whatever
the process, its hash seed or ``TOKENIZERS_PARALLELISM``. The vocabulary is learnt here
(:func:`learn_wordpiece_vocab`), not by ``tokenizers``' ``WordPieceTrainer``: that one numbers the
``##c`` pieces and cuts the alphabet in the iteration order of a randomly seeded hash map, and breaks ties
between equally frequent merges by those numbers, so two runs on one corpus gave different vocabularies.
The words are still cut by the tokenizer's own normalizer and pre-tokenizer (:func:`count_words`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

from xformer.data.configs import TokenizerConfig
from xformer.data.cache import DamagedCacheError, discard_entry, log, open_entry, publish_dir
from xformer.errors import XformerError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # in this order: [PAD] = 0
LIMIT_ALPHABET = 1000  # keep the 1000 most frequent characters; rarer ones become [UNK]
PREFIX = "##"  # WordPiece's mark of a piece that continues a word
TRAINER = "wordpiece-2"  # in the cache key: 2 is the deterministic trainer; 1 (tokenizers') was not


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
    """Run ``work`` (a long computation such as tokenizer training, whose native calls hold off Ctrl-C) in a
    thread while this one shows a spinner with the time spent and stays interruptible: Ctrl-C or SIGTERM
    return at once (the thread is left to end with the process), with a line saying ``what`` was dropped
    (``on_interrupt``)."""
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


def count_words(texts: Iterable[str], tok: Tokenizer, chunk_chars: int = 1 << 14) -> Counter:
    """How often each word occurs in ``texts`` as ``tok``'s normalizer and pre-tokenizer cut them, i.e. the
    words the trained tokenizer will see.

    Texts are normalized a chunk of about ``chunk_chars`` characters at a time (joined by newlines, which
    BERT's normalizer makes spaces; much larger chunks normalize slower), and every distinct space-separated
    piece is pre-tokenized once with its count: the pre-tokenizer cuts each piece on its own, and calling it
    on whole texts is several times slower."""
    pieces: Counter = Counter()
    chunk: list[str] = []
    size = 0

    def flush() -> None:
        pieces.update(tok.normalizer.normalize_str("\n".join(chunk)).split())
        chunk.clear()

    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= chunk_chars:
            flush()
            size = 0
    if chunk:
        flush()
    words: Counter = Counter()
    for piece, count in pieces.items():
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(piece):
            words[word] += count
    return words


def _initial_vocab(word_counts: Counter, special_tokens: list[str], limit_alphabet: int) -> tuple[list[str], set]:
    """The vocabulary before any merge: ``special_tokens``; the ``limit_alphabet`` most frequent characters
    (ties by code point), sorted; then ``##c`` for each of them seen inside a word, sorted. Returns it and
    the alphabet (characters outside it are dropped from words, so they become [UNK])."""
    chars: Counter = Counter()
    for word, count in word_counts.items():
        for ch in word:
            chars[ch] += count
    alphabet = set(sorted(chars, key=lambda ch: (-chars[ch], ch))[:limit_alphabet])
    inner = {ch for word in word_counts for ch in word[1:] if ch in alphabet}
    vocab = list(dict.fromkeys([*special_tokens, *sorted(alphabet), *(PREFIX + ch for ch in sorted(inner))]))
    return vocab, alphabet


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int] | None:
    """``word`` with every (a, b) replaced by ``new``, left to right without overlap; None if it has none."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out if len(out) < n else None


def learn_wordpiece_vocab(
    word_counts: Counter, vocab_size: int, special_tokens: list[str], limit_alphabet: int = LIMIT_ALPHABET
) -> list[str]:
    """A WordPiece vocabulary (token i is entry i) learnt from ``word_counts`` as BPE with a ``##`` prefix
    learns it (what ``tokenizers``' WordPieceTrainer does): from :func:`_initial_vocab`, merge the most
    frequent adjacent pair of pieces into a new token until there are ``vocab_size`` tokens or no pair left.

    Deterministic: words are taken in sorted order and equally frequent pairs in order of their token ids,
    which are themselves fixed by the order above, so nothing depends on hashing or threads."""
    vocab, alphabet = _initial_vocab(word_counts, special_tokens, limit_alphabet)
    ids = {token: i for i, token in enumerate(vocab)}
    words, counts = [], []
    for word in sorted(word_counts):
        pieces = [ids[ch if k == 0 else PREFIX + ch] for k, ch in enumerate(word) if ch in alphabet]
        if len(pieces) > 1:
            words.append(pieces)
            counts.append(word_counts[word])
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}  # the words a pair is (or was) in
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + counts[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]  # most frequent first, then lowest ids
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        count = pair_counts[pair]
        if count <= 0:
            continue
        if count != -neg:  # stale: the pair's count dropped since this entry was pushed
            heapq.heappush(heap, (-count, pair))
            continue
        token = vocab[pair[0]] + vocab[pair[1]].removeprefix(PREFIX)
        if token not in ids:  # a merge may rebuild an existing token from other pieces
            ids[token] = len(vocab)
            vocab.append(token)
        new = ids[token]
        grown = set()
        for i in where.pop(pair):  # in any order: the sums and sets below do not depend on it
            word, count = words[i], counts[i]
            merged = _merge_word(word, *pair, new)
            if merged is None:
                continue
            for old in zip(word, word[1:]):
                pair_counts[old] -= count
            for fresh in zip(merged, merged[1:]):
                if new in fresh:  # only pairs with the new token are new to this word, or can grow
                    pair_counts[fresh] = pair_counts.get(fresh, 0) + count
                    where.setdefault(fresh, set()).add(i)
                    grown.add(fresh)
                else:
                    pair_counts[fresh] += count
            words[i] = merged
        for fresh in sorted(grown):
            heapq.heappush(heap, (-pair_counts[fresh], fresh))
    return vocab


def _wordpiece_tokenizer(vocab: list[str], lowercase: bool) -> Tokenizer:
    """A BERT WordPiece backend tokenizer for ``vocab``: normalizer, pre-tokenizer, decoder, special tokens
    and the ``[CLS] A [SEP] B [SEP]`` template."""
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]",
                                     continuing_subword_prefix=PREFIX))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=PREFIX)
    tok.add_special_tokens(SPECIAL_TOKENS)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def train_wordpiece(documents: Iterable[str], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a BERT WordPiece tokenizer on the :func:`tokenizer_sample` of ``documents`` that ``cfg``
    bounds (``train_documents``, ``train_chars``), streamed; deterministic (see the module's note)."""
    sample = tokenizer_sample(documents, cfg.train_documents, cfg.train_chars)
    vocab: list[list[str]] = []

    def train() -> None:
        words = count_words(sample, _wordpiece_tokenizer(SPECIAL_TOKENS, cfg.lowercase))
        vocab.append(learn_wordpiece_vocab(words, cfg.vocab_size, SPECIAL_TOKENS))

    in_background(train, "training WordPiece tokenizer", "nothing is cached: the next run trains it again")
    return BertTokenizerFast(
        tokenizer_object=_wordpiece_tokenizer(vocab[0], cfg.lowercase),
        do_lower_case=cfg.lowercase,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tokenizer_cache_path(cfg: TokenizerConfig, cache_dir: Path, corpus_key: str) -> Path:
    """Where the tokenizer trained for ``cfg`` on the corpus named ``corpus_key`` is cached."""
    payload = json.dumps([corpus_key, cfg.model_dump(mode="json"), LIMIT_ALPHABET, TRAINER], sort_keys=True)
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
    if open_entry(path):
        try:
            return _load(path, "cached tokenizer")
        except XformerError as err:  # its files are as published, yet unreadable: damaged before they were
            if documents is None:
                raise DamagedCacheError(path, f"the tokenizer cannot be loaded ({err})") from None
            log(f"warning: cache entry {path} is damaged (the tokenizer cannot be loaded): training it again")
            discard_entry(path, "the tokenizer cannot be loaded")
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
