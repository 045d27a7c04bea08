"""Entity keys: checking request values against the key types and encoding them to bytes.

A stored key is the concatenation of its parts: integers as 8 bytes big-endian (signed
ones offset by 2**63 so byte order is numeric order), strings as a 4-byte big-endian
length then UTF-8, except a string that ends a key of several parts: it runs to the end, so
it needs no length. The same bytes address a row in every storage and cache adapter.

The checks are here; the per-row encoding is one call into the compiled `inferstack_native`
(native/src/keys.rs) for the whole batch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

import inferstack_native
from inferstack.core.definitions import Entity
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.types import FeatureType

KeyValues = npt.NDArray[Any] | Sequence[Any]
# An integer as text: an optional minus sign and ASCII digits, at most 20 (beyond that no
# 64-bit value). Python's int() also takes "4_2", " +42\n" and other scripts' digits ("٤٢"),
# which would all name user 42.
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")


def parse_integer(text: str) -> int | None:
    """The integer `text` spells in the one form we accept (see _INTEGER_TEXT), else None."""
    return int(text) if _INTEGER_TEXT.fullmatch(text) else None


def coerce_values(
    label: str, key_type: FeatureType, values: KeyValues
) -> npt.NDArray[Any] | list[str]:
    """Values of a key type (an integer type or string) checked and converted; errors start
    with `label`, e.g. "key 'user.user_id'" or "context 'user_id'"."""
    if (
        isinstance(values, np.ndarray)
        and values.dtype.kind in "iu"
        and values.dtype == key_type.scalar_dtype
    ):
        return values  # already of the key's integer type (the gRPC path): nothing to check
    if key_type.base == "string":
        if isinstance(values, np.ndarray) and values.dtype.kind in "US":
            values = values.tolist()
        if not set(map(type, values)) <= {str}:
            bad = next(v for v in values if not isinstance(v, str))
            raise InvalidArgumentError(f"{label} is a string, got {type(bad).__name__} {bad!r}")
        return list(values)
    array = values if isinstance(values, np.ndarray) else _integer_array(label, values)
    if array.dtype.kind in "US":  # integers sent as text (CLI, JSON): parse strictly
        array = _integer_array(label, [_parse_int(label, v) for v in array.tolist()])
    if array.dtype.kind not in "iu" and len(array):
        raise InvalidArgumentError(f"{label} is {key_type}, got values of type {array.dtype}")
    info = np.iinfo(key_type.scalar_dtype)
    fits = np.can_cast(array.dtype, key_type.scalar_dtype, "safe")
    if len(array) and not fits and (array.min() < info.min or array.max() > info.max):
        raise InvalidArgumentError(f"{label} has values outside the range of {key_type}")
    return array.astype(key_type.scalar_dtype, copy=False)


def _parse_int(label: str, value: Any) -> int:
    if not isinstance(value, str):
        return value  # type: ignore[no-any-return]  # checked by _integer_array
    parsed = parse_integer(value)
    if parsed is None:
        shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} chars)"
        raise InvalidArgumentError(
            f"{label} is an integer, got {shown} (ASCII digits, an optional minus sign)"
        )
    return parsed


def _integer_array(label: str, values: Sequence[Any]) -> npt.NDArray[Any]:
    if not set(map(type, values)) <= {int}:  # text to parse, numpy integers or a mistake
        values = [_parse_int(label, v) if isinstance(v, str) else v for v in values]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise InvalidArgumentError(
                    f"{label} is an integer, got {type(value).__name__} {value!r}"
                )
    try:
        return np.asarray(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)
    except OverflowError:
        pass
    try:
        return np.asarray(values, dtype=np.uint64)
    except OverflowError:  # negative and >= 2**63 together: no integer type holds both
        raise InvalidArgumentError(
            f"{label} has values outside the range of every integer key type"
        ) from None


def encode_keys(entity: Entity, columns: dict[str, KeyValues]) -> list[bytes]:
    """Encode one key per row from columns named after the entity's keys."""
    names = entity.key_names
    missing = [name for name in names if name not in columns]
    if missing:
        raise InvalidArgumentError(
            f"entity '{entity.name}' needs key {', '.join(repr(m) for m in missing)} "
            f"(keys: {', '.join(names)})"
        )
    extra = [name for name in columns if name not in names]
    if extra:
        raise InvalidArgumentError(
            f"entity '{entity.name}' has no key {extra[0]!r} (keys: {', '.join(names)})"
        )
    parts = [
        coerce_values(f"key '{entity.name}.{key.name}'", key.type, columns[key.name])
        for key in entity.keys
    ]
    counts = {len(part) for part in parts}
    if len(counts) > 1:
        raise InvalidArgumentError(
            f"key columns of entity '{entity.name}' have different lengths: "
            + ", ".join(f"{n}={len(p)}" for n, p in zip(names, parts, strict=True))
        )
    return inferstack_native.encode_keys([_native_part(part) for part in parts])


def _native_part(part: npt.NDArray[Any] | list[str]) -> npt.NDArray[Any] | list[str]:
    """Strings as they are; integers widened to the 64-bit type of their signedness."""
    if isinstance(part, list):
        return part
    return part.astype(np.int64 if part.dtype.kind == "i" else np.uint64, copy=False)
