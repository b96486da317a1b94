"""The on-disk cache of prepared data: where it lives, progress lines, and atomic publishing.

Every cache entry (a trained tokenizer, decoded images, BERT examples) is a directory named by a hash
of what it was made from. It is built in a temporary directory next to its final place and renamed
into place in one step, so a reader sees a complete entry or none, and an interrupted build leaves
no half-written entry behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xformer.data.configs import DataConfig, SplitDataConfig


def default_cache_dir(cfg: DataConfig | SplitDataConfig) -> Path:
    """``data.cache_dir``, else ``$XFORMER_CACHE``, else ``~/.cache/xformer``."""
    return Path(cfg.cache_dir or os.environ.get("XFORMER_CACHE") or "~/.cache/xformer").expanduser()


def log(msg: str) -> None:
    """A ``[data] ...`` progress (or warning) line on stderr."""
    print(f"[data] {msg}", file=sys.stderr, flush=True)


@contextmanager
def publish_dir(target: Path) -> Iterator[Path]:
    """Build a cache directory atomically: ``with publish_dir(target) as work:`` fill ``work`` (an empty
    directory); on leaving the block it is renamed to ``target``.

    If another process published ``target`` first, theirs is kept. On any error the work directory
    is removed and the error re-raised, so ``target`` is never left half-written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        work = tmp / "data"  # made with the umask's mode, unlike mkdtemp's private 0700
        work.mkdir()
        yield work
        try:
            os.rename(work, target)
        except OSError:
            if not target.is_dir():  # not another process publishing it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
