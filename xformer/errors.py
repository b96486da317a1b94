"""User-facing errors: raised for bad input, printed as one line by the CLI (exit code 2)."""

import errno


class XformerError(Exception):
    """A problem with the user's input (recipe, data, paths) rather than a bug.

    The message is a complete, single-line explanation naming the file, key or value at fault.
    """


def did_you_mean(name: object, valid) -> str:
    """``"; did you mean X?"`` for the valid name closest to ``name``, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def os_error_line(err: OSError, doing: str = "") -> str:
    """One line for a failed file operation (disk full, read-only folder, a file where a folder is expected):
    the path(s) and the system's reason, e.g. ``could not write out/x.json: No space left on device``."""
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    reason = err.strerror or (str(err).strip().splitlines() or [type(err).__name__])[0]
    hint = {errno.ENOSPC: "; free some space and run it again", errno.EROFS: "; choose a writable place",
            errno.EACCES: "; choose a place you may write"}
    head = " ".join(part for part in (doing, paths) if part)
    return f"{head}: {reason}{hint.get(err.errno, '')}" if head else f"{reason}{hint.get(err.errno, '')}"
