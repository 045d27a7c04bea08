"""Caches follow writes: after `inferstack ingest` or a Persist, every worker of every server
serves the new values within a second, with caches that would otherwise keep the old ones
for ten minutes; also while the shared cache (Redis) cannot be reached.

Two real servers with two workers each share one store: embedded (one data directory, the
in-process cache turned on) or distributed (Cassandra + Redis + ZooKeeper). "Every worker"
is checked, not hoped for: one client connection per worker, each mapped to the worker
that accepted it through /proc (the kernel spreads connections over SO_REUSEPORT sockets).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferstack.client import FeatureStoreClient
from inferstack.configstore.files import open_files
from inferstack.server.supervisor import free_port
from tests.conftest import ROOT
from tests.servers import RunningServer, inferstack, start_server

DEPLOY = str(ROOT / "deploy" / "distributed.yaml")
FRESH_WITHIN = 1.0  # seconds from the write returning to every worker serving it
KEYS = list(range(1, 101))
GROUP = "scores"
DEFINITIONS = f"""
entities:
  - name: user
    keys: [{{name: user_id, type: int64}}]
feature_groups:
  - name: {GROUP}
    entity: user
    cache: {{ttl: 10m, negative_ttl: 10m}}   # far longer than any test: only invalidation helps
    features:
      - {{name: version, type: int64, default: -1}}
      - {{name: label, type: string, default: none}}
"""


def write_version(directory: Path, version: int, keys: list[int]) -> Path:
    path = directory / f"scores-v{version}.parquet"
    table = pa.table(
        {
            "user_id": pa.array(keys, pa.int64()),
            "version": pa.array([version] * len(keys), pa.int64()),
            "label": pa.array([f"v{version}-{key}" for key in keys]),
        }
    )
    pq.write_table(table, path)
    return path


# -- one client per worker ------------------------------------------------------------------


def _socket_inodes(port: int, state: str) -> dict[int, int]:
    """inode -> remote port of loopback TCP sockets on local `port` in `state`."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                local, remote, st, inode = fields[1], fields[2], fields[3], int(fields[9])
                if int(local.rsplit(":", 1)[1], 16) == port and st == state:
                    found[inode] = int(remote.rsplit(":", 1)[1], 16)
    return found


def _owners(inodes: set[int]) -> dict[int, int]:
    """inode -> pid of the process holding it, for the given socket inodes."""
    owners: dict[int, int] = {}
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in inodes:
                        owners[inode] = pid
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return owners


@dataclass
class Worker:
    server: str
    pid: int
    client: FeatureStoreClient


def clients_per_worker(name: str, server: RunningServer, workers: int) -> list[Worker]:
    """Open single-connection clients until each of the server's workers accepted one."""
    port = int(server.grpc_target.rsplit(":", 1)[1])
    listening = _owners(set(_socket_inodes(port, "0A")))  # each worker's SO_REUSEPORT socket
    worker_pids = set(listening.values())
    assert len(worker_pids) == workers, f"{name}: expected {workers} workers, found {worker_pids}"
    chosen: dict[int, FeatureStoreClient] = {}
    spare: list[FeatureStoreClient] = []
    for _ in range(64):
        before = set(_socket_inodes(port, "01"))
        client = FeatureStoreClient(server.grpc_target, timeout=5, connections=1)
        client.retrieve("user", {"user_id": [0]})  # connects
        new = set(_socket_inodes(port, "01")) - before
        owner = set(_owners(new).values()) & worker_pids
        pid = owner.pop() if len(owner) == 1 else None
        if pid is not None and pid not in chosen:
            chosen[pid] = client
        else:
            spare.append(client)
        if len(chosen) == workers:
            break
    for client in spare:
        client.close()
    assert len(chosen) == workers, f"{name}: could not reach every worker ({chosen.keys()})"
    return [Worker(name, pid, client) for pid, client in sorted(chosen.items())]


# -- reading and waiting ----------------------------------------------------------------------


def versions(worker: Worker, keys: list[int]) -> list[int]:
    frame = worker.client.retrieve("user", {"user_id": keys}, [GROUP])
    return [int(v) for v in frame[f"{GROUP}.version"]]


def warm(workers: list[Worker], keys: list[int], version: int) -> None:
    """Every worker caches `version` of every key (read twice: storage, then the caches)."""
    for worker in workers:
        for _ in range(2):
            assert versions(worker, keys) == [version] * len(keys)


def expect_everywhere(workers: list[Worker], keys: list[int], version: int, after: str) -> None:
    """Poll every worker until each serves `version` for every key; fail after FRESH_WITHIN
    seconds saying which workers are how stale."""
    started = time.monotonic()
    waiting = list(workers)
    stale: dict[str, str] = {}
    while waiting:
        for worker in list(waiting):
            got = versions(worker, keys)
            old = [v for v in got if v != version]
            if not old:
                waiting.remove(worker)
                stale.pop(f"{worker.server}/{worker.pid}", None)
            else:
                stale[f"{worker.server}/{worker.pid}"] = (
                    f"{len(old)}/{len(keys)} keys still at version(s) {sorted(set(old))}"
                )
        elapsed = time.monotonic() - started
        if waiting and elapsed > FRESH_WITHIN:
            pytest.fail(
                f"{elapsed:.2f} s after {after} returned, {len(waiting)} of {len(workers)} "
                f"workers still serve old values (want version {version}): "
                + "; ".join(f"worker {name}: {what}" for name, what in stale.items())
            )
        time.sleep(0.02)


def persist_version(worker: Worker, keys: list[int], version: int) -> None:
    written = worker.client.persist(
        GROUP,
        {"user_id": keys},
        {
            "version": np.full(len(keys), version, np.int64),
            "label": [f"v{version}-{key}" for key in keys],
        },
    )
    assert written == len(keys)


# -- deployments ------------------------------------------------------------------------------


@dataclass
class Deployment:
    data: Path
    env: dict[str, str]
    servers: list[RunningServer]
    workers: list[Worker]

    def ingest(self, version: int, keys: list[int]) -> None:
        path = write_version(self.data, version, keys)
        done = inferstack("ingest", "-g", GROUP, str(path), data_dir=self.data, env=self.env)
        assert "rows written" in done.stdout, done.stdout + done.stderr


def deploy(data: Path, env: dict[str, str]) -> Iterator[Deployment]:
    (data / "defs.yaml").write_text(DEFINITIONS)
    for args in (
        ("apply", "-f", str(data / "defs.yaml")),
        ("ingest", "-g", GROUP, str(write_version(data, 1, KEYS))),
    ):
        done = inferstack(*args, data_dir=data, env=env, check=False)
        assert done.returncode == 0, f"inferstack {args[0]}: {done.stdout}{done.stderr}"
    servers: list[RunningServer] = []
    workers: list[Worker] = []
    try:
        for name in ("a", "b"):
            server = start_server(data, workers=2, env=env)
            servers.append(server)
            workers += clients_per_worker(name, server, 2)
        yield Deployment(data, env, servers, workers)
    finally:
        for worker in workers:
            worker.client.close()
        for server in servers:
            assert server.stop() == 0, server.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data = tmp_path_factory.mktemp("embedded")
    # The embedded default has no in-process cache (LMDB is one); turn it on to test it.
    env = {"INFERSTACK_CACHE__LOCAL__MAX_BYTES": "64MiB"}
    yield from deploy(data, env)


def distributed_env(
    cassandra: str, redis: str, zookeeper: str, run: str | None = None
) -> dict[str, str]:
    run = run or uuid.uuid4().hex[:8]
    return {
        "INFERSTACK_DEPLOYMENT": DEPLOY,
        "INFERSTACK_HOST": "127.0.0.1",
        "INFERSTACK_STORAGE__CONTACT_POINTS": f"[{cassandra}]",
        "INFERSTACK_STORAGE__KEYSPACE": f"fresh_{run}",
        "INFERSTACK_CACHE__SHARED__ADDRESS": redis,
        "INFERSTACK_CACHE__SHARED__PREFIX": f"fresh{run}:",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": redis,
        "INFERSTACK_INTERACTIONS__HOT__PREFIX": f"fih{run}:",
        "INFERSTACK_CONFIG__HOSTS": zookeeper,
        "INFERSTACK_CONFIG__ROOT": f"/fresh-{run}",
    }


@pytest.fixture(scope="module")
def distributed(
    cassandra_endpoint: str,
    redis_endpoint: str,
    zookeeper_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    env = distributed_env(cassandra_endpoint, redis_endpoint, zookeeper_endpoint)
    yield from deploy(tmp_path_factory.mktemp("distributed"), env)


@pytest.fixture(params=["embedded", pytest.param("distributed", marks=pytest.mark.services)])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    found: Deployment = request.getfixturevalue(request.param)
    return found


# -- the tests --------------------------------------------------------------------------------


def test_ingest_reaches_every_worker_of_every_server_within_a_second(
    deployment: Deployment,
) -> None:
    version = int(time.time())  # a version no earlier test wrote
    warm(deployment.workers, KEYS, versions(deployment.workers[0], KEYS)[0])
    deployment.ingest(version, KEYS)
    expect_everywhere(deployment.workers, KEYS, version, "inferstack ingest")


def test_persist_through_one_server_reaches_every_worker_within_a_second(
    deployment: Deployment,
) -> None:
    keys = KEYS[:20]
    current = versions(deployment.workers[0], keys)[0]
    warm(deployment.workers, keys, current)
    # Unrelated cached keys stay cached: a Persist forgets its keys, not the whole group.
    persist_version(deployment.workers[0], keys, current + 1)
    expect_everywhere(deployment.workers, keys, current + 1, "Persist on server a")
    # And again through the other server, to a key cached everywhere as absent.
    absent = [10_000 + int(time.time()) % 1000]
    for worker in deployment.workers:
        assert versions(worker, absent) == [-1]
    persist_version(deployment.workers[-1], absent, 7)
    expect_everywhere(deployment.workers, absent, 7, "Persist on server b")


# -- with the shared cache unreachable ---------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, so pausing it disturbs nobody else."""
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", process
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(10)


@pytest.mark.services
def test_persist_while_redis_is_unreachable_is_not_lost(
    cassandra_endpoint: str,
    zookeeper_endpoint: str,
    private_redis: tuple[str, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    address, redis_process = private_redis
    env = distributed_env(cassandra_endpoint, address, zookeeper_endpoint)
    for deployed in deploy(tmp_path, env):
        keys = KEYS[:30]
        warm(deployed.workers, keys, 1)  # in every in-process cache, and in Redis
        redis_process.send_signal(signal.SIGSTOP)  # Redis hangs: every call times out
        try:
            persist_version(deployed.workers[0], keys, 2)
            expect_everywhere(deployed.workers, keys, 2, "Persist with Redis unreachable")
        finally:
            redis_process.send_signal(signal.SIGCONT)
        # Redis is back with the old rows still in it: they must never be served again,
        # neither while breakers close nor after.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for worker in deployed.workers:
                assert versions(worker, keys) == [2] * len(keys), f"worker {worker.pid}"
            time.sleep(0.1)


# -- a server without a cache next to one with it ------------------------------------------------


def test_a_cacheless_server_publishes_keys_only_while_another_caches(tmp_path: Path) -> None:
    """The embedded default caches nothing, so its Persists publish no keys; once a server
    with a cache shares the data directory, they do, and reach its workers within a second."""
    data = tmp_path / "mixed"
    data.mkdir()
    (data / "defs.yaml").write_text(DEFINITIONS)
    inferstack("apply", "-f", str(data / "defs.yaml"), data_dir=data)
    inferstack("ingest", "-g", GROUP, str(write_version(data, 1, KEYS)), data_dir=data)
    feed = open_files(data).cache_feed
    keys = KEYS[:5]
    plain = start_server(data, workers=1)  # no cache: the embedded default
    (writer,) = clients_per_worker("plain", plain, 1)
    try:
        persist_version(writer, keys, 2)
        assert feed.load_state().sequence == 0  # nobody caches: nothing published
        caching = start_server(data, workers=2, env={"INFERSTACK_CACHE__LOCAL__MAX_BYTES": "64MiB"})
        readers = clients_per_worker("caching", caching, 2)
        try:
            warm(readers, keys, 2)
            persist_version(writer, keys, 3)
            published = feed.load_state().sequence
            assert published >= 1
            expect_everywhere([*readers, writer], keys, 3, "Persist on the cacheless server")
        finally:
            for reader in readers:
                reader.client.close()
            assert caching.stop() == 0
        persist_version(writer, keys, 4)  # the caching server is gone: nothing to tell
        assert feed.load_state().sequence == published
        assert versions(writer, keys) == [4] * len(keys)
    finally:
        writer.client.close()
        assert plain.stop() == 0
