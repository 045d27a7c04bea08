"""Several gRPC channels to one target, used in turn: one client, several TCP connections.

gRPC Python shares one connection among all channels of a process that go to the same
target with the same options (the global subchannel pool). Server workers share their port
through SO_REUSEPORT and the kernel balances connections, not calls, so a client on one
connection would only ever reach one worker. Each channel here gets its own subchannel pool,
hence its own connection, and calls go round-robin over the channels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, TypeVar

import grpc

StubT = TypeVar("StubT")
Option = tuple[str, Any]

DEFAULT_OPTIONS: tuple[Option, ...] = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)
OWN_CONNECTION: Option = ("grpc.use_local_subchannel_pool", 1)


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
    ) -> None:
        _check(connections)
        self.channels = [
            grpc.insecure_channel(target, options=channel_options(options))
            for _ in range(connections)
        ]
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
    ) -> None:
        _check(connections)
        self.channels = [
            grpc.aio.insecure_channel(target, options=channel_options(options))
            for _ in range(connections)
        ]
        self._stubs = itertools.cycle([make_stub(channel) for channel in self.channels])

    def stub(self) -> StubT:
        return next(self._stubs)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(grace=None)


class PooledClient(Generic[StubT]):
    """Base of the sync clients: their own connections, closed by `close()` or `with`."""

    def __init__(
        self,
        target: str,
        make_stub: Callable[[grpc.Channel], StubT],
        timeout: float,
        connections: int,
    ) -> None:
        self.timeout = timeout
        self._pool = ChannelPool(target, make_stub, connections)

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
    """Base of the asyncio clients: their own connections, closed by `close()` or `async with`."""

    def __init__(
        self,
        target: str,
        make_stub: Callable[[grpc.aio.Channel], StubT],
        timeout: float,
        connections: int,
    ) -> None:
        self.timeout = timeout
        self._pool = AsyncChannelPool(target, make_stub, connections)

    def deadline(self, timeout: float | None) -> float:
        """A call's deadline in seconds: its own, else the client's."""
        return self.timeout if timeout is None else timeout

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
