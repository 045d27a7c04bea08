"""Feature values as short text for the console's tables.

Vectors are shown compactly (the first few values and the length), strings with their
control and invisible characters written as escapes, bytes as `b"..."` with every byte that
is not printable ASCII as `\\xNN`. HTML escaping is not done here: the templates autoescape
whatever these return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferstack.core.rowformat import Column, VarColumn
from inferstack.core.types import FeatureType

SHOWN_VECTOR_VALUES = 4
FULL_VECTOR_VALUES = 64  # in the tooltip
SHOWN_TEXT_CHARS = 120


@dataclass(frozen=True)
class Shown:
    """One cell: `text` in the table, `full` in its tooltip when the text is shortened,
    and `value` (numbers only) at full precision for whoever reads the page's data."""

    text: str
    full: str = ""
    value: str = ""


def number(value: Any) -> str:
    """Floats to 6 significant digits; NaN and infinities spelled out; integers exact."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return f"{number:.6g}"
    return str(int(value))


def text(value: str, limit: int = SHOWN_TEXT_CHARS) -> str:
    """A string with control, format and separator characters escaped, cut to `limit`."""
    escaped = "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in value
    )
    return escaped if len(escaped) <= limit else f"{escaped[:limit]}… ({len(value)} chars)"


def raw_bytes(value: bytes, limit: int = SHOWN_TEXT_CHARS) -> str:
    """`b"..."` with printable ASCII as is and every other byte as \\xNN."""
    body = "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in value
    )
    shown = body if len(body) <= limit else f"{body[:limit]}…"
    return f'b"{shown}"' + ("" if len(body) <= limit else f" ({len(value)} B)")


def shown(feature_type: FeatureType, value: Any) -> Shown:
    """One value of a feature as the console shows it."""
    if feature_type.base == "string":
        decoded = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
        full = text(str(decoded), limit=10_000)
        return Shown(f'"{text(str(decoded))}"', full=f'"{full}"')
    if feature_type.base == "bytes":
        return Shown(raw_bytes(bytes(value)), full=raw_bytes(bytes(value), limit=10_000))
    if feature_type.length:
        values = np.asarray(value).tolist()
        head = ", ".join(number(v) for v in values[:SHOWN_VECTOR_VALUES])
        more = len(values) > SHOWN_VECTOR_VALUES
        full = ", ".join(number(v) for v in values[:FULL_VECTOR_VALUES])
        tail = ", …" if len(values) > FULL_VECTOR_VALUES else ""
        return Shown(
            f"[{head}{', …' if more else ''}] \u00d7{len(values)}", full=f"[{full}{tail}]", value=""
        )
    return Shown(number(value), value=repr(float(value)) if _is_float(value) else str(value))


def column_values(feature_type: FeatureType, column: Column) -> list[Shown]:
    """Every row of a column, shown."""
    items: list[Any] = column.to_list() if isinstance(column, VarColumn) else list(column)
    return [shown(feature_type, item) for item in items]


def default_text(feature_type: FeatureType, default: Any) -> str:
    """A feature's declared default (None: the type's zero) as the catalog shows it."""
    if default is None:
        return "zero" if not feature_type.is_variable else "empty"
    if isinstance(default, bytes):
        return raw_bytes(default)
    if isinstance(default, str):
        return f'"{text(default)}"'
    if isinstance(default, list):
        return (
            "["
            + ", ".join(number(v) for v in default[:SHOWN_VECTOR_VALUES])
            + (", …]" if len(default) > SHOWN_VECTOR_VALUES else "]")
        )
    return number(default)


def seconds(value: float | None) -> str:
    """A duration as people write it: 30d, 12h, 45m, 10s, 0.5s; None = never."""
    if value is None:
        return "never"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"


def _is_float(value: Any) -> bool:
    return isinstance(value, float | np.floating)
