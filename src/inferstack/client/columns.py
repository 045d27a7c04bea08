"""Response columns as numpy arrays, decoded as cheaply as the wire allows.

Fixed-width columns become read-only numpy views of the response's buffers (no copy; vectors
get their 2-D shape from the dtype). String and bytes columns are kept as lengths plus data
and turned into arrays of str/bytes objects only when first read, in one pass: a caller that
reads only numeric features never pays for the strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.rowformat import VarColumn
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.wire.columns import WIRE_TYPES, fixed_array, var_objects, wire_type

Array = npt.NDArray[Any]


class _Undecoded:
    """A string or bytes column as it came: `count` <u4 lengths and the values' bytes."""

    __slots__ = ("data", "lengths", "name", "text")

    def __init__(self, name: str, lengths: bytes, data: bytes, text: bool) -> None:
        self.name = name
        self.lengths = lengths
        self.data = data
        self.text = text

    def decode(self) -> npt.NDArray[np.object_]:
        lengths = np.frombuffer(self.lengths, dtype="<u4")
        if int(lengths.sum(dtype=np.int64)) != len(self.data):
            raise InvalidArgumentError(f"column '{self.name}': lengths do not add up to the values")
        try:
            return var_objects(VarColumn(lengths, self.data), self.text)
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(f"column '{self.name}': a value is not valid UTF-8") from exc


class Columns(MutableMapping[str, Array]):
    """Feature name -> numpy array, in response order; strings decoded on first access."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Array | _Undecoded] | None = None) -> None:
        self._values: dict[str, Array | _Undecoded] = values if values is not None else {}

    def __getitem__(self, name: str) -> Array:
        value = self._values[name]
        if isinstance(value, _Undecoded):
            value = self._values[name] = value.decode()
        return value

    def __setitem__(self, name: str, value: Array) -> None:
        self._values[name] = value

    def __delitem__(self, name: str) -> None:
        del self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Columns({list(self._values)})"


def decode_columns(columns: Iterable[pb.Column], count: int) -> Columns:
    """Every column of a response; a buffer that does not fit its type and the row count is
    INVALID_ARGUMENT naming the column (strings: when first read).

    The hot loop of the client: about a microsecond per column, so it avoids calls."""
    values: dict[str, Array | _Undecoded] = {}
    known = WIRE_TYPES
    frombuffer = np.frombuffer
    for column in columns:
        name = column.name
        wire = known.get(column.type) or wire_type(column.type, name)
        size = wire.row_bytes
        if size and not wire.is_bool:
            data = column.values
            if len(data) != count * size:
                fixed_array(name, wire, data, count)  # raises, naming the column
            values[name] = frombuffer(data, wire.dtype)
        elif size:
            values[name] = fixed_array(name, wire, column.values, count)
        else:
            lengths = column.lengths
            if len(lengths) != 4 * count:
                raise InvalidArgumentError(
                    f"column '{name}': {len(lengths)} bytes of lengths, expected {count} x 4"
                )
            values[name] = _Undecoded(name, lengths, column.values, wire.is_string)
    return Columns(values)
