"""Choosing a column by config key, and checking that a text column holds text: the same rules and the same
one-line messages for every format."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from xformer.errors import XformerError


def pick_column(
    names: list[str], configured: str | None, candidates: Iterable[str], option: str, where: str,
    field_name: str = "column",
) -> str:
    """The column ``configured`` by ``data.<option>`` (an error if absent), else the first of ``candidates``
    that ``names`` holds. ``where`` names the file or dataset; ``field_name`` is "key" for JSON records."""
    plural = "keys" if field_name == "key" else "columns"
    if configured is not None:
        if configured not in names:
            raise XformerError(
                f"{where}: no {field_name} {configured!r} ({plural}: {', '.join(names)}); set data.{option}"
            )
        found = configured
    else:
        found = next((c for c in candidates if c in names), None)
        if found is None:
            what = option.removesuffix("_column")
            raise XformerError(
                f"{where}: no {what} {field_name} found ({plural}: {', '.join(names)}); set data.{option}"
            )
    if names.count(found) > 1:
        raise XformerError(f"{where}: {names.count(found)} {plural} are named {found!r}; rename all but one")
    return found


def not_text(column: str, where: str, type_name: str, option: str = "text_column") -> XformerError:
    """The one-line error for a text column holding ``type_name`` values."""
    return XformerError(f"column {column!r} of {where} holds {type_name} values, not text; set data.{option}")


def check_text_type(dtype: pa.DataType, column: str, where: str, option: str = "text_column") -> None:
    """Raise unless the Arrow ``dtype`` of ``column`` holds strings (or only nulls)."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_null(dtype)
            or pa.types.is_string_view(dtype)):
        raise not_text(column, where, str(dtype), option)


def check_text_values(values: list, column: str, where: str, option: str = "text_column") -> None:
    """Raise unless every value of ``column`` is a string or None (JSON records, hub datasets)."""
    bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        raise not_text(column, where, type(bad).__name__, option)
