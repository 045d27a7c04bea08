"""Conversions between inferflow protobuf messages and Python values; shared by server and client.

Context values and columns travel as the feature store's `KeyColumn` and `Column`, so their
conversions are the feature store's (`wire/columns.py`); this module only adds the
request and response envelopes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from inferstack.core.keys import KeyValues
from inferstack.core.rowformat import Column, var_column
from inferstack.core.types import FeatureType
from inferstack.proto.inferflow.v1 import inferflow_pb2 as pb
from inferstack.wire.columns import column_to_proto, keys_from_proto, keys_to_proto

if TYPE_CHECKING:  # the client needs no part of the engine
    from inferstack.inferflow.executor import InferResult

FLOAT32 = FeatureType("float32")
ContextValue = KeyValues | int | str | np.integer[Any]


def context_values(value: ContextValue) -> KeyValues:
    """A context value as a list: a scalar may be given bare (user_id=42) or as one value."""
    if isinstance(value, np.ndarray):
        return value.reshape(1) if value.ndim == 0 else value
    if isinstance(value, str | bytes | int | float | np.generic) or not isinstance(value, Iterable):
        return [value]
    return value if isinstance(value, Sequence) else list(value)


def request_to_proto(
    model: str,
    context: Mapping[str, ContextValue],
    return_features: Sequence[str] = (),
    explain: bool = False,
    request_id: str = "",
) -> pb.InferRequest:
    keys = {name: context_values(value) for name, value in context.items()}
    return pb.InferRequest(
        model=model,
        context=keys_to_proto(keys),
        return_features=list(return_features),
        explain=explain,
        request_id=request_id,
    )


def request_from_proto(request: pb.InferRequest) -> tuple[str, dict[str, KeyValues], list[str]]:
    """(model, context by input name, return_features); duplicate inputs are refused."""
    return request.model, keys_from_proto(request.context), list(request.return_features)


def response_to_proto(
    request_id: str, result: InferResult, explain: bool = False
) -> pb.InferResponse:
    started = time.perf_counter()
    response = pb.InferResponse(
        model=result.model, version=result.version, count=result.count, request_id=request_id
    )
    add_output = response.outputs.add
    for name, values in result.outputs.items():
        add_output(name=name, type="float32", values=values.astype("<f4", copy=False).tobytes())
    response.features.extend(
        column_to_proto(name, ref.type, _wire_column(ref.type, column))
        for name, (ref, column) in result.features.items()
    )
    if explain:
        add_stage = response.explain.stages.add
        for stage, seconds in result.timings:
            add_stage(name=stage, milliseconds=seconds * 1e3)
        add_stage(name="encode", milliseconds=(time.perf_counter() - started) * 1e3)
        add_defaults = response.explain.defaults.add
        for feature, rows in result.defaults.items():
            add_defaults(feature=feature, rows=rows)
        response.explain.rows = result.count
    return response


def _wire_column(feature_type: FeatureType, column: Column | npt.NDArray[Any]) -> Column:
    """Strings and bytes as lengths + data: a remote feature store hands them back as objects."""
    if not isinstance(column, np.ndarray) or column.dtype != object:
        return column
    if feature_type.base == "string":
        return var_column([value.encode("utf-8") for value in column.tolist()])
    return var_column(column.tolist())
