"""The ZooKeeper config store when things go wrong: restarts, partitions, damaged data.

These tests restart ZooKeeper, so they run their own instance (started by
scripts/services.py in a private state directory) rather than the shared one other tests
use at the same time. Partitions of one client, with ZooKeeper itself still up, go through
a small TCP proxy that the test can cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from inferstack.configstore.base import ConfigStore
from inferstack.configstore.zookeeper import CorruptRegistryError, open_zookeeper
from inferstack.core.errors import InvalidArgumentError, UnavailableError
from inferstack.core.registry import Registry
from tests.contract.test_configstore_contract import (
    Recorder,
    apply_once,
    delete_zookeeper_root,
    next_registry,
    wait_until,
)

pytestmark = pytest.mark.services

SERVICES_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.py"
CATCH_UP = 5.0  # after ZooKeeper is reachable again, a watcher catches up within this
SESSION_TIMEOUT = 4.0  # the least the test ZooKeeper allows (2 x tickTime)


@dataclass
class PrivateZooKeeper:
    endpoint: str
    state_dir: Path

    def services(self, *args: str) -> None:
        env = {**os.environ, "INFERSTACK_SERVICES_DIR": str(self.state_dir)}
        done = subprocess.run(
            [sys.executable, str(SERVICES_SCRIPT), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"services.py {' '.join(args)}:\n{done.stdout}{done.stderr}"

    def stop(self) -> None:
        self.services("stop", "zookeeper")

    def start(self) -> None:
        self.services("start", "zookeeper")  # same data directory and port


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateZooKeeper]:
    state_dir = tmp_path_factory.mktemp("services")
    server = PrivateZooKeeper("", state_dir)
    server.services("up", "zookeeper")
    server.endpoint = json.loads((state_dir / "endpoints.json").read_text())["zookeeper"]
    try:
        yield server
    finally:
        server.services("down", "zookeeper")


@pytest.fixture
def root(zookeeper: PrivateZooKeeper) -> Iterator[str]:
    path = f"/inferstack-test/{uuid.uuid4().hex}"
    yield path
    delete_zookeeper_root(zookeeper.endpoint, path)


@pytest.fixture
def open_store(zookeeper: PrivateZooKeeper, root: str) -> Iterator[Any]:
    """Opens stores on the private ZooKeeper and `root`, and closes them after the test."""
    opened: list[ConfigStore] = []

    def open_one(hosts: str | None = None, **options: Any) -> ConfigStore:
        store = open_zookeeper(hosts or zookeeper.endpoint, root, **options)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


class CuttableProxy:
    """A loopback TCP proxy in front of ZooKeeper: cutting it partitions one client only."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop notices close()
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._linked = threading.Event()
        self._linked.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones, as a network partition would."""
        self._linked.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self._linked.set()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._linked.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(zookeeper: PrivateZooKeeper) -> Iterator[CuttableProxy]:
    cuttable = CuttableProxy(zookeeper.endpoint)
    yield cuttable
    cuttable.close()


@contextlib.contextmanager
def raw_client(hosts: str) -> Iterator[Any]:
    """A plain kazoo client, to look at and damage the znodes the store wrote."""
    client = KazooClient(hosts=hosts)
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


# -- connecting ------------------------------------------------------------------------------


def test_unreachable_address_fails_at_construction_naming_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a port where nobody speaks ZK
        address = f"127.0.0.1:{taken.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(UnavailableError, match=re.escape(address)):
        open_zookeeper(address, connect_timeout=1.0)
    assert time.monotonic() - started < 3.0


def test_malformed_address_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape("127.0.0.1:notaport")):
        open_zookeeper("127.0.0.1:notaport")


# -- layout ----------------------------------------------------------------------------------


def test_pointer_names_the_newest_version_and_old_versions_are_pruned(
    open_store: Any, root: str, zookeeper: PrivateZooKeeper
) -> None:
    store = open_store(keep_versions=3)
    for _ in range(8):
        newest = apply_once(store)
    with raw_client(zookeeper.endpoint) as client:
        pointer = json.loads(client.get(f"{root}/current")[0])
        versions = sorted(client.get_children(f"{root}/registry"))
        header = json.loads(client.get(f"{root}/registry/{pointer['node']}")[0])
    assert pointer["revision"] == newest.revision == 8
    assert [name[:12] for name in versions] == ["r-0000000006", "r-0000000007", "r-0000000008"]
    assert pointer["node"] == versions[-1]
    assert header["revision"] == 8
    assert header["chunks"] == 1
    assert store.registry.load() == newest


# -- damaged data ----------------------------------------------------------------------------


def version_header(payload: bytes, revision: int) -> bytes:
    """A header in the documented format, describing `payload` truthfully."""
    return json.dumps(
        {
            "format": 1,
            "revision": revision,
            "encoding": "zlib",
            "chunks": 1,
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    ).encode()


def write_damaged_version(client: Any, root: str, damage: str, good: Registry) -> None:
    """Write a version with `damage`, claiming revision 2, and point readers at it."""
    node = f"r-0000000002-{damage}"
    path = f"{root}/registry/{node}"
    payload = zlib.compress(good.model_copy(update={"revision": 2}).model_dump_json().encode())
    if damage == "garbage-header":
        client.create(path, b"\x00garbage")
    elif damage == "damaged-chunk":
        client.create(path, version_header(payload, 2))
        client.create(f"{path}/c-00000", payload[:-1] + bytes([payload[-1] ^ 0xFF]))
    elif damage == "missing-chunk":
        client.create(path, version_header(payload, 2))
    elif damage in ("not-a-registry", "wrong-revision"):
        text = (
            b'{"revision": 2, "entities": 5}'
            if damage == "not-a-registry"
            else good.model_copy(update={"revision": 7}).model_dump_json().encode()
        )
        broken = zlib.compress(text)
        client.create(path, version_header(broken, 2))
        client.create(f"{path}/c-00000", broken)
    # "missing-version": the pointer names a node that is not there at all.
    client.set(f"{root}/current", json.dumps({"revision": 2, "node": node}).encode())


@pytest.mark.parametrize(
    "damage",
    [
        "garbage-header",
        "damaged-chunk",
        "missing-chunk",
        "not-a-registry",
        "wrong-revision",
        "missing-version",
    ],
)
def test_damaged_version_is_never_delivered_and_a_later_good_one_is(
    damage: str,
    open_store: Any,
    root: str,
    zookeeper: PrivateZooKeeper,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer, watcher = open_store(), open_store()
    first = apply_once(writer)
    watcher.registry.load()
    seen = Recorder()
    watcher.registry.watch(seen)
    caplog.set_level(logging.WARNING, logger="inferstack.configstore.zookeeper")

    with raw_client(zookeeper.endpoint) as client:
        write_damaged_version(client, root, damage, first)
    wait_until(
        lambda: "skipping broken definitions" in caplog.text, 2.0, "the watch to log the damage"
    )
    assert seen.registries == []
    with pytest.raises(CorruptRegistryError):
        watcher.registry.load()

    repaired = next_registry(first).model_copy(update={"revision": 3})
    writer.registry.save(repaired, 2)  # the pointer claims 2: apply on top of it
    wait_until(seen.saw(3), 1.0, "the repaired revision")
    assert seen.registries == [repaired]
    assert watcher.registry.load() == repaired


# -- ZooKeeper restarts ----------------------------------------------------------------------


def test_watcher_keeps_quiet_while_zookeeper_is_down_and_catches_up_after_restart(
    open_store: Any, zookeeper: PrivateZooKeeper
) -> None:
    writer = open_store()
    watcher = open_store(request_timeout=1.0)
    first = apply_once(writer)
    assert watcher.registry.load() == first
    seen = Recorder()
    watcher.registry.watch(seen)

    zookeeper.stop()
    try:
        # Calls fail in bounded time naming the address; nothing half-done is left behind.
        with pytest.raises(UnavailableError, match=re.escape(zookeeper.endpoint)):
            watcher.registry.load()
        with pytest.raises(UnavailableError, match=re.escape(zookeeper.endpoint)):
            watcher.registry.save(next_registry(first), first.revision)
        assert seen.registries == []  # the server keeps the definitions it has
    finally:
        zookeeper.start()

    second = next_registry(first)
    # The same expected revision: the failed save did not apply.
    writer.registry.save(second, first.revision)
    took = wait_until(seen.saw(second.revision), CATCH_UP, "the watcher after the restart")
    assert seen.registries == [second]
    assert watcher.registry.load() == second
    print(f"change seen {took:.2f}s after the first save following the restart")


# -- partitions of one client ----------------------------------------------------------------


def expire_session_of(store: ConfigStore, hosts: str, root: str) -> None:
    """Wait (while `store` is cut off) until ZooKeeper has expired its session.

    An ephemeral node of the store's own session disappears exactly when the server expires
    the session, which is a sharper signal than sleeping for the session timeout.
    """
    probe = f"{root}/session-probe"
    with raw_client(hosts) as client:
        wait_until(
            lambda: client.exists(probe) is None, SESSION_TIMEOUT * 3, "the session to expire"
        )


@pytest.mark.parametrize("outage", ["session-kept", "session-expired"])
def test_change_made_while_cut_off_is_picked_up_after_reconnect(
    outage: str,
    open_store: Any,
    root: str,
    zookeeper: PrivateZooKeeper,
    proxy: CuttableProxy,
) -> None:
    writer = open_store()
    watcher = open_store(proxy.endpoint, session_timeout=SESSION_TIMEOUT, request_timeout=1.0)
    apply_once(writer)
    watcher.registry.load()
    seen = Recorder()
    watcher.registry.watch(seen)
    # Test-only look inside: the session id and an ephemeral node of that session.
    client = watcher.connection.client
    session_before = client.client_id[0]
    client.create(f"{root}/session-probe", ephemeral=True)

    proxy.cut()
    second = apply_once(writer)  # ZooKeeper is up; only the watcher cannot hear about it
    if outage == "session-expired":
        expire_session_of(watcher, zookeeper.endpoint, root)
    else:
        time.sleep(1.0)
    assert seen.registries == []
    proxy.restore()

    took = wait_until(seen.saw(second.revision), CATCH_UP, "the watcher after reconnecting")
    assert seen.registries == [second]
    session_after = client.client_id[0]
    assert (session_after == session_before) == (outage == "session-kept")
    third = apply_once(writer)  # and the watch is still armed afterwards
    wait_until(seen.saw(third.revision), 1.0, "the next change")
    assert seen.registries == [second, third]
    print(f"{outage}: change seen {took:.2f}s after the link came back")
