"""CassandraStorage under faults: it fails fast with UnavailableError and recovers by itself.

Faults are real, against the real Apache Cassandra of scripts/services.py:

- addresses where nothing answers: a closed port, a listener that never speaks CQL, a host
  name that does not resolve;
- a hung server: a TCP proxy between the adapter and Cassandra stops forwarding (what a
  GC pause, a partition or a frozen node looks like to a client), then forwards again;
- a stopped server: `services.py stop cassandra`, then `start cassandra` (same port, same
  data), in the middle of a read load.

The last test stops the services dir's Cassandra for 20-40 s. It runs last in this module
and restarts Cassandra even when it fails; while it runs, other test runs that share the
services dir lose Cassandra too, so give concurrent runs their own INFERSTACK_SERVICES_DIR.
Select or deselect it with `-k stopped_cassandra`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest

from inferstack.core.errors import UnavailableError
from inferstack.kv.cassandra import CassandraStorage, parse_contact_point
from inferstack.kv.settings import CassandraSettings
from tests.helpers import drop_keyspace, registry_from
from tests.servers import services

pytestmark = pytest.mark.services

TIMEOUT = 1.0  # the adapter's request timeout in these tests
BOUND = TIMEOUT + 2.0  # no call may take longer: a bound against hangs, not a latency claim
GROUP = "profile"
REGISTRY = registry_from(
    {
        "entities": [{"name": "user", "keys": [{"name": "user_id", "type": "int64"}]}],
        "feature_groups": [
            {"name": GROUP, "entity": "user", "features": [{"name": "age", "type": "int32"}]}
        ],
    }
)
ROWS = {n.to_bytes(8, "big"): b"row-%d" % n for n in range(200)}
KEYS = list(ROWS)


# --- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def timed(call: Awaitable[Any]) -> tuple[float, BaseException | None]:
    began = time.monotonic()
    try:
        await call
    except Exception as exc:
        return time.monotonic() - began, exc
    return time.monotonic() - began, None


@pytest.fixture
async def keyspace(cassandra_endpoint: str) -> AsyncIterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    await asyncio.to_thread(drop_keyspace, cassandra_endpoint, name)


async def open_storage(endpoint: str, keyspace: str) -> CassandraStorage:
    storage = CassandraStorage(
        CassandraSettings(contact_points=[endpoint], keyspace=keyspace, request_timeout=TIMEOUT)
    )
    await storage.prepare(REGISTRY)
    await storage.write(GROUP, list(ROWS.items()), None)
    assert await storage.read(GROUP, KEYS) == list(ROWS.values())
    return storage


async def recovered(storage: CassandraStorage, within: float) -> float:
    """Seconds until a read succeeds again (with the right rows); fails after `within`."""
    began = time.monotonic()
    while True:
        try:
            rows = await storage.read(GROUP, KEYS)
        except UnavailableError:
            assert time.monotonic() - began < within, f"no recovery within {within:g}s"
            await asyncio.sleep(0.2)
            continue
        assert rows == list(ROWS.values())
        return time.monotonic() - began


@dataclass
class Proxy:
    """Forwards TCP to Cassandra; `hang()` stops forwarding (connections stay open)."""

    target: tuple[str, int]
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    server: asyncio.Server | None = None

    async def start(self) -> str:
        self.flowing.set()
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def hang(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(1 << 16):
                await self.flowing.wait()  # hung: hold the bytes, like a frozen peer
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sink.close()


# --- nothing answers ------------------------------------------------------------------------


async def test_connect_to_a_closed_port_names_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    storage = CassandraStorage(CassandraSettings(contact_points=[address]))
    elapsed, error = await timed(storage.connect())
    assert isinstance(error, UnavailableError)
    assert f"cassandra at {address} did not answer" in str(error)
    assert "refused" in str(error).lower()
    assert elapsed < BOUND
    await storage.close()


async def test_connect_to_a_silent_listener_gives_up_within_the_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        storage = CassandraStorage(CassandraSettings(contact_points=[address], connect_timeout=1.0))
        elapsed, error = await timed(storage.connect())
    assert isinstance(error, UnavailableError)
    assert address in str(error)
    assert elapsed < 1.0 * 2 + 2.0  # the control connection, then the pool, each 1 s at most
    await storage.close()


async def test_connect_to_an_unresolvable_host_names_it() -> None:
    storage = CassandraStorage(CassandraSettings(contact_points=["no-such-host.invalid:9042"]))
    _, error = await timed(storage.connect())
    assert isinstance(error, UnavailableError)
    assert "no-such-host.invalid:9042" in str(error)
    assert "resolve" in str(error)
    await storage.close()


async def test_closed_storage_refuses_calls() -> None:
    storage = CassandraStorage(CassandraSettings(contact_points=["127.0.0.1:9"]))
    await storage.close()
    with pytest.raises(UnavailableError, match="closed"):
        await storage.read(GROUP, KEYS)


# --- a hung server --------------------------------------------------------------------------


async def test_hung_cassandra_fails_calls_within_the_timeout_and_recovers(
    cassandra_endpoint: str, keyspace: str
) -> None:
    proxy = Proxy(parse_contact_point(cassandra_endpoint))
    address = await proxy.start()
    storage = await open_storage(address, keyspace)
    try:
        proxy.hang()
        for call in (
            storage.read(GROUP, KEYS),
            storage.read(GROUP, KEYS[:1]),
            storage.write(GROUP, list(ROWS.items()), None),
        ):
            elapsed, error = await timed(call)
            assert isinstance(error, UnavailableError), error
            assert f"cassandra at {address} did not answer" in str(error)
            assert TIMEOUT * 0.9 <= elapsed < BOUND  # waited for the timeout, not longer
        proxy.resume()
        assert await recovered(storage, within=10.0) < 10.0
    finally:
        await storage.close()
        await proxy.close()


# --- a stopped server (slow: runs last) -----------------------------------------------------


@dataclass
class ReadLoad:
    """Reads all keys in a loop; records how long each call took and how it ended."""

    storage: CassandraStorage
    slowest: float = 0.0
    reads: int = 0
    errors: list[BaseException] = field(default_factory=list)
    wrong: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            elapsed, error = await timed(self._check())
            self.slowest = max(self.slowest, elapsed)
            self.reads += 1
            if error is not None:
                self.errors.append(error)
            await asyncio.sleep(0.05)

    async def _check(self) -> None:
        if await self.storage.read(GROUP, KEYS) != list(ROWS.values()):
            self.wrong += 1


async def managed_by_services_script(endpoint: str) -> bool:
    with contextlib.suppress(AssertionError):
        return endpoint in await services("status", "cassandra")
    return False


async def test_stopped_cassandra_fails_fast_and_recovers_after_start(
    cassandra_endpoint: str, keyspace: str
) -> None:
    # This test stops and starts Cassandra, so it must be one the project's script runs.
    assert await managed_by_services_script(cassandra_endpoint), (
        f"cassandra at {cassandra_endpoint} is not one scripts/services.py runs"
    )
    storage = await open_storage(cassandra_endpoint, keyspace)
    load = ReadLoad(storage)
    stop_load = asyncio.Event()
    loader = asyncio.create_task(load.run(stop_load))
    restarted = False
    try:
        began = time.monotonic()
        await services("stop", "cassandra")
        stopped_after = time.monotonic() - began

        for call in (storage.read(GROUP, KEYS), storage.write(GROUP, list(ROWS.items()), None)):
            elapsed, error = await timed(call)
            assert isinstance(error, UnavailableError), error
            assert f"cassandra at {cassandra_endpoint} did not answer" in str(error)
            assert elapsed < BOUND

        began = time.monotonic()
        await services("start", "cassandra")
        restarted = True
        started_after = time.monotonic() - began
        # By itself: the same storage object, no reconnect call.
        recovery = await recovered(storage, within=30.0)
        await storage.write(GROUP, list(ROWS.items()), 60.0)
    finally:
        if not restarted:
            await services("start", "cassandra")  # leave Cassandra up for whoever runs next
        stop_load.set()
        await loader
        await storage.close()

    print(
        f"\nstop took {stopped_after:.1f}s, start {started_after:.1f}s, reads back "
        f"{recovery:.1f}s after start; load: {load.reads} reads, {len(load.errors)} failed, "
        f"slowest {load.slowest:.2f}s; first error: {load.errors[0] if load.errors else None}"
    )
    assert load.errors, "the read load never noticed that Cassandra was down"
    assert all(isinstance(error, UnavailableError) for error in load.errors), load.errors
    assert load.slowest < BOUND
    assert load.wrong == 0
