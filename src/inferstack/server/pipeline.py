"""The one path every call takes, whatever its transport: gRPC methods, JSON routes and the
console's Look up and Try it all go through a worker's `Pipeline`, in this order:

    authenticate -> authorize -> admission -> handler -> errors -> metrics

(`authenticate` first and on its own, `run` for the rest.)

The transports decode the request first (a gRPC message that does not parse is refused
before anything else; over HTTP the token is checked from the headers, then the body is read
and decoded) and write the request log line last, around the pipeline
(server/grpc/registration.py, server/http/middleware.py). A pipeline is built once per
worker from its authorizer, admission gate and request log, and passed to every transport:
nothing of it lives in module globals.

Endpoints are the thin adapters over the parts' transport-free services: for each method, a
function from the decoded request to the answer and one saying what the request touches
(core/callers.py `Need`), which is only evaluated when callers are configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from inferstack import metrics
from inferstack.core.callers import Caller, Need
from inferstack.core.errors import InferstackError
from inferstack.server.admission import Gate, TimeRemaining, no_deadline
from inferstack.server.auth import Authorizer
from inferstack.server.logs import RequestLog

log = logging.getLogger(__name__)
T = TypeVar("T")
RequestT = TypeVar("RequestT", contravariant=True)
ResponseT = TypeVar("ResponseT", covariant=True)
INTERNAL_MESSAGE = "internal error; see the server log"


class InternalError(InferstackError):
    """A failure of ours, not the caller's: the caller learns only that it happened (the
    traceback goes to the server log, rate-limited)."""

    status = "INTERNAL"


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[RequestT, ResponseT]):
    """One method of a transport over a part's service: what it answers, what it touches."""

    handle: Callable[[RequestT], Awaitable[ResponseT]]
    touches: Callable[[RequestT], Iterable[Need]]


class Pipeline:
    """One worker's call path (see the module docstring)."""

    def __init__(self, authorizer: Authorizer, gate: Gate, request_log: RequestLog) -> None:
        self.authorizer = authorizer
        self.gate = gate
        self.request_log = request_log

    async def run(
        self,
        method: str,
        handler: Callable[[], Awaitable[T]],
        *,
        caller: Caller | None,
        touches: Callable[[], Iterable[Need]] | None = None,
        time_remaining: TimeRemaining = no_deadline,
        started: float | None = None,
    ) -> T:
        """Run one call of `method` (its label in metrics, admission estimates and logs) for
        `caller`, whom the transport authenticated first (`authenticate`, or the console's
        sign-in): authorize, admit, run, count. `started` is when the transport took the
        call (its latency counts from there). Errors leave as `InferstackError` (anything
        unexpected as `InternalError`), counted."""
        started = time.perf_counter() if started is None else started
        try:
            self.authorizer.authorize(method, caller, touches)
            gate = self.gate
            admitted = (
                time.perf_counter() if gate.try_enter() else await gate.wait(method, time_remaining)
            )
            try:
                result = await handler()
            finally:
                gate.leave(method, time.perf_counter() - admitted)
        except InferstackError as exc:
            self.count(method, exc.status, started)
            raise
        except asyncio.CancelledError:  # the caller cancelled, or its deadline passed
            self.count(method, "CANCELLED", started)
            raise
        except Exception as exc:
            self.request_log.exception(log, f"{method}: internal error")  # callers may repeat it
            self.count(method, "INTERNAL", started)
            raise InternalError(INTERNAL_MESSAGE) from exc
        self.count(method, "OK", started)
        return result

    async def authenticate(
        self, method: str, credentials: str | None, started: float
    ) -> Caller | None:
        """The caller of a call whose transport authenticates it before decoding it (HTTP:
        a caller without a valid token never gets its body read); a refusal is counted."""
        if not self.authorizer.required:
            return None
        try:
            return await self.authorizer.authenticate(method, credentials)
        except InferstackError as exc:
            self.count(method, exc.status, started)
            raise

    @staticmethod
    def count(method: str, code: str, started: float) -> None:
        """Count one call of `method` that ended with `code` (also those a transport refuses
        before the pipeline, such as a request that does not decode)."""
        metrics.count_request(method, code, time.perf_counter() - started)
