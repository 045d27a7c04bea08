"""The feature store's JSON gateway, for curl users: POST /v1/retrieve.

    curl -s localhost:6567/v1/retrieve -d '{"entity": "user",
         "keys": {"user_id": [1, 2]}, "features": ["user_profile"]}'

Floats that JSON cannot carry come back as the strings "NaN", "Infinity", "-Infinity"
(as in protobuf's JSON mapping); bytes come back base64-encoded.
"""

from __future__ import annotations

from typing import Any

from inferstack.core import limits
from inferstack.core.callers import Need
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.rowformat import RowStatus
from inferstack.featurestore.service import FeatureService, RetrieveResult
from inferstack.server.http.routes import Body
from inferstack.server.pipeline import Endpoint
from inferstack.wire.columns import to_numpy
from inferstack.wire.json import json_values


def routes(service: FeatureService) -> dict[str, tuple[str, Endpoint[Body, Any]]]:
    async def retrieve(body: Body) -> dict[str, Any]:
        entity, features = _selection(body)
        keys = body.get("keys")
        if isinstance(keys, dict):
            limits.check(len(keys), limits.MAX_KEY_COLUMNS, "key columns")
        if not isinstance(keys, dict) or not all(isinstance(v, list) for v in keys.values()):
            raise InvalidArgumentError("'keys' must map each key name to a list of values")
        return result_to_json(await service.retrieve(entity, keys, features))

    def retrieve_touches(body: Body) -> list[Need]:
        return service.retrieve_needs(*_selection(body))

    return {"/v1/retrieve": ("http_retrieve", Endpoint(retrieve, retrieve_touches))}


def _selection(body: Body) -> tuple[str, list[str]]:
    entity = body.get("entity")
    features = body.get("features", [])
    if not isinstance(entity, str):
        raise InvalidArgumentError("'entity' must be a string")
    if isinstance(features, list):
        limits.check(len(features), limits.MAX_SELECTORS, "feature selectors")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise InvalidArgumentError("'features' must be a list of strings")
    return entity, features


def result_to_json(result: RetrieveResult) -> dict[str, Any]:
    names = {status.value: status.name.lower() for status in RowStatus}
    return {
        "entity": result.entity,
        "count": result.count,
        "columns": {
            column.name: json_values(to_numpy(column.type, column.values).tolist())
            for column in result.columns
        },
        "status": {
            group: [names[int(code)] for code in status] for group, status in result.status.items()
        },
    }
