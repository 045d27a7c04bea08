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
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from inferstack import metrics
from inferstack.core.errors import (
    InferstackError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from inferstack.core.rowformat import RowStatus
from inferstack.featurestore.grpc_service import groups_read
from inferstack.featurestore.service import FeatureService, RetrieveResult
from inferstack.server import admission, auth, logs
from inferstack.wire.columns import to_numpy

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}
CODE_OF_STATUS = {status: code for code, status in HTTP_STATUS.items()}
SERVICE_KEY = web.AppKey("feature_service", FeatureService)


DEFAULT_MAX_BODY_BYTES = 16 << 20


def make_app(
    service: FeatureService, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)  # larger bodies: 413 (json_body)
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
# What a request touches, from its parsed body (server/auth.py); raises INVALID_ARGUMENT
# for a body too malformed to say.
BodyNeeds = Callable[[web.Request, dict[str, Any]], Iterable[auth.Need]]


def json_route(method: str, work: JsonWork, needs: BodyNeeds | None = None) -> Route:
    """A POST handler for every part's gateway: the JSON body in, `work`'s payload out as
    JSON; user errors become their HTTP status, anything else 500; calls and latency counted
    under `method`. Calls pass the worker's admission gate (server/admission.py) like gRPC
    calls: a refusal is 429 or 504 at once. When callers are configured, the
    `Authorization: Bearer` token is checked before admission (401) and the caller's grants
    against `needs` of the body before `work` (403)."""
    work = _guarded(method, work, needs)

    async def route(request: web.Request) -> web.Response:
        started = time.perf_counter()
        gate = admission.current()
        try:
            if auth.current().required:
                request[CALLER] = await auth.authenticate(
                    method, request.headers.get("Authorization")
                )
            admitted = started if gate.try_enter() else await gate.wait(method)
        except InferstackError as exc:
            response = error_response(exc)
        else:
            try:
                response = await _respond(request, work)
            finally:
                gate.leave(method, time.perf_counter() - admitted)
        code = "OK" if response.status == 200 else CODE_OF_STATUS.get(response.status, "INTERNAL")
        metrics.count_request(method, code, time.perf_counter() - started)
        return response

    return route


CALLER = "inferstack_caller"  # the authenticated caller, on the aiohttp request


def _guarded(method: str, work: JsonWork, needs: BodyNeeds | None) -> JsonWork:
    if needs is None:
        return work

    async def guarded(request: web.Request, body: dict[str, Any]) -> Any:
        caller = request.get(CALLER)
        if caller is not None:
            auth.authorize(method, caller, lambda: needs(request, body))
        return await work(request, body)

    return guarded


def error_response(error: InferstackError) -> web.Response:
    body = {"error": {"code": error.status, "message": str(error)}}
    status = 413 if isinstance(error, BodyTooLargeError) else HTTP_STATUS.get(error.status, 400)
    response = web.json_response(body, status=status)
    if error.status == "UNAUTHENTICATED":
        response.headers["WWW-Authenticate"] = 'Bearer realm="inferstack"'
    return response


async def _respond(request: web.Request, work: JsonWork) -> web.Response:
    try:
        payload = await work(request, await json_body(request))
    except InferstackError as exc:
        return error_response(exc)
    except Exception:
        logs.rate_limited_exception(log, "internal error")  # a caller may trigger it at will
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


def _retrieve_needs(request: web.Request, body: dict[str, Any]) -> list[auth.Need]:
    entity = body.get("entity")
    features = body.get("features", [])
    if not isinstance(entity, str):
        raise InvalidArgumentError("'entity' must be a string")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise InvalidArgumentError("'features' must be a list of strings")
    groups = groups_read(request.app[SERVICE_KEY], entity, features)
    return [auth.reads("feature_group", groups)]


retrieve = json_route("http_retrieve", _retrieve, _retrieve_needs)


class BodyTooLargeError(ResourceExhaustedError):
    """A request body over the app's size limit: HTTP 413, not 429 (nothing to retry)."""


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyTooLargeError(
            f"request body larger than {request.client_max_size} bytes "
            "(the limit, max_http_body_bytes)"
        ) from exc
    except (ValueError, LookupError) as exc:  # JSON, UTF-8, digit limit, unknown charset
        raise InvalidArgumentError(f"request body is not JSON: {_one_line(exc)}") from exc
    except RecursionError as exc:
        raise InvalidArgumentError("request body is not JSON we accept: nested too deeply") from exc
    if not isinstance(body, dict):
        raise InvalidArgumentError("request body must be a JSON object")
    return body


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


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
