"""User-facing errors: raised for bad input, printed as one line by the CLI (exit code 2)."""


class XformerError(Exception):
    """A problem with the user's input (recipe, data, paths) rather than a bug.

    The message is a complete, single-line explanation naming the file, key or value at fault.
    """


def did_you_mean(name: object, valid) -> str:
    """``"; did you mean X?"`` for the valid name closest to ``name``, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f"; did you mean {close[0]}?" if close else ""
