"""Image-caption pairs for contrastive training: images decoded once and cached (as for classification),
captions tokenized once into fixed-length id arrays.

A source is Parquet files (an image column and a caption column holding a string or a list of strings
per image, e.g. ``../shared/data/flickr8k/train.parquet``: ``image``, ``captions``) or an HF dataset name.
The tokenizer is an HF tokenizer (``data.tokenizer.path``, or the text tower's own when it starts from a
BERT), or a WordPiece tokenizer trained on the training captions and cached.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xformer.data.configs import CaptionDataConfig, ImageDataConfig
from xformer.data.cache import default_cache_dir, log
from xformer.data.image.images import load_source, resolve_image_source, split_off
from xformer.data.sources import Source, at_split, open_readers
from xformer.data.text.tokenizer import build_tokenizer
from xformer.errors import XformerError

CAPTION_COLUMNS = ("captions", "caption", "sentences", "text", "sentence")


class Tokenize:
    """Texts -> (input_ids, attention_mask), each (N, max_len) int64: ``[CLS] text [SEP]``, truncated, padded."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_len, padding="max_length",
                             return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()


class CaptionDataset:
    """Images (N, C, H, W) uint8 and up to K tokenized captions each: ids (N, K, L), lengths (N, K)
    (0 for a missing caption), plus the caption strings."""

    def __init__(self, images: torch.Tensor, captions: np.ndarray, tokenize: Tokenize):
        self.images = images
        self.captions = captions  # (N, K) str, "" where missing
        flat = [c for row in captions for c in row]
        ids, mask = tokenize([c or "" for c in flat])
        N, K = captions.shape
        self.input_ids = ids.view(N, K, -1)  # (N, K, L)
        self.lengths = torch.where(torch.from_numpy(captions != ""), mask.sum(1).view(N, K), 0)  # (N, K)
        self.counts = (self.lengths > 0).sum(1)  # (N,) captions per image
        if int(self.counts.min()) == 0:
            raise XformerError(f"image {int(self.counts.argmin())} has no caption")

    def __len__(self) -> int:
        return len(self.images)

    def seq_len(self, indices: np.ndarray) -> int:
        """The caption length of every batch: L (captions are padded once, when tokenized)."""
        return self.input_ids.size(-1)

    def batch(self, indices: np.ndarray, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """``pixel_values`` (B, C, H, W) uint8, ``input_ids`` (B, K, L), ``lengths`` (B, K), ``counts`` (B,);
        ``seq_len``, the length shared with a larger batch, can only be L."""
        if seq_len not in (None, self.seq_len(indices)):
            raise ValueError(f"captions are {self.seq_len(indices)} tokens long, not {seq_len}")
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return {"pixel_values": self.images[idx], "input_ids": self.input_ids[idx],
                "lengths": self.lengths[idx], "counts": self.counts[idx]}

    def pairs(self) -> tuple[list[str], torch.Tensor]:
        """Every caption, and the index of its image (M,): the retrieval set."""
        texts, owners = [], []
        for i, row in enumerate(self.captions):
            for c in row:
                if c:
                    texts.append(str(c))
                    owners.append(i)
        return texts, torch.tensor(owners)


@dataclass
class CaptionData:
    train: CaptionDataset
    val: CaptionDataset | None
    tokenizer: object
    tokenize: Tokenize


def _caption_column(src: Source, cfg: CaptionDataConfig) -> str:
    """The configured caption column, else the first of CAPTION_COLUMNS that the source's first file (or
    its hub split) has; an image folder has none."""
    return open_readers(src)[0].pick(cfg.caption_column, CAPTION_COLUMNS, "caption_column")


def load_pairs(source, split: str, key: str, cfg: CaptionDataConfig, root: Path) -> tuple[torch.Tensor, np.ndarray]:
    """Images (N, 3, H, W) uint8 and captions (N, K) str of a source ("" where a row has fewer than K).
    Blank captions count as missing; images left with none are dropped, with a warning."""
    src = resolve_image_source(source, key, split)
    image_cfg = ImageDataConfig(source=source, split=split, image_column=cfg.image_column,
                                label_column=_caption_column(src, cfg), image_size=cfg.image_size,
                                max_images=cfg.max_images)
    images, raw, _ = load_source(src, image_cfg, root, captions=True)
    if raw.dtype.kind != "U":
        raise XformerError(f"{key}: column {image_cfg.label_column!r} holds {raw.dtype} values, not caption strings")
    captions = raw.reshape(len(raw), -1)
    captions = np.where(np.char.strip(captions) == "", "", captions)  # blank: missing
    keep = (captions != "").any(axis=1)  # (N,) images with a caption
    if not keep.any():
        raise XformerError(f"{key} {src.described!r}: no image has a caption (all {len(keep)} are empty or blank)")
    if not keep.all():
        log(f"{key} {src.described}: dropped {int((~keep).sum())} of {len(keep)} images with no caption "
            f"(empty or whitespace)")
        images, captions = images[torch.from_numpy(keep)], captions[keep]
    return images, captions


def load_caption_data(cfg: CaptionDataConfig, tokenizer=None, cache_dir: Path | None = None) -> CaptionData:
    """Train and validation pairs for ``cfg``. Without ``val_source`` (or ``val_split`` for an HF name),
    ``val_size`` images are held out of the training source (seeded). ``tokenizer``: use this one (e.g. the
    text tower's); else ``cfg.tokenizer`` decides (trained on the training captions when it names none)."""
    if cfg.source is None:
        raise XformerError("data.source is required: Parquet files/globs or an HF dataset name")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(cfg)
    images, captions = load_pairs(cfg.source, cfg.split, "data.source", cfg, root)
    val = None
    if cfg.val_source is not None or cfg.val_split is not None:
        split = cfg.val_split or "validation"
        key = "data.val_source" if cfg.val_source is not None else "data.val_split"
        val_source = cfg.val_source if cfg.val_source is not None else at_split(cfg.source, split, key)
        val = load_pairs(val_source, split, key, cfg, root)
        if val[0].shape[1:] != images.shape[1:]:
            raise XformerError(f"{key}: images are {tuple(val[0].shape[1:])} but training images are "
                               f"{tuple(images.shape[1:])}; set data.image_size")
    elif cfg.val_size:
        train_rows, val_rows = split_off(len(images), cfg.val_size, cfg.seed, "data.source")
        val = images[torch.from_numpy(val_rows)], captions[val_rows]
        images, captions = images[torch.from_numpy(train_rows)], captions[train_rows]
    if tokenizer is None:
        texts = [str(c) for c in captions.reshape(-1) if c]
        key = "captions-" + hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        needs_docs = cfg.tokenizer.path is None
        tokenizer = build_tokenizer(cfg.tokenizer, texts if needs_docs else None, root, key)
    tokenize = Tokenize(tokenizer, cfg.max_text_len)
    train = CaptionDataset(images, captions, tokenize)
    val_set = CaptionDataset(val[0], val[1], tokenize) if val is not None else None
    log(f"caption pairs: train {len(train)} images / {int(train.counts.sum())} captions"
        + (f", val {len(val_set)} / {int(val_set.counts.sum())}" if val_set is not None else "")
        + f"; vocabulary {len(tokenizer)}")
    return CaptionData(train, val_set, tokenizer, tokenize)
