"""Who is calling and which request this is, for the duration of one call.

Every gRPC method and HTTP route of a worker runs inside a request context
(server/grpc/registration.py, server/http/middleware.py): the request id is set before the
call's work starts, and authentication sets the caller once it knows it. Request log lines
(server/logs.py) read both. Context variables, so concurrent calls on one event loop never
see each other's values (each gRPC call and each HTTP request runs in its own task).
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar, Token

REQUEST_ID_METADATA = "x-request-id"  # gRPC metadata key (lower case, as gRPC requires)
REQUEST_ID_HEADER = "X-Request-Id"  # HTTP header
MAX_REQUEST_ID_LENGTH = 128
# What a caller's request id may contain: enough for UUIDs, trace ids and dotted names, and
# nothing that could break a log line (no spaces, quotes, control characters).
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_REQUEST_ID_LENGTH}}}")

current_request_id: ContextVar[str] = ContextVar("current_request_id", default="")
current_caller: ContextVar[str | None] = ContextVar("current_caller", default=None)


def get_request_id() -> str:
    """The current call's request id ("" outside a call)."""
    return current_request_id.get()


def set_request_id(request_id: str) -> Token[str]:
    return current_request_id.set(request_id)


def get_caller() -> str | None:
    """The name of the authenticated caller of the current call, None if not known (yet)."""
    return current_caller.get()


def set_caller(name: str | None) -> Token[str | None]:
    return current_caller.set(name)


def new_request_id() -> str:
    """16 random hex digits: unique enough to find one call in the logs of a fleet."""
    return os.urandom(8).hex()


def accept_request_id(given: str | None) -> str:
    """The caller's request id when it is well-formed, else a new one (an id that could
    inject text into log lines is replaced, never logged)."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()
