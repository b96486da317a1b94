"""Class labels as read from a source, checked before anything is trained on them.

A class label is an integer or a string. Floats are accepted only when they are whole numbers
(``1.0`` is class ``1``): truncating ``0.7`` to class ``0`` would be a silent wrong result.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from xformer.errors import XformerError

NEEDS = "classification needs integer or string class labels"


def class_label(value, where: str) -> int | str:
    """One raw label checked: an int (or bool) or a non-blank string as it is, a whole-number float as
    an int; anything else is an error naming ``where`` (the file and row) and the value."""
    if isinstance(value, Integral):  # int, bool, numpy integers
        return value
    if isinstance(value, str):
        if not value.strip():
            raise XformerError(f"{where}: label {value!r} is blank; {NEEDS}")
        return value
    if isinstance(value, Real):
        if not math.isfinite(value) or value != int(value):
            raise XformerError(f"{where}: label {value!r} is not a whole number; {NEEDS}")
        return int(value)
    if value is None:
        raise XformerError(f"{where}: no label")
    raise XformerError(f"{where}: label {value!r} is a {type(value).__name__}; {NEEDS}")


def class_labels(values: list, where: str, rows: list[int] | None = None) -> list[int | str]:
    """Every label checked by :func:`class_label` and all of one kind: numbers and strings mixed are an
    error. ``where`` names the source; ``rows`` are the row numbers of ``values`` in it (default 0, 1, ...)."""
    rows = range(len(values)) if rows is None else rows
    labels = [class_label(v, f"{where} row {i}") for i, v in zip(rows, values)]
    number = next((y for y in labels if not isinstance(y, str)), None)
    string = next((y for y in labels if isinstance(y, str)), None)
    if number is not None and string is not None:
        raise XformerError(f"{where}: labels mix numbers ({number!r}) and strings ({string!r}); {NEEDS}")
    return labels


def require_two_classes(labels: list, where: str) -> None:
    """Raise when every training label is the same value: nothing to tell apart."""
    if labels and all(y == labels[0] for y in labels):
        raise XformerError(
            f"{where}: all {len(labels)} training labels are {labels[0]!r}: classification needs at least 2 classes"
        )
