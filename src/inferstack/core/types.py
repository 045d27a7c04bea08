"""Feature and key types, and how each maps onto numpy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Scalar numeric types and their little-endian numpy dtypes.
NUMERIC_DTYPES: dict[str, str] = {
    "bool": "u1",  # stored as one byte, 0 or 1
    "int8": "<i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "uint8": "<u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "float16": "<f2",
    "float32": "<f4",
    "float64": "<f8",
}
VARIABLE_TYPES = ("string", "bytes")
KEY_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "string")
MAX_VECTOR_LENGTH = 65_536

_TYPE_RE = re.compile(r"^\s*([a-z0-9]+)\s*(?:\[\s*(\d+)\s*\])?\s*$")


class TypeParseError(ValueError):
    """A type string that does not name a supported type."""


@dataclass(frozen=True, slots=True)
class FeatureType:
    """A feature type: a scalar, a variable-length string/bytes, or a fixed-length vector."""

    base: str
    length: int = 0  # 0 = scalar; >0 = fixed-length vector of `base`

    @classmethod
    def parse(cls, text: str) -> FeatureType:
        match = _TYPE_RE.match(text)
        if match is None:
            raise TypeParseError(
                f"'{text}' is not a type (expected e.g. float32, string, float32[16])"
            )
        base, length_text = match.group(1), match.group(2)
        if base not in NUMERIC_DTYPES and base not in VARIABLE_TYPES:
            known = ", ".join([*NUMERIC_DTYPES, *VARIABLE_TYPES])
            raise TypeParseError(f"unknown type '{base}' (known: {known})")
        if length_text is None:
            return cls(base)
        if base in VARIABLE_TYPES or base == "bool":
            raise TypeParseError(f"vectors of {base} are not supported, only of numeric types")
        length = int(length_text)
        if not 1 <= length <= MAX_VECTOR_LENGTH:
            raise TypeParseError(f"vector length must be 1..{MAX_VECTOR_LENGTH}, got {length}")
        return cls(base, length)

    def __str__(self) -> str:
        return f"{self.base}[{self.length}]" if self.length else self.base

    @property
    def is_variable(self) -> bool:
        return self.base in VARIABLE_TYPES

    @property
    def scalar_dtype(self) -> np.dtype[Any]:
        """The dtype of one element (uint8 for bool, object for string/bytes)."""
        if self.is_variable:
            return np.dtype(object)
        return np.dtype(NUMERIC_DTYPES[self.base])

    @property
    def storage_dtype(self) -> np.dtype[Any]:
        """The dtype of the whole value inside a fixed-width row section."""
        if self.is_variable:
            raise TypeError(f"{self} has no fixed width")
        if self.length:
            return np.dtype((NUMERIC_DTYPES[self.base], (self.length,)))
        return np.dtype(NUMERIC_DTYPES[self.base])

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The dtype users get back: bool as numpy bool, strings and bytes as object."""
        if self.base == "bool":
            return np.dtype(np.bool_)
        return self.scalar_dtype

    def coerce_default(self, value: Any) -> Any:
        """Check a default value against the type and return it in canonical form."""
        if value is None:
            return self.zero()
        if self.base == "string":
            if not isinstance(value, str):
                raise ValueError(f"default for {self} must be a string, got {value!r}")
            return value
        if self.base == "bytes":
            if isinstance(value, str):
                return value.encode()
            if not isinstance(value, bytes):
                raise ValueError(f"default for {self} must be bytes, got {value!r}")
            return value
        if self.base == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"default for bool must be true or false, got {value!r}")
            return value
        if isinstance(value, bool):
            raise ValueError(f"default for {self} must be a number, got {value!r}")
        if self.length:
            values = value if isinstance(value, list) else [value] * self.length
            if len(values) != self.length:
                raise ValueError(
                    f"default for {self} must have {self.length} values, got {len(values)}"
                )
            return [self._coerce_number(v) for v in values]
        return self._coerce_number(value)

    def _coerce_number(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"default for {self} must be a number, got {value!r}")
        if self.base.startswith("float"):
            return float(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"default for {self} must be a whole number, got {value!r}")
        info = np.iinfo(NUMERIC_DTYPES[self.base])
        if not info.min <= int(value) <= info.max:
            raise ValueError(f"default {value} is outside the range of {self}")
        return int(value)

    def zero(self) -> Any:
        if self.base == "string":
            return ""
        if self.base == "bytes":
            return b""
        if self.base == "bool":
            return False
        zero: int | float = 0.0 if self.base.startswith("float") else 0
        return [zero] * self.length if self.length else zero
