"""The request context of every HTTP request (aiohttp middleware): the request id from the
caller's `X-Request-Id` header or a new one, returned in the response's `X-Request-Id`; the
request log line when the response is ready (server/logs.py); and a body over the app's
size limit answered 413 with a JSON error naming the limit, on every route.

It is the outermost middleware, so it also sees what inner ones (authentication) refuse.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from inferstack.server.logs import RequestLog
from inferstack.server.requestcontext import (
    REQUEST_ID_HEADER,
    accept_request_id,
    current_caller,
    current_request_id,
)

MAX_PATH_IN_LOG = 200


SERVER_HEADER = "inferstack"  # not aiohttp's "Python/3.x aiohttp/3.y": no versions to probe


def install(app: web.Application, request_log: RequestLog) -> None:
    """Put the request context around every route of `app` (outermost middleware), and name
    the server without versions on every response the app prepares."""
    app.middlewares.insert(0, request_context(request_log))
    app.on_response_prepare.append(_name_the_server)


async def _name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


def request_context(request_log: RequestLog) -> Any:
    @web.middleware
    async def in_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
        id_token = current_request_id.set(request_id)
        caller_token = current_caller.set(None)
        method = f"{request.method} {_route(request)}"
        try:
            try:
                response = await handler(request)
            except web.HTTPRequestEntityTooLarge:
                response = body_too_large(request.client_max_size)
            except web.HTTPException as exc:
                exc.headers[REQUEST_ID_HEADER] = request_id
                request_log.request_done(
                    method, str(exc.status), time.perf_counter() - started, exc.text or ""
                )
                raise
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            request_log.request_done(
                method,
                str(response.status),
                time.perf_counter() - started,
                _error_message(response),
            )
            return response
        finally:
            current_caller.reset(caller_token)
            current_request_id.reset(id_token)

    return in_context


def body_too_large(limit: int) -> web.Response:
    message = f"request body larger than {limit} bytes (the limit, max_http_body_bytes)"
    return web.json_response(
        {"error": {"code": "RESOURCE_EXHAUSTED", "message": message}}, status=413
    )


def _route(request: web.Request) -> str:
    """The route's pattern (e.g. /v1/retrieve), or the path when none matched, printable."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return "".join(c if c.isprintable() else "?" for c in path[:MAX_PATH_IN_LOG])


def _error_message(response: web.StreamResponse) -> str:
    """The message of one of our JSON errors, for the log line of a failed request."""
    if response.status < 400 or not isinstance(response, web.Response):
        return ""
    body: Any = response.body
    if not isinstance(body, bytes) or response.content_type != "application/json":
        return ""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return message if isinstance(message, str) else ""
