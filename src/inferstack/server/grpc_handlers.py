"""How a worker registers its servicers with gRPC: every method of a service, from its
protobuf descriptor, through one wrapper that

- parses the request itself, so a message that does not parse is answered
  INVALID_ARGUMENT with a one-line reason (the generated registration lets the parse error
  escape into grpc, which answers UNKNOWN and logs a traceback per request);
- runs the call in a request context (server/requestcontext.py): the request id from the
  caller's `x-request-id` metadata or a new one, sent back in the trailing metadata;
- writes the request log line (server/logs.py) when the call ends;
- sends a response the servicer already encoded (bytes) as it is.

Only unary-unary methods exist in our services; another kind is refused at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no stubs
from google.protobuf.message_factory import GetMessageClass  # type: ignore[import-untyped]

from inferstack import metrics
from inferstack.server import logs
from inferstack.server.requestcontext import (
    REQUEST_ID_METADATA,
    accept_request_id,
    current_caller,
    current_request_id,
)

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]


class MalformedRequest:
    """What the deserializer hands on instead of a message when the bytes do not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def tolerant_deserializer(message_class: Any) -> Callable[[bytes], Any]:
    name = message_class.DESCRIPTOR.full_name

    def deserialize(raw: bytes) -> Any:
        try:
            return message_class.FromString(raw)
        except DecodeError:
            return MalformedRequest(
                f"malformed request: {len(raw)} bytes that are not a valid {name} message"
            )

    return deserialize


def add_service(
    server: grpc.aio.Server,
    service: Any,  # a protobuf ServiceDescriptor
    servicer: object,
    metric_prefix: str = "",
) -> None:
    """Serve every method of `service` from the servicer's method of the same name.
    `metric_prefix` + method name is the method's label in the request metrics."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{service.full_name}/{method.name}: only unary methods are served")
        request_class = GetMessageClass(method.input_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _wrap(
                f"{service.name}/{method.name}",
                metric_prefix + method.name,
                getattr(servicer, method.name),
            ),
            request_deserializer=tolerant_deserializer(request_class),
            response_serializer=_serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # The faster lookup of grpcio >= 1.63, as generated code does it (newer than the stubs).
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


def _serialize(response: Any) -> bytes:
    """A response message, or its bytes when the servicer encoded it already (the feature
    store's retrieve answers are encoded natively: featurestore/grpc_service.py)."""
    if isinstance(response, bytes):
        return response
    return bytes(response.SerializeToString())


def _wrap(method: str, metric_label: str, behavior: Behavior) -> Behavior:
    async def handle(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        request_id = accept_request_id(_metadata(context, REQUEST_ID_METADATA))
        id_token = current_request_id.set(request_id)
        caller_token = current_caller.set(None)
        context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
        status = ""
        try:
            if isinstance(request, MalformedRequest):
                metrics.REQUESTS.labels(metric_label, "INVALID_ARGUMENT").inc()
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            return await behavior(request, context)
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:  # servicers answer their own errors; this is a bug of ours
            logs.rate_limited_exception(log, f"{method}: internal error")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            code = context.code()
            if not status:
                status = "OK" if code is None else _code_name(code)
            details = context.details() if code is not None else ""
            logs.request_done(method, status, time.perf_counter() - started, _text(details))
            current_caller.reset(caller_token)
            current_request_id.reset(id_token)

    return handle


def _metadata(context: Context, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value if isinstance(value, str) else None
    return None


def _code_name(code: Any) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _text(details: Any) -> str:
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return details if isinstance(details, str) else ""
