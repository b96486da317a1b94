"""The on-disk cache of prepared data: where it lives, progress lines, and atomic publishing.

Every cache entry (a trained tokenizer, decoded images, BERT examples) is a directory named by a hash
of what it was made from. It is built in a temporary directory next to its final place and renamed
into place in one step, so a reader sees a complete entry or none, and an interrupted build leaves
no half-written entry behind.

An entry can still be damaged afterwards (a file deleted, a disk that filled up while it was copied, a
truncated file). So every entry records the size of each of its files when it is published (``sizes.json``,
:func:`record_sizes`), and is checked against them whenever it is opened (:func:`open_entry`): a damaged
entry is removed, with a warning, and built again; where that is not possible the error names the entry
and the command that clears it (:class:`DamagedCacheError`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xformer.data.configs import DataConfig, SplitDataConfig
from xformer.errors import XformerError

SIZES = "sizes.json"  # in every published entry: {relative path: size in bytes} of each of its files


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
        record_sizes(work)
        try:
            os.rename(work, target)
        except OSError:
            if not target.is_dir():  # not another process publishing it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- checking entries


class DamagedCacheError(XformerError):
    """A cache entry whose files are not those it was published with; the message names the entry and the
    command that clears it."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(
            f"cache entry {path} is damaged: {reason}; delete it (rm -rf {shlex.quote(str(path))}) and run again "
            f"to rebuild it"
        )


def file_sizes(folder: Path) -> dict[str, int]:
    """{path relative to ``folder``: size in bytes} of every file under ``folder`` but :data:`SIZES`, sorted."""
    files = (f for f in folder.rglob("*") if f.is_file() and f.relative_to(folder).as_posix() != SIZES)
    return {f.relative_to(folder).as_posix(): f.stat().st_size for f in sorted(files)}


def record_sizes(work: Path) -> None:
    """Write :data:`SIZES` into ``work``, an entry about to be published: the size of each of its files."""
    (work / SIZES).write_text(json.dumps(file_sizes(work), indent=1))


def size_mismatch(folder: Path, sizes: dict[str, int]) -> str | None:
    """The first file of ``sizes`` (relative to ``folder``) that is missing or of another size, said in a few
    words; None when all are as recorded."""
    for name, size in sizes.items():
        try:
            actual = (folder / name).stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} is {actual:,} bytes, {size:,} when it was written"
    return None


def entry_damage(path: Path) -> str | None:
    """What is wrong with the published cache entry ``path`` (a folder), said in a few words, or None.

    Checked against :data:`SIZES`; an entry published before sizes were recorded has none and passes (its
    readers still refuse unreadable files with :class:`DamagedCacheError`)."""
    try:
        sizes = json.loads((path / SIZES).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return f"its {SIZES} is unreadable ({err})"
    if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
        return f"its {SIZES} is not a map of file sizes"
    return size_mismatch(path, sizes)


def discard_entry(path: Path, reason: str) -> None:
    """Remove the damaged cache entry ``path`` (``reason``: what is wrong with it), moving it aside first so
    that no reader sees it half-deleted; a :class:`DamagedCacheError` if it cannot be moved."""
    trash = path.with_name(f".{path.name}.damaged.{os.getpid()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return  # another process removed it first
    except OSError as err:
        raise DamagedCacheError(path, f"{reason}, and it could not be removed ({err.strerror})") from None
    shutil.rmtree(trash, ignore_errors=True)


def open_entry(path: Path, salvage: Path | None = None) -> bool:
    """Whether a whole cache entry is at ``path``, for its builder to call before using it.

    A damaged entry (:func:`entry_damage`) is removed with a warning and False returned, so the caller
    builds it again; with ``salvage`` (the builder's work folder, if none is there) it is moved there
    instead, for a builder that keeps the parts still whole. Something at ``path`` that is not a folder is
    a :class:`DamagedCacheError` (it is left alone: nothing this cache wrote)."""
    if not path.exists():
        return False
    if not path.is_dir():
        raise DamagedCacheError(path, "it is a file, not a folder")
    reason = entry_damage(path)
    if reason is None:
        return True
    log(f"warning: cache entry {path} is damaged ({reason}): building it again")
    if salvage is not None and not salvage.exists():
        try:
            os.rename(path, salvage)
            return False
        except FileNotFoundError:
            return False  # another process removed it first
        except OSError:
            pass  # removed below
    discard_entry(path, reason)
    return False
