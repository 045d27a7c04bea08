"""HTTP/JSON gateway for Retrieve, for curl users: POST /v1/retrieve.

    curl -s localhost:6567/v1/retrieve -d '{"entity": "user",
         "keys": {"user_id": [1, 2]}, "features": ["user_profile"]}'

Floats that JSON cannot carry come back as the strings "NaN", "Infinity", "-Infinity"
(as in protobuf's JSON mapping); bytes come back base64-encoded.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from inferstack import metrics
from inferstack.core.errors import InferstackError, InvalidArgumentError
from inferstack.core.rowformat import RowStatus
from inferstack.featurestore.service import FeatureService, RetrieveResult
from inferstack.featurestore.wire import to_numpy
from inferstack.server import admission

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
CODE_OF_STATUS = {status: code for code, status in HTTP_STATUS.items()}
SERVICE_KEY = web.AppKey("feature_service", FeatureService)


def make_app(service: FeatureService) -> web.Application:
    app = web.Application(client_max_size=16 << 20)
    app[SERVICE_KEY] = service
    app.router.add_post("/v1/retrieve", retrieve)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics_page)
    return app


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "SERVING"})


async def metrics_page(request: web.Request) -> web.Response:
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response


JsonWork = Callable[[web.Request, dict[str, Any]], Awaitable[Any]]
Route = Callable[[web.Request], Awaitable[web.Response]]


def json_route(method: str, work: JsonWork) -> Route:
    """A POST handler for every part's gateway: the JSON body in, `work`'s payload out as
    JSON; user errors become their HTTP status, anything else 500; calls and latency counted
    under `method`. Calls pass the worker's admission gate (server/admission.py) like gRPC
    calls: a refusal is 429 or 504 at once."""

    async def route(request: web.Request) -> web.Response:
        started = time.perf_counter()
        gate = admission.current()
        try:
            admitted = started if gate.try_enter() else await gate.wait(method)
        except InferstackError as exc:
            response = error_response(exc)
        else:
            try:
                response = await _respond(request, work)
            finally:
                gate.leave(method, time.perf_counter() - admitted)
        code = "OK" if response.status == 200 else CODE_OF_STATUS.get(response.status, "INTERNAL")
        metrics.REQUESTS.labels(method, code).inc()
        metrics.LATENCY.labels(method).observe(time.perf_counter() - started)
        return response

    return route


def error_response(error: InferstackError) -> web.Response:
    body = {"error": {"code": error.status, "message": str(error)}}
    return web.json_response(body, status=HTTP_STATUS.get(error.status, 400))


async def _respond(request: web.Request, work: JsonWork) -> web.Response:
    try:
        payload = await work(request, await json_body(request))
    except InferstackError as exc:
        return error_response(exc)
    except Exception:
        log.exception("internal error")
        error = {"code": "INTERNAL", "message": "internal error; see the server log"}
        return web.json_response({"error": error}, status=500)
    return web.json_response(payload, dumps=dumps)


async def _retrieve(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    service = request.app[SERVICE_KEY]
    entity = body.get("entity")
    keys = body.get("keys")
    features = body.get("features", [])
    if not isinstance(entity, str):
        raise InvalidArgumentError("'entity' must be a string")
    if not isinstance(keys, dict) or not all(isinstance(v, list) for v in keys.values()):
        raise InvalidArgumentError("'keys' must map each key name to a list of values")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise InvalidArgumentError("'features' must be a list of strings")
    return result_to_json(await service.retrieve(entity, keys, features))


retrieve = json_route("http_retrieve", _retrieve)


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidArgumentError("request body must be a JSON object")
    return body


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


def json_values(values: list[Any]) -> list[Any]:
    return [_json_value(value) for value in values]


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list):
        return json_values(value)
    return value


def dumps(payload: Any) -> str:
    return json.dumps(payload, allow_nan=False, separators=(",", ":"))
