"""JSON routes over the call pipeline (server/pipeline.py): the `Authorization` header is
checked first (a caller without a valid token never has its body read), then the body is
read and decoded (too large: 413, not JSON: 400, not whole within the body timeout: 408),
then the pipeline authorizes, admits and runs the route's endpoint; its errors become HTTP
statuses with a JSON error naming the bad thing.

Reading the body before admission is what keeps slow or unfinished bodies from holding the
worker's execution slots: a connection that sends a header and part of a body costs a
coroutine waiting on a socket, never a slot, and not beyond the timeout."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from inferstack import metrics
from inferstack.core.errors import InferstackError, InvalidArgumentError, ResourceExhaustedError
from inferstack.core.text import one_line
from inferstack.server.pipeline import Endpoint, Pipeline
from inferstack.wire.json import dumps

HTTP_STATUS = {
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "INTERNAL": 500,
}
DEFAULT_MAX_BODY_BYTES = 16 << 20
DEFAULT_BODY_TIMEOUT = 10.0  # seconds (http_body_timeout)
Body = dict[str, Any]
Route = Callable[[web.Request], Awaitable[web.Response]]


class BodyTooLargeError(ResourceExhaustedError):
    """A request body over the app's size limit: HTTP 413, not 429 (nothing to retry)."""


def add_json_routes(
    app: web.Application,
    pipeline: Pipeline,
    routes: dict[str, tuple[str, Endpoint[Body, Any]]],
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> None:
    """POST `path` -> (label, endpoint): the label names the route in metrics and logs."""
    for path, (label, endpoint) in routes.items():
        app.router.add_post(path, json_route(pipeline, label, endpoint, body_timeout))


def json_route(
    pipeline: Pipeline,
    label: str,
    endpoint: Endpoint[Body, Any],
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> Route:
    async def route(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            caller = await pipeline.authenticate(
                label, request.headers.get("Authorization"), started
            )
            try:
                body = await json_body(request, body_timeout, label)
            except InferstackError as exc:
                pipeline.count(label, exc.status, started)
                raise
            payload = await pipeline.run(
                label,
                lambda: endpoint.handle(body),
                touches=lambda: endpoint.touches(body),
                caller=caller,
                started=started,
            )
        except InferstackError as exc:
            return error_response(exc)
        return web.json_response(payload, dumps=dumps)

    return route


def error_response(error: InferstackError) -> web.Response:
    body = {"error": {"code": error.status, "message": str(error)}}
    if isinstance(error, BodyTooLargeError):
        status = 413
    elif isinstance(error, SlowBodyError):
        status = 408
    else:
        status = HTTP_STATUS.get(error.status, 400)
    response = web.json_response(body, status=status)
    if error.status == "UNAUTHENTICATED":
        response.headers["WWW-Authenticate"] = 'Bearer realm="inferstack"'
    return response


class ClientGoneError(InferstackError):
    """The client hung up before its body arrived: nobody reads the answer."""

    status = "CANCELLED"


class SlowBodyError(InferstackError):
    """A body that did not arrive whole in time: HTTP 408."""

    status = "DEADLINE_EXCEEDED"


async def json_body(
    request: web.Request, timeout: float = DEFAULT_BODY_TIMEOUT, label: str = ""
) -> Body:
    """The request's JSON object, read whole within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        metrics.SLOW_BODIES.labels(label).inc()
        raise SlowBodyError(
            f"the request body did not arrive within {timeout:g}s (http_body_timeout)"
        ) from None
    except (HttpProcessingError, RequestPayloadError) as exc:  # bytes not in their encoding
        encoding = request.headers.get("Content-Encoding", "")
        raise InvalidArgumentError(
            f"request body is not {one_line(encoding, 40)}-encoded as its Content-Encoding says"
        ) from exc
    except ConnectionError as exc:  # aiohttp's ClientConnectionResetError is one
        raise ClientGoneError("the client hung up before its request body arrived") from exc
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyTooLargeError(
            f"request body larger than {request.client_max_size} bytes "
            "(the limit, max_http_body_bytes)"
        ) from exc
    try:
        body = json.loads(raw.decode(request.charset or "utf-8"))
    except (ValueError, LookupError) as exc:  # JSON, UTF-8, digit limit, unknown charset
        reason = one_line(" ".join(str(exc).split()), 200)
        raise InvalidArgumentError(f"request body is not JSON: {reason}") from exc
    except RecursionError as exc:
        raise InvalidArgumentError("request body is not JSON we accept: nested too deeply") from exc
    if not isinstance(body, dict):
        raise InvalidArgumentError("request body must be a JSON object")
    return body
