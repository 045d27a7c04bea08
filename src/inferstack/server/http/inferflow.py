"""Inferflow's JSON gateway, for curl users: POST /v1/infer.

    curl -s localhost:6567/v1/infer -d '{"model": "ranker",
         "context": {"user_id": 42, "product_ids": [1334, 7732]}, "explain": true}'

Scalars may be given bare or as one-element lists. Errors and values that JSON cannot carry
(NaN, infinities, bytes) look exactly as in the feature store's gateway.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from inferstack.core import limits
from inferstack.core.callers import Need
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.keys import KeyValues
from inferstack.inferflow.executor import InferResult
from inferstack.inferflow.service import InferflowService
from inferstack.server.http.routes import Body
from inferstack.server.pipeline import Endpoint
from inferstack.wire.columns import to_numpy
from inferstack.wire.json import json_values


def routes(service: InferflowService) -> dict[str, tuple[str, Endpoint[Body, Any]]]:
    async def infer(body: Body) -> dict[str, Any]:
        model, context, return_features, explain, request_id = parse_request(body)
        request_id, result = await service.infer(model, context, return_features, request_id)
        return result_to_json(request_id, result, explain)

    def infer_touches(body: Body) -> Iterator[Need]:
        return service.infer_needs(*_answer_fields(body))  # the context is not needed here

    return {"/v1/infer": ("http_infer", Endpoint(infer, infer_touches))}


def parse_request(body: dict[str, Any]) -> tuple[str, dict[str, KeyValues], list[str], bool, str]:
    """(model, context, return_features, explain, request_id), or INVALID_ARGUMENT naming
    the field that has the wrong shape (the service checks values against the config)."""
    model, return_features, explain = _answer_fields(body)
    context = body.get("context", {})
    request_id = body.get("request_id", "")
    if isinstance(context, dict):
        limits.check(len(context), limits.MAX_KEY_COLUMNS, "context inputs")
    if not isinstance(context, dict):
        raise InvalidArgumentError("'context' must map each input name to a value or a list")
    if not isinstance(request_id, str):
        raise InvalidArgumentError("'request_id' must be a string")
    values: dict[str, KeyValues] = {}
    for name, value in context.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(v, list | dict) for v in value)
        ):
            raise InvalidArgumentError(f"context '{name}' must be a value or a list of values")
        values[name] = value if isinstance(value, list) else [value]
    return model, values, return_features, explain, request_id


def _answer_fields(body: dict[str, Any]) -> tuple[str, list[str], bool]:
    """(model, return_features, explain): what decides which grants an Infer needs."""
    model = body.get("model")
    return_features = body.get("return_features", [])
    explain = body.get("explain", False)
    if isinstance(return_features, list):
        limits.check(len(return_features), limits.MAX_RETURN_FEATURES, "return_features")
    if not isinstance(model, str):
        raise InvalidArgumentError("'model' must be a string")
    if not isinstance(return_features, list) or not all(
        isinstance(f, str) for f in return_features
    ):
        raise InvalidArgumentError("'return_features' must be a list of strings")
    if not isinstance(explain, bool):
        raise InvalidArgumentError("'explain' must be true or false")
    return model, return_features, explain


def result_to_json(request_id: str, result: InferResult, explain: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "model": result.model,
        "version": result.version,
        "request_id": request_id,
        "count": result.count,
        "outputs": {name: json_values(values.tolist()) for name, values in result.outputs.items()},
        "features": {
            name: json_values(to_numpy(ref.type, column).tolist())
            for name, (ref, column) in result.features.items()
        },
    }
    if explain:
        stages = [
            {"name": stage, "milliseconds": seconds * 1e3} for stage, seconds in result.timings
        ]
        stages.append({"name": "encode", "milliseconds": (time.perf_counter() - started) * 1e3})
        payload["explain"] = {
            "stages": stages,
            "defaults": dict(result.defaults),
            "rows": result.count,
        }
    return payload
