"""Acknowledged means durable: crashes of the interaction store's parts lose no event that was
acknowledged and double none.

- Redis (the hot tier) killed with SIGKILL during a stream of ingests, before any sweep: every
  event whose Ingest returned OK is read back after the restart, and the sweep then moves them
  all to the cold tier. The Redis is one these tests start for themselves with
  scripts/services.py in a services dir of their own (`stop --kill` then `start`, which keeps
  its port and its append-only file, fsynced on every write), so nobody else's Redis is touched.
- A sweeper killed mid-flush (stalled inside the cold write, or after the cold writes and
  before the release): after its lease another sweeper moves every user again, and every cold
  history holds each event exactly once. Run on the embedded LMDB tiers and on Redis +
  Cassandra; the killed sweeper is a subprocess on the same tiers.
- The embedded server killed with SIGKILL (supervisor and workers) during a stream of
  ingests while its sweepers run: restarted on the same data dir, it serves every
  acknowledged event once, and moves the users the dead sweepers had claimed.

Ingest streams record which calls returned OK; events of calls that failed may or may not have
been stored (the reply can be lost after the write), so they are only checked for duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
import yaml

from inferstack import metrics
from inferstack.client.interactions import InteractionsClient
from inferstack.core.documents import DefinitionsFile
from inferstack.core.events import EventBatch, History
from inferstack.core.registry import Registry, plan
from inferstack.core.rowformat import VarColumn
from inferstack.interactions.cold.base import ColdStore, ColdWrite
from inferstack.interactions.cold.cassandra import CassandraColdStore
from inferstack.interactions.cold.lmdb import LmdbColdStore
from inferstack.interactions.coldrow import decode_history
from inferstack.interactions.events import InteractionCatalog, decode_rows
from inferstack.interactions.hot.base import Claim, HotEvent, HotRange, HotTier, Release
from inferstack.interactions.hot.lmdb import LmdbHotTier
from inferstack.interactions.hot.redis import RedisHotTier
from inferstack.interactions.service import InteractionService, SweepResult, run_sweeper
from inferstack.kv.settings import CassandraSettings
from tests.conftest import ROOT, SERVICES_SCRIPT
from tests.helpers import drop_keyspace
from tests.servers import RunningServer, inferstack, start_server

pytestmark = pytest.mark.services

TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: source, type: string, default: home}
    hot_cap: 50
    inactivity: 2s
  - name: order
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: quantity, type: int32, default: 1}
    hot_cap: 50
    inactivity: 1h
"""
TYPE_NAMES = ("click", "order")
BOUND = 30.0  # seconds any wait here may take before the test fails (a guard against hangs)
LEASE = 30.0  # the killed sweeper's lease, in its own clock
AHEAD = 7200.0  # the killed sweeper's clock runs this far ahead: every user is due for it


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_for(condition: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {bound} s waiting for {what}"
        time.sleep(0.05)


def registry() -> Registry:
    parsed = DefinitionsFile.model_validate(yaml.safe_load(TYPES))
    return plan(Registry(), [], [], [], parsed.interaction_types).registry


def event_ids(history: History) -> list[str]:
    column = history.columns["event_id"]
    assert isinstance(column, VarColumn)
    return [value.decode() for value in column.to_list()]


# ---- ingest streams against a server -------------------------------------------------------


@dataclass
class IngestStream:
    """Threads ingesting clicks with unique ids, each thread for users of its own; records
    the events of every call that returned OK, and how many calls failed."""

    target: str
    threads: int = 4
    users_per_thread: int = 5
    acknowledged: dict[int, set[str]] = field(default_factory=dict)  # user -> event ids
    sent: dict[int, set[str]] = field(default_factory=dict)  # every event of every call
    failures: int = 0
    acks: int = 0  # events acknowledged
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    @property
    def users(self) -> list[int]:
        return [
            thread * 1000 + n
            for thread in range(self.threads)
            for n in range(self.users_per_thread)
        ]

    def start(self) -> None:
        for user in self.users:
            self.acknowledged[user] = set()
            self.sent[user] = set()
        for thread in range(self.threads):
            worker = threading.Thread(target=self._run, args=(thread,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=BOUND)
            assert not worker.is_alive(), "an ingest thread did not stop"

    def _run(self, thread: int) -> None:
        users = [thread * 1000 + n for n in range(self.users_per_thread)]
        with InteractionsClient(self.target, timeout=5, connections=1) as client:
            call = 0
            while not self._stop.is_set():
                call += 1
                ids = [f"t{thread}-c{call}-u{user}-{k}" for user in users for k in range(2)]
                owners = [user for user in users for _ in range(2)]
                stamp = now_ms() - 1000
                batch = EventBatch(
                    "click",
                    ids,
                    owners,
                    [call] * len(ids),
                    [stamp] * len(ids),
                    {"source": ["stream"] * len(ids)},
                )
                with self._lock:
                    for user, event in zip(owners, ids, strict=True):
                        self.sent[user].add(event)
                try:
                    client.ingest_batches([batch])
                except grpc.RpcError:
                    with self._lock:
                        self.failures += 1
                    time.sleep(0.02)  # the server or its hot tier is away: do not spin
                    continue
                with self._lock:
                    for user, event in zip(owners, ids, strict=True):
                        self.acknowledged[user].add(event)
                    self.acks += len(ids)


def report(case: str, stream: IngestStream, stored: Mapping[int, set[str]]) -> None:
    """What the stream saw, for whoever runs with -s."""
    unacknowledged = sum(len(ids - stream.acknowledged[user]) for user, ids in stored.items())
    print(
        f"\n{case}: {stream.acks} events acknowledged, {stream.failures} calls failed, "
        f"{unacknowledged} events stored whose call failed"
    )


def read_clicks(client: InteractionsClient, user: int) -> tuple[list[str], int]:
    """(event ids newest first, how many are hot); retried while the server recovers."""
    deadline = time.monotonic() + BOUND
    while True:
        try:
            found = client.get(user, ["click"], limit=10_000)["click"]
            return found.event_ids.tolist(), found.hot
        except grpc.RpcError as error:
            code = error.code()
            assert code == grpc.StatusCode.UNAVAILABLE, error
            assert time.monotonic() < deadline, f"reads did not recover: {error}"
            time.sleep(0.2)


def check_stored(client: InteractionsClient, stream: IngestStream) -> dict[int, set[str]]:
    """Every acknowledged event is stored, nothing twice, nothing never sent; what is stored."""
    stored: dict[int, set[str]] = {}
    for user in stream.users:
        ids, _ = read_clicks(client, user)
        assert len(ids) == len(set(ids)), f"user {user}: an event is stored twice"
        missing = stream.acknowledged[user] - set(ids)
        assert not missing, f"user {user}: {len(missing)} acknowledged events lost"
        assert set(ids) <= stream.sent[user]
        stored[user] = set(ids)
    return stored


def sweep_everything(client: InteractionsClient) -> SweepResult:
    """Sweep calls until nobody is due (the users' inactivity must have passed)."""
    total = SweepResult()
    deadline = time.monotonic() + BOUND
    while True:
        assert time.monotonic() < deadline, "sweeps did not finish"
        try:
            swept = client.sweep()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            continue
        if swept.users == 0:
            return total
        total.users += swept.users
        total.events += swept.events
        total.lost_claims += swept.lost_claims


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    types = tmp_path / "interactions.yaml"
    types.write_text(TYPES)
    data = tmp_path / "data"
    inferstack("apply", "-f", str(types), data_dir=data)
    return data


# ---- Redis killed between ingest and sweep -------------------------------------------------


@dataclass(frozen=True)
class PrivateRedis:
    endpoint: str
    services_dir: Path

    def services(self, *args: str) -> None:
        env = {**os.environ, "INFERSTACK_SERVICES_DIR": str(self.services_dir)}
        subprocess.run(
            [sys.executable, str(SERVICES_SCRIPT), *args], check=True, timeout=120, env=env
        )


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A Redis of our own (scripts/services.py, its redis.conf: appendfsync always), so
    killing it disturbs no other test run."""
    services_dir = tmp_path_factory.mktemp("services")
    started = PrivateRedis("", services_dir)
    started.services("up", "redis")
    endpoints = json.loads((services_dir / "endpoints.json").read_text())
    running = PrivateRedis(endpoints["redis"], services_dir)
    try:
        with redis.Redis.from_url(f"redis://{running.endpoint}") as admin:
            assert admin.config_get("appendfsync") == {"appendfsync": "always"}
        yield running
    finally:
        running.services("down", "redis")


def test_acknowledged_events_survive_redis_killed_before_the_sweep(
    private_redis: PrivateRedis, data_dir: Path
) -> None:
    env = {
        "INFERSTACK_INTERACTIONS__HOT__TYPE": "redis",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": private_redis.endpoint,
        "INFERSTACK_INTERACTIONS__HOT__PREFIX": f"ihd{uuid.uuid4().hex[:8]}:",
        "INFERSTACK_INTERACTIONS__SWEEPER__ENABLED": "false",  # the test sweeps, after
    }
    server = start_server(data_dir, env=env)
    stream = IngestStream(server.grpc_target)
    redis_down = False
    try:
        stream.start()
        wait_for(lambda: stream.acks >= 400, "acknowledged ingests")
        private_redis.services("stop", "--kill", "redis")  # SIGKILL: a crash
        redis_down = True
        failures = stream.failures
        wait_for(lambda: stream.failures >= failures + 5, "ingests failing without Redis")
        private_redis.services("start", "redis")  # same port, same append-only file
        redis_down = False
        acks = stream.acks
        wait_for(lambda: stream.acks >= acks + 200, "ingests acknowledged again")
        stream.stop()

        with InteractionsClient(server.grpc_target) as client:
            stored = check_stored(client, stream)
            report("redis killed", stream, stored)
            time.sleep(2.5)  # the click inactivity: every user is due now
            swept = sweep_everything(client)
            assert swept.users == len(stream.users)
            assert swept.events == sum(len(ids) for ids in stored.values())
            for user in stream.users:
                ids, hot = read_clicks(client, user)
                assert hot == 0 and len(ids) == len(set(ids)) and set(ids) == stored[user]
    finally:
        stream.stop()
        if redis_down:  # leave our Redis running for the next test
            private_redis.services("start", "redis")
        assert server.stop() == 0


# ---- the embedded server killed during ingest ----------------------------------------------


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (the supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def kill_server(server: RunningServer) -> None:
    tree = process_tree(server.process.pid)
    assert len(tree) >= 3, f"expected a supervisor and two workers, found {tree}"
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.process.wait(timeout=BOUND)
    wait_for(lambda: all(gone(pid) for pid in tree), "the server's processes to die")


def test_acknowledged_events_survive_the_embedded_server_killed_during_ingest(
    data_dir: Path,
) -> None:
    env = {
        "INFERSTACK_INTERACTIONS__SWEEPER__INTERVAL": "0.2s",  # sweeps run when it dies
        "INFERSTACK_INTERACTIONS__SWEEPER__LEASE": "2s",  # dead sweepers' claims end soon
    }
    server = start_server(data_dir, env=env)
    stream = IngestStream(server.grpc_target)
    try:
        stream.start()
        wait_for(lambda: stream.acks >= 1000, "acknowledged ingests")
        kill_server(server)
        failures = stream.failures
        wait_for(lambda: stream.failures >= failures + 5, "ingests failing without a server")
    finally:
        stream.stop()
        if server.process.poll() is None:
            server.stop()

    restarted = start_server(data_dir, env=env)
    try:
        with InteractionsClient(restarted.grpc_target) as client:
            stored = check_stored(client, stream)
            report("server killed", stream, stored)
            # The dead sweepers' claims run out and the new sweepers move every user.
            pending = set(stream.users)

            def all_cold() -> bool:
                for user in list(pending):
                    ids, hot = read_clicks(client, user)
                    assert len(ids) == len(set(ids)) and set(ids) == stored[user]
                    if hot == 0:
                        pending.discard(user)
                return not pending

            wait_for(all_cold, "every user to reach the cold tier")
    finally:
        assert restarted.stop() == 0


# ---- a sweeper killed mid-flush ------------------------------------------------------------


@dataclass(frozen=True)
class SharedTiers:
    """Where the hot and cold tiers live, so another process can open the same ones."""

    kind: str  # "lmdb" or "redis" (+ Cassandra)
    root: str = ""
    redis: str = ""
    prefix: str = ""
    cassandra: str = ""
    keyspace: str = ""


async def open_service(
    tiers: SharedTiers, clock: Callable[[], float], lease: float = LEASE
) -> InteractionService:
    stored = registry()
    hot: HotTier
    cold: ColdStore
    if tiers.kind == "lmdb":
        hot = LmdbHotTier(Path(tiers.root) / "hot")
        cold = LmdbColdStore(Path(tiers.root) / "cold")
    else:
        hot = RedisHotTier(tiers.redis, prefix=tiers.prefix, timeout=5.0)
        cold = CassandraColdStore(
            CassandraSettings(
                contact_points=[tiers.cassandra], keyspace=tiers.keyspace, request_timeout=10.0
            )
        )
    await cold.prepare(stored)
    return InteractionService(hot, cold, InteractionCatalog(stored), lease=lease, clock=clock)


def stall(marker: Path, where: str) -> None:
    """Tell the test where we are, then hang (blocking the loop) until killed."""
    marker.write_text(where)
    time.sleep(600)


class ColdStoreWrapper:
    """The cold store it wraps, call for call: a test overrides the call it disturbs."""

    def __init__(self, inner: ColdStore) -> None:
        self.inner = inner

    async def prepare(self, registry: Registry) -> None:
        await self.inner.prepare(registry)

    async def read(
        self, type: str, users: Sequence[bytes], *, latest: bool = False
    ) -> list[bytes | None]:
        return await self.inner.read(type, users, latest=latest)

    async def write(self, type: str, rows: Sequence[ColdWrite], fence: int) -> list[bytes]:
        return await self.inner.write(type, rows, fence)

    async def close(self) -> None:
        await self.inner.close()


class ColdWriteStalls(ColdStoreWrapper):
    """A cold store whose first write never happens: the sweeper hangs inside it."""

    def __init__(self, inner: ColdStore, marker: Path) -> None:
        super().__init__(inner)
        self.marker = marker

    async def write(self, type: str, rows: Sequence[ColdWrite], fence: int) -> list[bytes]:
        stall(self.marker, f"writing {len(rows)} cold rows of {type}")
        return []


class ReleaseStalls:
    """A hot tier whose release never happens: the cold rows are written, the hot events stay."""

    def __init__(self, inner: HotTier, marker: Path) -> None:
        self.inner = inner
        self.marker = marker

    async def add(
        self, events: Sequence[HotEvent], caps: Mapping[str, int], deadlines: Mapping[bytes, int]
    ) -> None:
        await self.inner.add(events, caps, deadlines)

    async def read(
        self, user: bytes, type: str, limit: int | None = None, since: int | None = None
    ) -> list[tuple[int, bytes]]:
        return await self.inner.read(user, type, limit, since)

    async def read_range(
        self, user: bytes, type: str, limit: int | None = None, since: int | None = None
    ) -> HotRange:
        return await self.inner.read_range(user, type, limit, since)

    async def fence(self) -> int:
        return await self.inner.fence()

    async def claim(self, now: int, lease: int, limit: int) -> list[Claim]:
        return await self.inner.claim(now, lease, limit)

    async def events_of(
        self, user: bytes, types: Sequence[str]
    ) -> dict[str, list[tuple[int, bytes]]]:
        return await self.inner.events_of(user, types)

    async def release(
        self,
        claim: Claim,
        moved: Mapping[str, Sequence[bytes]],
        complete_from: Mapping[str, int] | None = None,
    ) -> bool:
        stall(self.marker, "releasing after the cold writes")
        return False

    async def release_many(self, releases: Sequence[Release]) -> list[bool]:
        stall(self.marker, "releasing after the cold writes")
        return []

    async def events_of_many(
        self, users: Sequence[bytes], types: Sequence[str]
    ) -> list[dict[str, list[tuple[int, bytes]]]]:
        return await self.inner.events_of_many(users, types)

    async def load(
        self,
        user: bytes,
        events: Mapping[str, Sequence[tuple[int, bytes]]],
        caps: Mapping[str, int],
        deadline: int,
        complete_from: Mapping[str, int] | None = None,
        fence: int | None = None,
    ) -> None:
        await self.inner.load(user, events, caps, deadline, complete_from, fence)

    async def scheduled(self, user: bytes) -> int | None:
        return await self.inner.scheduled(user)

    async def close(self) -> None:
        await self.inner.close()


def stalled_sweep(config: str) -> None:
    """The killed sweeper's process: `python -c` runs this with a JSON config."""
    settings = json.loads(config)
    asyncio.run(
        _stalled_sweep(
            SharedTiers(**settings["tiers"]), settings["stall"], Path(settings["marker"])
        )
    )


async def _stalled_sweep(tiers: SharedTiers, where: str, marker: Path) -> None:
    service = await open_service(tiers, clock=lambda: time.time() + AHEAD)
    if where == "cold-write":
        service.cold = ColdWriteStalls(service.cold, marker)
    else:
        service.hot = ReleaseStalls(service.hot, marker)
    await service.sweep(limit=1000)
    raise SystemExit("the sweep returned although it was meant to stall")


class Clock:
    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture(params=["lmdb", "redis"])
async def tiers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SharedTiers]:
    if request.param == "lmdb":
        yield SharedTiers("lmdb", root=str(tmp_path / "tiers"))
        return
    redis_endpoint = request.getfixturevalue("redis_endpoint")
    cassandra_endpoint = request.getfixturevalue("cassandra_endpoint")
    run = uuid.uuid4().hex[:10]
    shared = SharedTiers(
        "redis",
        redis=redis_endpoint,
        prefix=f"ihk{run}:",
        cassandra=cassandra_endpoint,
        keyspace=f"test_ixk_{run}",
    )
    yield shared
    await asyncio.to_thread(drop_keyspace, cassandra_endpoint, shared.keyspace)
    with redis.Redis.from_url(f"redis://{redis_endpoint}") as admin:
        keys = list(admin.scan_iter(match=f"{shared.prefix}*", count=1000))
        if keys:
            admin.delete(*keys)


def _batch(type_name: str, users: Sequence[int], per_user: int, tag: str) -> EventBatch:
    ids = [f"{type_name}-{user}-{tag}{k}" for user in users for k in range(per_user)]
    stamp = now_ms() - 60_000
    stamps = [stamp + k * 10 for _ in users for k in range(per_user)]
    return EventBatch(
        type_name,
        ids,
        [user for user in users for _ in range(per_user)],
        [k for _ in users for k in range(per_user)],
        stamps,
    )


async def _cold_ids(service: InteractionService, type_name: str, user: int) -> list[str]:
    """The event ids in the user's raw cold row, as often as the row holds them."""
    (encoded,) = service.catalog.encode_users(type_name, [user])
    (blob,) = await service.cold.read(type_name, [encoded])
    rows = [] if blob is None else decode_history(blob)
    return event_ids(decode_rows(service.catalog, type_name, rows))


@pytest.mark.parametrize("where", ["cold-write", "release"])
async def test_a_sweeper_killed_mid_flush_loses_nothing_and_doubles_nothing(
    tiers: SharedTiers, where: str, tmp_path: Path
) -> None:
    clock = Clock()
    service = await open_service(tiers, clock)
    users = list(range(1, 21))
    expected: dict[str, dict[int, set[str]]] = {
        name: {u: set() for u in users} for name in TYPE_NAMES
    }

    async def ingest(batch: EventBatch) -> None:
        await service.ingest([batch])
        for user, event in zip(batch.users, batch.event_ids, strict=True):
            expected[batch.type][int(user)].add(event)

    marker = tmp_path / "stalled"
    log = tmp_path / "sweeper.log"
    sweeper: subprocess.Popen[bytes] | None = None
    try:
        await ingest(_batch("click", users, 5, "a"))
        await ingest(_batch("order", users, 2, "a"))
        first_clicks = {user: set(ids) for user, ids in expected["click"].items()}
        code = (
            "import sys; from tests.integration.test_interactions_durability import "
            "stalled_sweep; stalled_sweep(sys.argv[1])"
        )
        config = json.dumps({"tiers": asdict(tiers), "stall": where, "marker": str(marker)})
        with log.open("wb") as output:
            sweeper = subprocess.Popen(
                [sys.executable, "-c", code, config], cwd=ROOT, stdout=output, stderr=output
            )
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert sweeper.poll() is None, f"the sweeper exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the sweeper never stalled:\n{log.read_text()}"
            await asyncio.sleep(0.05)
        # While it hangs with its users claimed, more events of some of them arrive.
        await ingest(_batch("click", users[:5], 3, "late"))
        sweeper.send_signal(signal.SIGKILL)
        assert sweeper.wait(timeout=BOUND) == -signal.SIGKILL
    finally:
        if sweeper is not None and sweeper.poll() is None:
            sweeper.kill()
            sweeper.wait()

    try:
        for name in TYPE_NAMES:  # nothing is lost meanwhile: reads merge hot and cold
            for user in users:
                (found,) = await service.get(user, [name], limit=1000)
                assert sorted(event_ids(found)) == sorted(expected[name][user])

        # The moment it died: before any cold row was written, or after all of them.
        for user in users:
            cold = await _cold_ids(service, "click", user)
            assert sorted(cold) == ([] if where == "cold-write" else sorted(first_clicks[user]))
        # No one else may take the users before the killed sweeper's lease runs out...
        clock.ahead = AHEAD
        assert (await service.sweep(limit=1000)).users == 0
        # ...and after it, one sweep moves every user, every event once.
        clock.ahead = AHEAD + LEASE + 1
        swept = await service.sweep(limit=1000)
        total_events = sum(len(ids) for per_type in expected.values() for ids in per_type.values())
        assert (swept.users, swept.events, swept.lost_claims) == (len(users), total_events, 0)
        assert (await service.sweep(limit=1000)).users == 0

        for name in TYPE_NAMES:
            for user in users:
                cold = await _cold_ids(service, name, user)
                assert len(cold) == len(set(cold)), f"{name} of user {user}: doubled in cold"
                assert set(cold) == expected[name][user]
                (encoded,) = service.catalog.encode_users(name, [user])
                assert await service.hot.read(encoded, name) == []
    finally:
        await service.close()


# ---- a sweeper frozen past its lease -------------------------------------------------------


class FreezesBeforeWriting(ColdStoreWrapper):
    """A cold store that, when told, stops its whole process (SIGSTOP to itself) right before
    a write: the sweeper has claimed, read the hot events and the cold rows, and merged. It
    stays frozen, as a GC or VM pause would leave it, until the test sends SIGCONT."""

    def __init__(self, inner: ColdStore) -> None:
        super().__init__(inner)
        self.freeze = False

    async def write(self, type: str, rows: Sequence[ColdWrite], fence: int) -> list[bytes]:
        if self.freeze:
            self.freeze = False
            os.kill(os.getpid(), signal.SIGSTOP)
        return await self.inner.write(type, rows, fence)


def sweeper_process(config: str) -> None:
    """A sweeper of its own (`python -c` runs this): each line "AHEAD FREEZE" on stdin runs
    one sweep with its clock AHEAD seconds ahead, frozen before its cold write if FREEZE is 1;
    the result goes to stdout as a JSON line."""
    asyncio.run(_sweeper_process(SharedTiers(**json.loads(config))))


async def _sweeper_process(tiers: SharedTiers) -> None:
    clock = Clock()
    service = await open_service(tiers, clock)
    cold = service.cold = FreezesBeforeWriting(service.cold)
    for line in sys.stdin:  # blocking, but nothing else runs in this process
        ahead, freeze = line.split()
        clock.ahead = float(ahead)
        cold.freeze = freeze == "1"
        result = await service.sweep(limit=1000)
        print(json.dumps(asdict(result)), flush=True)
    await service.close()


class SweeperProcess:
    def __init__(self, tiers: SharedTiers, log: Path) -> None:
        code = (
            "import sys; from tests.integration.test_interactions_durability import "
            "sweeper_process; sweeper_process(sys.argv[1])"
        )
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(asdict(tiers))],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
        )

    def sweep(self, ahead: float, freeze: bool) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{ahead} {int(freeze)}\n".encode())
        self.process.stdin.flush()

    def wait_frozen(self) -> None:
        def stopped() -> bool:
            assert self.process.poll() is None, f"the sweeper exited:\n{self.log.read_text()}"
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] == "T"

        wait_for(stopped, "the sweeper to freeze before its cold write", bound=60)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def result(self) -> dict[str, int]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        assert ready, f"the sweeper did not answer:\n{self.log.read_text()}"
        line = self.process.stdout.readline()
        assert line, f"the sweeper exited:\n{self.log.read_text()}"
        answer: dict[str, int] = json.loads(line)
        return answer

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=BOUND)


async def test_a_sweeper_frozen_past_its_lease_overwrites_nothing(
    tiers: SharedTiers, tmp_path: Path
) -> None:
    """The auditor's sequence: A freezes between its cold read and write; B takes the user
    over after A's lease and freezes too; A wakes and finishes, then sweeps the user again
    after more events; B wakes last with a merge that lacks them. Every event must stay."""
    service = await open_service(tiers, Clock())
    user = 7
    sent: list[str] = []

    async def ingest(tag: str) -> None:
        batch = _batch("click", [user], 10, tag)
        await service.ingest([batch])
        sent.extend(batch.event_ids)

    a = SweeperProcess(tiers, tmp_path / "a.log")
    b = SweeperProcess(tiers, tmp_path / "b.log")
    try:
        await ingest("a")
        a.sweep(AHEAD, freeze=True)  # the user is due for A: it claims, reads, merges
        a.wait_frozen()
        await ingest("b")
        b.sweep(AHEAD + LEASE + 1, freeze=True)  # A's lease has run out for B
        b.wait_frozen()
        a.resume()  # A writes what it merged; its claim is B's now, so it releases nothing
        assert a.result()["users"] == 0
        await ingest("c")
        a.sweep(AHEAD + 2 * (LEASE + 1), freeze=False)  # B's lease ran out: A takes the user
        assert a.result()["users"] == 1  # ... moves a, b and c to the cold tier
        b.resume()  # B wakes with a merge of a and b only
        late = b.result()
        assert (late["users"], late["lost_claims"]) == (0, 1)
    finally:
        a.close()
        b.close()
    try:
        (found,) = await service.get(user, ["click"], limit=1000)
        assert len(event_ids(found)) == len(sent), f"{len(event_ids(found))} of {len(sent)}"
        assert sorted(event_ids(found)) == sorted(sent)
        assert found.hot == 0
        assert sorted(await _cold_ids(service, "click", user)) == sorted(sent)
    finally:
        await service.close()


# ---- sweeps while the hot tier is away -----------------------------------------------------


def _closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def test_sweeps_while_redis_is_away_log_one_line_and_keep_retrying(
    redis_endpoint: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every failed sweep is counted; the log gets one line for the cause (no traceback) per
    interval of warnings, however many sweeps fail; when Redis answers again, sweeps resume."""
    gone = _closed_port()
    stored = registry()
    prefix = f"ihw{uuid.uuid4().hex[:8]}:"
    cold = LmdbColdStore(tmp_path / "cold")
    await cold.prepare(stored)
    clock = Clock()
    service = InteractionService(
        RedisHotTier(gone, prefix=prefix, timeout=0.2), cold, InteractionCatalog(stored),
        clock=clock,
    )  # fmt: skip
    failures = metrics.SWEEP_FAILURES.labels("UnavailableError")
    before = failures._value.get()
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="inferstack.interactions.service")
    sweeper = asyncio.create_task(run_sweeper(service, stop, interval=0.02))
    try:
        deadline = time.monotonic() + BOUND
        while failures._value.get() - before < 20:
            assert time.monotonic() < deadline, "the sweeper stopped retrying"
            await asyncio.sleep(0.02)
        lines = [r for r in caplog.records if r.name == "inferstack.interactions.service"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert lines[0].levelno == logging.WARNING and not lines[0].exc_info
        assert f"Redis at redis://{gone} failed to claim users" in lines[0].getMessage()
        assert "\n" not in lines[0].getMessage()

        # Redis is back (here: another address): the same loop sweeps the user that is due.
        await service.hot.close()
        service.hot = RedisHotTier(redis_endpoint, prefix=prefix, timeout=5.0)
        await service.ingest([_batch("click", [5], 3, "back")])
        clock.ahead = AHEAD
        encoded = service.catalog.encode_users("click", [5])[0]
        while await service.hot.read(encoded, "click"):
            assert time.monotonic() < deadline + BOUND, "the sweeper did not sweep again"
            await asyncio.sleep(0.05)
        assert len(await _cold_ids(service, "click", 5)) == 3
    finally:
        stop.set()
        await sweeper
        await service.close()
        with redis.Redis.from_url(f"redis://{redis_endpoint}") as admin:
            keys = list(admin.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                admin.delete(*keys)
