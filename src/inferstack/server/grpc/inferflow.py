"""Inferflow over gRPC (inferstack.inferflow.v1.Inferflow): decode, call the transport-free
InferflowService, encode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core.callers import Need
from inferstack.core.rowformat import Column, var_column
from inferstack.core.types import FeatureType
from inferstack.inferflow.executor import InferResult
from inferstack.inferflow.service import InferflowService
from inferstack.proto.inferflow.v1 import inferflow_pb2 as pb
from inferstack.server.pipeline import Endpoint
from inferstack.wire.columns import column_to_proto
from inferstack.wire.inferflow import request_from_proto

SERVICE = pb.DESCRIPTOR.services_by_name["Inferflow"]


def endpoints(service: InferflowService) -> dict[str, Endpoint[Any, Any]]:
    async def infer(request: pb.InferRequest) -> pb.InferResponse:
        model, inputs, return_features = request_from_proto(request)
        request_id, result = await service.infer(model, inputs, return_features, request.request_id)
        return response_to_proto(request_id, result, request.explain)

    def infer_touches(request: pb.InferRequest) -> Iterator[Need]:
        return service.infer_needs(request.model, request.return_features, request.explain)

    return {"Infer": Endpoint(infer, infer_touches)}


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
