"""Conversions between protobuf messages and columns; shared by the server and the client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core import limits
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.keys import KeyValues
from inferstack.core.rowformat import Column, VarColumn
from inferstack.core.types import FeatureType, TypeParseError
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb


def keys_from_proto(columns: Sequence[pb.KeyColumn]) -> dict[str, KeyValues]:
    limits.check(len(columns), limits.MAX_KEY_COLUMNS, "key columns")
    keys: dict[str, KeyValues] = {}
    for column in columns:
        if column.name in keys:
            raise InvalidArgumentError(f"key '{column.name}' is given twice")
        kinds = [
            values
            for values in (column.int64_values, column.uint64_values, column.string_values)
            if len(values)
        ]
        if len(kinds) > 1:
            raise InvalidArgumentError(f"key '{column.name}' mixes value lists; use one")
        if column.string_values:
            keys[column.name] = list(column.string_values)
        elif column.uint64_values:
            keys[column.name] = np.array(column.uint64_values, dtype=np.uint64)
        else:
            keys[column.name] = np.array(column.int64_values, dtype=np.int64)
    return keys


INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
UINT64_MAX = int(np.iinfo(np.uint64).max)


def keys_to_proto(keys: Mapping[str, KeyValues]) -> list[pb.KeyColumn]:
    columns = []
    for name, values in keys.items():
        column = pb.KeyColumn(name=name)
        fill_key_column(column, name, values)
        columns.append(column)
    return columns


def fill_keys(target: Any, keys: Mapping[str, KeyValues]) -> None:
    """Append one KeyColumn per key to a repeated field (`request.keys`), built in place:
    cheaper than building KeyColumn messages and copying them in."""
    for name, values in keys.items():
        fill_key_column(target.add(name=name), name, values)


def fill_key_column(column: pb.KeyColumn, name: str, values: KeyValues) -> None:
    """Integers go as int64 (uint64 beyond int64), anything else as strings.

    A list of plain ints or of str, the common case, goes straight into the message (which
    checks every value's type and range itself); arrays and mixed lists go through numpy."""
    if not isinstance(values, np.ndarray):
        items = values if isinstance(values, list) else list(values)
        if not items:
            return
        first = type(items[0])
        try:
            if first is int:
                column.int64_values.extend(items)
                return
            if first is str:
                column.string_values.extend(items)
                return
        except (TypeError, ValueError):
            pass  # mixed kinds, or beyond int64 (nothing was appended): sorted out below
        if _all_ints(items):
            _fill_big_ints(column, name, items)
            return
        values = np.asarray(items)
    kind = values.dtype.kind
    if kind == "O" and _all_ints(values):
        _fill_big_ints(column, name, values.tolist())
    elif kind in "iub":
        if kind == "u" and len(values) and int(values.max()) > INT64_MAX:
            column.uint64_values.extend(values.tolist())
        else:
            column.int64_values.extend(values.astype(np.int64).tolist())
    else:
        column.string_values.extend([str(v) for v in values.tolist()])


def _fill_big_ints(column: pb.KeyColumn, name: str, integers: list[int]) -> None:
    low, high = min(integers), max(integers)
    if low >= INT64_MIN and high <= INT64_MAX:
        column.int64_values.extend(integers)
    elif low >= 0 and high <= UINT64_MAX:
        column.uint64_values.extend(integers)
    else:
        bad = low if low < INT64_MIN else high
        raise InvalidArgumentError(f"key '{name}': {bad} does not fit in 64 bits")


def _all_ints(values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


@dataclass(frozen=True, slots=True)
class WireType:
    """What reading a column of one type string needs, worked out once per type string."""

    type: FeatureType
    dtype: np.dtype[Any]  # one row, as np.frombuffer reads it (vectors: a subarray dtype)
    row_bytes: int  # 0 for strings and bytes
    is_string: bool
    is_bool: bool

    @property
    def is_variable(self) -> bool:
        return self.row_bytes == 0


WIRE_TYPES: dict[str, WireType] = {}  # type string -> parsed; read by client/columns.py
_MAXWIRE_TYPES = 4096  # type strings come from the peer: keep the cache bounded


def wire_type(text: str, column: str) -> WireType:
    """The parsed type of a column; an unknown type is INVALID_ARGUMENT naming the column."""
    found = WIRE_TYPES.get(text)
    if found is not None:
        return found
    try:
        feature_type = FeatureType.parse(text)
    except TypeParseError as exc:
        raise InvalidArgumentError(f"column '{column}': {exc}") from exc
    if feature_type.is_variable:
        found = WireType(feature_type, np.dtype(object), 0, feature_type.base == "string", False)
    else:
        scalar = feature_type.scalar_dtype
        dtype = np.dtype((scalar, (feature_type.length,))) if feature_type.length else scalar
        found = WireType(feature_type, dtype, dtype.itemsize, False, feature_type.base == "bool")
    if len(WIRE_TYPES) < _MAXWIRE_TYPES:
        WIRE_TYPES[text] = found
    return found


def fixed_array(name: str, wire: WireType, data: bytes, count: int | None) -> npt.NDArray[Any]:
    """A fixed-width column as a read-only numpy view of its buffer (no copy)."""
    size = wire.row_bytes
    if len(data) % size or (count is not None and len(data) != count * size):
        expected = f"{count} x {size}" if count is not None else f"a multiple of {size}"
        raise InvalidArgumentError(
            f"column '{name}': {len(data)} bytes of {wire.type}, expected {expected}"
        )
    array = np.frombuffer(data, dtype=wire.dtype)
    if wire.is_bool:
        if len(array) and int(array.max()) > 1:
            raise InvalidArgumentError(f"column '{name}': bool values must be 0 or 1")
        return array.view(np.bool_)
    return array


def column_to_proto(name: str, feature_type: FeatureType, values: Column) -> pb.Column:
    if isinstance(values, VarColumn):
        return pb.Column(
            name=name, type=str(feature_type), values=values.data, lengths=values.lengths.tobytes()
        )
    if feature_type.base == "bool":
        values = values.view(np.uint8)
    return pb.Column(
        name=name,
        type=str(feature_type),
        values=np.ascontiguousarray(values, dtype=feature_type.scalar_dtype).tobytes(),
    )


def column_from_proto(column: pb.Column, count: int | None = None) -> tuple[FeatureType, Column]:
    """Decode one column; a buffer that does not fit its type is INVALID_ARGUMENT naming it."""
    wire = wire_type(column.type, column.name)
    if wire.is_variable:
        if len(column.lengths) % 4:
            raise InvalidArgumentError(f"column '{column.name}': lengths is not a <u4 buffer")
        lengths = np.frombuffer(column.lengths, dtype="<u4")
        if int(lengths.sum(dtype=np.int64)) != len(column.values):
            raise InvalidArgumentError(
                f"column '{column.name}': lengths do not add up to the values"
            )
        var = VarColumn(lengths, column.values)
        if wire.is_string:
            _check_utf8(column.name, var)
        return wire.type, var
    return wire.type, fixed_array(column.name, wire, column.values, count)


def _check_utf8(name: str, column: VarColumn) -> None:
    if column.data.isascii():  # every slice of ASCII is valid UTF-8
        return
    try:
        for value in column.to_list():
            value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"column '{name}': a value is not valid UTF-8") from exc


def to_numpy(feature_type: FeatureType, values: Column) -> npt.NDArray[Any]:
    """A column as users want it: strings as str objects, bytes as bytes objects."""
    if not isinstance(values, VarColumn):
        return values
    return var_objects(values, feature_type.base == "string")


def var_objects(values: VarColumn, text: bool) -> npt.NDArray[np.object_]:
    """Strings (text) or bytes as an object array, in one pass over the buffer: ASCII text,
    the common case, is decoded once and sliced."""
    ends = np.cumsum(values.lengths, dtype=np.int64)
    bounds = zip((ends - values.lengths).tolist(), ends.tolist(), strict=True)
    data = values.data
    items: list[Any]
    if not text:
        items = [data[start:end] for start, end in bounds]
    elif data.isascii():
        decoded = data.decode("ascii")
        items = [decoded[start:end] for start, end in bounds]
    else:
        items = [data[start:end].decode("utf-8") for start, end in bounds]
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array
