"""Conversions between inferflow protobuf messages and Python values; shared by server and client.

Context values and columns travel as the feature store's `KeyColumn` and `Column`, so their
conversions are the feature store's (`wire/columns.py`); this module only adds the
request and response envelopes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from inferstack.core.keys import KeyValues
from inferstack.core.types import FeatureType
from inferstack.proto.inferflow.v1 import inferflow_pb2 as pb
from inferstack.wire.columns import keys_from_proto, keys_to_proto

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
