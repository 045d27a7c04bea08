"""Several gRPC channels to one target, used in turn: one client, several TCP connections.

gRPC Python shares one connection among all channels of a process that go to the same
target with the same options (the global subchannel pool). Server workers share their port
through SO_REUSEPORT and the kernel balances connections, not calls, so a client on one
connection would only ever reach one worker. Each channel here gets its own subchannel pool,
hence its own connection, and calls go round-robin over the channels.

Security: `token` (default: the INFERSTACK_TOKEN variable) is sent on every call as
`authorization: Bearer <token>`; `ca` (a PEM file) makes the channels TLS, verifying the
server against it, and `cert` + `key` present a client certificate (mutual TLS).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, Self, TypeVar

import grpc

from inferstack.core.errors import InvalidArgumentError

StubT = TypeVar("StubT")
Option = tuple[str, Any]

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


class ChannelPool(Generic[StubT]):
    """Blocking channels; `stub()` hands out their stubs in turn (thread-safe)."""

    def __init__(
        self,
        target: str,
        make_stub: Callable[[grpc.Channel], StubT],
        connections: int = 2,
        options: Sequence[Option] = DEFAULT_OPTIONS,
        security: Security | None = None,
    ) -> None:
        _check(connections)
        security = security or Security.of()
        self.channels = [_channel(target, options, security) for _ in range(connections)]
        self._stubs = itertools.cycle([make_stub(channel) for channel in self.channels])

    def stub(self) -> StubT:
        return next(self._stubs)  # itertools.cycle advances atomically under the GIL

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class AsyncChannelPool(Generic[StubT]):
    """grpc.aio channels; `stub()` hands out their stubs in turn."""

    def __init__(
        self,
        target: str,
        make_stub: Callable[[grpc.aio.Channel], StubT],
        connections: int = 2,
        options: Sequence[Option] = DEFAULT_OPTIONS,
        security: Security | None = None,
    ) -> None:
        _check(connections)
        security = security or Security.of()
        self.channels = [_async_channel(target, options, security) for _ in range(connections)]
        self._stubs = itertools.cycle([make_stub(channel) for channel in self.channels])

    def stub(self) -> StubT:
        return next(self._stubs)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(grace=None)


class PooledClient(Generic[StubT]):
    """Base of the sync clients: their own connections, closed by `close()` or `with`.

    `timeout` is every call's deadline unless a call gives its own; `connections` channels
    of its own, used in turn; `token`, `ca`, `cert`, `key` as the module docstring says.
    A client only names its stub (`_make_stub`)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
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
        target: str = DEFAULT_TARGET,
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

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
