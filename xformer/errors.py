"""User-facing errors: raised for bad input, printed as one line by the CLI (exit code 2)."""


class XformerError(Exception):
    """A problem with the user's input (recipe, data, paths) rather than a bug.

    The message is a complete, single-line explanation naming the file, key or value at fault.
    """
