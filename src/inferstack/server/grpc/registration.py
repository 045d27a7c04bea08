"""How a worker serves a gRPC service: every method of it, from its protobuf descriptor,
through one wrapper that

- parses the request itself, so a message that does not parse is answered
  INVALID_ARGUMENT with a one-line reason, once the caller's token is checked (the generated
  registration lets the parse error escape into grpc, which answers UNKNOWN and logs a
  traceback per request);
- runs the call in a request context (server/requestcontext.py): the request id from the
  caller's `x-request-id` metadata or a new one, sent back in the trailing metadata;
- runs the method's endpoint through the worker's call pipeline (server/pipeline.py) with
  the call's `authorization` metadata and deadline, and turns its errors into status codes;
- writes the request log line (server/logs.py) when the call ends;
- sends a response the endpoint already encoded (bytes) as it is.

A method's label in metrics, admission and logs is `label_prefix` + its name, derived here
once rather than written by hand at each method.

Only unary-unary methods exist in our services; another kind is refused at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no stubs
from google.protobuf.message_factory import GetMessageClass  # type: ignore[import-untyped]

from inferstack.core.errors import InferstackError, InvalidArgumentError
from inferstack.server.pipeline import Endpoint, Pipeline
from inferstack.server.requestcontext import (
    REQUEST_ID_METADATA,
    accept_request_id,
    current_caller,
    current_request_id,
)

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
AUTHORIZATION_METADATA = "authorization"


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
    pipeline: Pipeline,
    service: Any,  # a protobuf ServiceDescriptor
    endpoints: Mapping[str, Endpoint[Any, Any]],
    label_prefix: str = "",
) -> None:
    """Serve every method of `service` from the endpoint of the same name (one per method,
    no more, no fewer: checked here, at start-up)."""
    names = {method.name for method in service.methods}
    if names != set(endpoints):
        raise TypeError(
            f"{service.full_name}: endpoints {sorted(endpoints)} do not match the methods "
            f"{sorted(names)}"
        )
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{service.full_name}/{method.name}: only unary methods are served")
        request_class = GetMessageClass(method.input_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _wrap(
                pipeline,
                f"{service.name}/{method.name}",
                label_prefix + method.name,
                endpoints[method.name],
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
    store's retrieve answers are encoded natively: server/grpc/featurestore.py)."""
    if isinstance(response, bytes):
        return response
    return bytes(response.SerializeToString())


def status_of(error: InferstackError) -> grpc.StatusCode:
    return grpc.StatusCode[error.status]


def _wrap(pipeline: Pipeline, method: str, label: str, endpoint: Endpoint[Any, Any]) -> Behavior:
    request_log = pipeline.request_log

    async def handle(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        request_id = accept_request_id(_metadata(context, REQUEST_ID_METADATA))
        id_token = current_request_id.set(request_id)
        caller_token = current_caller.set(None)
        context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
        status = ""
        try:
            try:
                # As over HTTP: the token first, so a caller without one learns nothing of
                # how its message reads; then the message; then the pipeline.
                credentials = _metadata(context, AUTHORIZATION_METADATA)
                caller = await pipeline.authenticate(label, credentials, started)
                if isinstance(request, MalformedRequest):
                    pipeline.count(label, "INVALID_ARGUMENT", started)
                    raise InvalidArgumentError(request.reason)
                return await pipeline.run(
                    label,
                    lambda: endpoint.handle(request),
                    touches=lambda: endpoint.touches(request),
                    time_remaining=context.time_remaining,
                    caller=caller,
                    started=started,
                )
            except InferstackError as exc:
                await context.abort(status_of(exc), str(exc))
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:  # the pipeline answers every error of a call; this is a bug of ours
            request_log.exception(log, f"{method}: internal error")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            code = context.code()
            if not status:
                status = "OK" if code is None else _code_name(code)
            details = context.details() if code is not None else ""
            request_log.request_done(method, status, time.perf_counter() - started, _text(details))
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
