"""Several gRPC channels to each server, used in turn: one client, several TCP connections,
one or several servers.

gRPC Python shares one connection among all channels of a process that go to the same
target with the same options (the global subchannel pool). Server workers share their port
through SO_REUSEPORT and the kernel balances connections, not calls, so a client on one
connection would only ever reach one worker. Each channel here gets its own subchannel pool,
hence its own connection, and calls go round-robin over the channels.

Given several servers (`target` a list of addresses), calls go round-robin over them, and a
call a server answers UNAVAILABLE (unreachable, stopping, draining) is sent to the next one
within the same deadline. Every call of the clients is safe to send twice: reads change
nothing, a Persist writes whole rows (the same rows again), an interaction Ingest is
de-duplicated by event id, a Hydrate loads the same copies and a Sweep moves what is due. A
call answered anything else (a refusal, a deadline) is not sent again.

Security: `token` (default: the INFERSTACK_TOKEN variable) is sent on every call as
`authorization: Bearer <token>`; `ca` (a PEM file) makes the channels TLS, verifying the
server against it, and `cert` + `key` present a client certificate (mutual TLS).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, Self, TypeVar

import grpc

from inferstack.core.errors import InvalidArgumentError

StubT = TypeVar("StubT")
T = TypeVar("T")
Option = tuple[str, Any]
Targets = str | Sequence[str]
# Statuses that mean "this server did not take the call": try the next server.
FAIL_OVER_ON = frozenset({grpc.StatusCode.UNAVAILABLE})

DEFAULT_OPTIONS: tuple[Option, ...] = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)
OWN_CONNECTION: Option = ("grpc.use_local_subchannel_pool", 1)


DEFAULT_TARGET = "127.0.0.1:6566"  # one port serves every part
TOKEN_ENV = "INFERSTACK_TOKEN"
PathLike = Path | str


@dataclass(frozen=True)
class Security:
    """How a client proves who it is and checks the server: see the module docstring."""

    token: str | None = None
    ca: PathLike | None = None
    cert: PathLike | None = None
    key: PathLike | None = None

    @classmethod
    def of(
        cls,
        token: str | None = None,
        ca: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
    ) -> Security:
        return cls(token if token is not None else os.environ.get(TOKEN_ENV) or None, ca, cert, key)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"{what} {path}: {exc.strerror or exc}") from exc


def channel_credentials(
    ca: PathLike | None, cert: PathLike | None = None, key: PathLike | None = None
) -> grpc.ChannelCredentials | None:
    """None (plaintext) unless a CA file or a client certificate is given; the CA verifies
    the server, the certificate and key identify the client (mutual TLS)."""
    if ca is None and cert is None:
        return None
    if (cert is None) != (key is None):
        raise InvalidArgumentError("a client certificate needs both cert and key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "ca") if ca is not None else None,
        private_key=_read(key, "key") if key is not None else None,
        certificate_chain=_read(cert, "cert") if cert is not None else None,
    )


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds the token to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = (*(details.metadata or ()), *self._metadata)
        return continuation(
            _CallDetails(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                details.wait_for_ready,
                getattr(details, "compression", None),
            ),
            request,
        )


class _AsyncBearerInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds the token to every call of a grpc.aio channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        new = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(new, request)


def _channel(target: str, options: Sequence[Option], security: Security) -> grpc.Channel:
    credentials = channel_credentials(security.ca, security.cert, security.key)
    options = channel_options(options)
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target, options=options)
    )
    metadata = security.metadata()
    return grpc.intercept_channel(channel, _BearerInterceptor(metadata)) if metadata else channel


def _async_channel(target: str, options: Sequence[Option], security: Security) -> grpc.aio.Channel:
    credentials = channel_credentials(security.ca, security.cert, security.key)
    metadata = security.metadata()
    interceptors: Any = [_AsyncBearerInterceptor(metadata)] if metadata else None
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=channel_options(options), interceptors=interceptors
        )
    return grpc.aio.insecure_channel(
        target, options=channel_options(options), interceptors=interceptors
    )


def channel_options(options: Sequence[Option] = DEFAULT_OPTIONS) -> list[Option]:
    return [*options, OWN_CONNECTION]


def _check(connections: int) -> None:
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections}")


def target_list(targets: Targets) -> list[str]:
    """One address or several (a list, or one string of comma-separated addresses)."""
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    found = [name.strip() for name in names if name.strip()]
    if not found:
        raise ValueError("give at least one server address")
    return found


class _Turns(Generic[StubT]):
    """Stubs per server; each call starts at the next server and lists every server once."""

    def __init__(self, per_server: list[list[StubT]]) -> None:
        self._servers = [itertools.cycle(stubs) for stubs in per_server]
        self._next = itertools.cycle(range(len(per_server)))

    def stubs(self) -> list[StubT]:
        first = next(self._next)  # itertools.cycle advances atomically under the GIL
        count = len(self._servers)
        return [next(self._servers[(first + i) % count]) for i in range(count)]


def fail_over(stubs: Sequence[StubT], timeout: float, call: Callable[[StubT, float], T]) -> T:
    """`call(stub, time_left)` on the first server, then on the next while each answers
    UNAVAILABLE, all within `timeout` seconds."""
    end = time.monotonic() + timeout
    for index, stub in enumerate(stubs):
        try:
            return call(stub, end - time.monotonic())
        except grpc.RpcError as exc:
            last = index == len(stubs) - 1
            if last or exc.code() not in FAIL_OVER_ON or time.monotonic() >= end:
                raise
    raise AssertionError("no server to call")  # pragma: no cover: stubs is never empty


async def fail_over_async(
    stubs: Sequence[StubT], timeout: float, call: Callable[[StubT, float], Awaitable[T]]
) -> T:
    """As `fail_over`, for grpc.aio calls."""
    end = time.monotonic() + timeout
    for index, stub in enumerate(stubs):
        try:
            return await call(stub, end - time.monotonic())
        except grpc.aio.AioRpcError as exc:
            last = index == len(stubs) - 1
            if last or exc.code() not in FAIL_OVER_ON or time.monotonic() >= end:
                raise
    raise AssertionError("no server to call")  # pragma: no cover: stubs is never empty


class ChannelPool(Generic[StubT]):
    """Blocking channels, `connections` to each server; `stubs()` lists one stub per server
    for a call, starting at the next server (thread-safe)."""

    def __init__(
        self,
        targets: Targets,
        make_stub: Callable[[grpc.Channel], StubT],
        connections: int = 2,
        options: Sequence[Option] = DEFAULT_OPTIONS,
        security: Security | None = None,
    ) -> None:
        _check(connections)
        security = security or Security.of()
        per_server = [
            [_channel(target, options, security) for _ in range(connections)]
            for target in target_list(targets)
        ]
        self.channels = [channel for channels in per_server for channel in channels]
        self._turns = _Turns([[make_stub(c) for c in channels] for channels in per_server])

    def stubs(self) -> list[StubT]:
        return self._turns.stubs()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class AsyncChannelPool(Generic[StubT]):
    """grpc.aio channels, `connections` to each server; `stubs()` as ChannelPool's."""

    def __init__(
        self,
        targets: Targets,
        make_stub: Callable[[grpc.aio.Channel], StubT],
        connections: int = 2,
        options: Sequence[Option] = DEFAULT_OPTIONS,
        security: Security | None = None,
    ) -> None:
        _check(connections)
        security = security or Security.of()
        per_server = [
            [_async_channel(target, options, security) for _ in range(connections)]
            for target in target_list(targets)
        ]
        self.channels = [channel for channels in per_server for channel in channels]
        self._turns = _Turns([[make_stub(c) for c in channels] for channels in per_server])

    def stubs(self) -> list[StubT]:
        return self._turns.stubs()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(grace=None)


class PooledClient(Generic[StubT]):
    """Base of the sync clients: their own connections, closed by `close()` or `with`.

    `target` is one server's address or several (then calls go round-robin and fail over,
    see the module docstring); `timeout` is every call's deadline unless a call gives its
    own; `connections` channels of its own per server, used in turn; `token`, `ca`, `cert`,
    `key` as the module docstring says. A client only names its stub (`_make_stub`)."""

    def __init__(
        self,
        target: Targets = DEFAULT_TARGET,
        timeout: float = 10.0,
        connections: int = 2,
        *,
        token: str | None = None,
        ca: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
    ) -> None:
        self.timeout = timeout
        security = Security.of(token, ca, cert, key)
        self._pool = ChannelPool(target, self._make_stub, connections, security=security)

    def _make_stub(self, channel: grpc.Channel) -> StubT:
        raise NotImplementedError

    def deadline(self, timeout: float | None) -> float:
        """A call's deadline in seconds: its own, else the client's."""
        return self.timeout if timeout is None else timeout

    def _call(self, call: Callable[[StubT, float], T], timeout: float | None = None) -> T:
        """`call(stub, time_left)` on a server, failing over to the next (module docstring)."""
        return fail_over(self._pool.stubs(), self.deadline(timeout), call)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPooledClient(Generic[StubT]):
    """Base of the asyncio clients: as PooledClient, closed by `close()` or `async with`."""

    def __init__(
        self,
        target: Targets = DEFAULT_TARGET,
        timeout: float = 10.0,
        connections: int = 2,
        *,
        token: str | None = None,
        ca: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
    ) -> None:
        self.timeout = timeout
        security = Security.of(token, ca, cert, key)
        self._pool = AsyncChannelPool(target, self._make_stub, connections, security=security)

    def _make_stub(self, channel: grpc.aio.Channel) -> StubT:
        raise NotImplementedError

    def deadline(self, timeout: float | None) -> float:
        """A call's deadline in seconds: its own, else the client's."""
        return self.timeout if timeout is None else timeout

    async def _call(
        self, call: Callable[[StubT, float], Awaitable[T]], timeout: float | None = None
    ) -> T:
        """As PooledClient._call, awaited."""
        return await fail_over_async(self._pool.stubs(), self.deadline(timeout), call)

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
