"""Conversions between protobuf messages and columns; shared by the server and the client."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.keys import KeyValues
from inferstack.core.rowformat import Column, VarColumn
from inferstack.core.types import FeatureType, TypeParseError
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb


def keys_from_proto(columns: Iterable[pb.KeyColumn]) -> dict[str, KeyValues]:
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


def keys_to_proto(keys: Mapping[str, KeyValues]) -> list[pb.KeyColumn]:
    columns = []
    for name, values in keys.items():
        array = np.asarray(values)
        if array.dtype.kind in "iub" or (array.dtype.kind == "O" and _all_ints(values)):
            if array.dtype.kind == "u" and len(array) and int(array.max()) > np.iinfo(np.int64).max:
                columns.append(pb.KeyColumn(name=name, uint64_values=array.tolist()))
            else:
                columns.append(
                    pb.KeyColumn(name=name, int64_values=array.astype(np.int64).tolist())
                )
        else:
            columns.append(pb.KeyColumn(name=name, string_values=[str(v) for v in array.tolist()]))
    return columns


def _all_ints(values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


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
    try:
        feature_type = FeatureType.parse(column.type)
    except TypeParseError as exc:
        raise InvalidArgumentError(f"column '{column.name}': {exc}") from exc
    if feature_type.is_variable:
        if len(column.lengths) % 4:
            raise InvalidArgumentError(f"column '{column.name}': lengths is not a <u4 buffer")
        lengths = np.frombuffer(column.lengths, dtype="<u4")
        if int(lengths.sum(dtype=np.int64)) != len(column.values):
            raise InvalidArgumentError(
                f"column '{column.name}': lengths do not add up to the values"
            )
        var = VarColumn(lengths, column.values)
        if feature_type.base == "string":
            _check_utf8(column.name, var)
        return feature_type, var
    itemsize = feature_type.storage_dtype.itemsize
    if len(column.values) % itemsize or (
        count is not None and len(column.values) != count * itemsize
    ):
        expected = f"{count} x {itemsize}" if count is not None else f"a multiple of {itemsize}"
        raise InvalidArgumentError(
            f"column '{column.name}': {len(column.values)} bytes of {feature_type}, "
            f"expected {expected}"
        )
    array = np.frombuffer(column.values, dtype=feature_type.scalar_dtype)
    if feature_type.length:
        array = array.reshape(-1, feature_type.length)
    if feature_type.base == "bool":
        if len(array) and int(array.max()) > 1:
            raise InvalidArgumentError(f"column '{column.name}': bool values must be 0 or 1")
        return feature_type, array.view(np.bool_)
    return feature_type, array


def _check_utf8(name: str, column: VarColumn) -> None:
    try:
        for value in column.to_list():
            value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"column '{name}': a value is not valid UTF-8") from exc


def to_numpy(feature_type: FeatureType, values: Column) -> npt.NDArray[Any]:
    """A column as users want it: strings as str objects, bytes as bytes objects."""
    if not isinstance(values, VarColumn):
        return values
    items: Sequence[Any] = values.to_list()
    if feature_type.base == "string":
        items = [item.decode("utf-8") for item in items]
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array
