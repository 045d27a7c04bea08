"""The interaction store served by `inferstack serve`: ingest, reads, an idle user swept to the
cold tier and hydrated back, bad input over gRPC and HTTP, the CLI, and the same round trip on
deploy/distributed.yaml (Redis hot tier, Cassandra cold tier) with two servers sweeping.

Embedded servers run with a 2 s inactivity for `click` and a sweeper interval of 0.2 s, so an
idle user reaches the cold tier within seconds; `order` keeps its users hot for an hour, so
tests that read hot events are not raced by the sweeper. Users are numbered per module, so no
two tests share one.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from kazoo.client import KazooClient

from inferstack.client.interactions import EventHistory, InteractionsClient, ingest_request
from inferstack.core.events import EventBatch
from inferstack.proto.interactions.v1 import interactions_pb2 as pb
from inferstack.proto.interactions.v1 import interactions_pb2_grpc as pb_grpc
from tests.conftest import ROOT
from tests.helpers import drop_keyspace
from tests.servers import RunningServer, inferstack, start_server

TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: price, type: float32, default: 0}
      - {name: source, type: string, default: home}
    hot_cap: 5
    inactivity: 2s
  - name: order
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: quantity, type: int32, default: 1}
      - {name: price, type: float32, default: 0}
      - {name: source, type: string, default: web}
    hot_cap: 100
    inactivity: 1h
"""
CLICK_CAP = 5
SWEEP_FAST = {"INFERSTACK_INTERACTIONS__SWEEPER__INTERVAL": "0.2s"}
SWEEP_OFF = {"INFERSTACK_INTERACTIONS__SWEEPER__ENABLED": "false"}
IDLE_BOUND = 30.0  # seconds a user idle for 2 s may take to reach the cold tier (hang guard)
FUTURE_MS = 10 * 60 * 1000  # further ahead than the 5 minutes a timestamp may be
DEPLOY = str(ROOT / "deploy" / "distributed.yaml")
USERS = itertools.count(1)


def now_ms() -> int:
    return int(time.time() * 1000)


def events(type_name: str, user: int, count: int, tag: str = "") -> EventBatch:
    """`count` events of one user, one second apart, oldest first, the newest 1 s ago."""
    newest = now_ms() - 1000
    attributes: dict[str, Any] = {
        "price": np.arange(count, dtype=np.float32) + np.float32(0.25),
        "source": ["app" if i % 2 else "web" for i in range(count)],
    }
    if type_name == "order":
        attributes["quantity"] = np.arange(1, count + 1, dtype=np.int32)
    return EventBatch(
        type=type_name,
        event_ids=[f"{type_name}-{user}-{tag}{i}" for i in range(count)],
        users=[user] * count,
        items=[1000 + i for i in range(count)],
        timestamps=[newest - (count - 1 - i) * 1000 for i in range(count)],
        attributes=attributes,
    )


def newest_first(batch: EventBatch) -> list[str]:
    order = np.argsort(-np.asarray(batch.timestamps, dtype=np.int64), kind="stable")
    return [batch.event_ids[i] for i in order]


def history(
    client: InteractionsClient, user: int, type_name: str, limit: int = 1000
) -> EventHistory:
    return client.get(user, [type_name], limit=limit)[type_name]


def wait_until_cold(
    client: InteractionsClient, users: Sequence[int], type_name: str, counts: dict[int, int]
) -> None:
    """Until every user's events of `type_name` are all served from the cold tier."""
    deadline = time.monotonic() + IDLE_BOUND
    waiting = list(users)
    while waiting:
        waiting = [
            user
            for user in waiting
            if (found := history(client, user, type_name)).hot or found.count != counts[user]
        ]
        assert time.monotonic() < deadline, f"users {waiting[:10]} not swept in {IDLE_BOUND} s"
        if waiting:
            time.sleep(0.2)


def check_round_trip(ingest_to: InteractionsClient, read_from: InteractionsClient) -> None:
    """Ingest -> idle -> everything cold (same ids) -> hydrate -> the newest `cap` hot again;
    hydrate twice changes nothing. One user under the cap (swept after 2 s idle), one over it
    (due at once: new events beyond the cap are moved to the cold tier, never dropped)."""
    for count in (3, CLICK_CAP + 3):
        user = next(USERS)
        batch = events("click", user, count)
        assert ingest_to.ingest_batches([batch]) == count
        wait_until_cold(read_from, [user], "click", {user: count})
        cold = history(read_from, user, "click")
        assert cold.event_ids.tolist() == newest_first(batch)
        assert cold.hot == 0

        # Hydrating every type schedules the user at the longest inactivity (order: 1 h), so
        # the sweeper leaves the hydrated events alone while we look at them.
        assert read_from.hydrate(user) == {"click": min(CLICK_CAP, count), "order": 0}
        hydrated = history(ingest_to, user, "click")
        assert hydrated.event_ids.tolist() == newest_first(batch)
        assert hydrated.hot == min(CLICK_CAP, count)
        newest = history(ingest_to, user, "click", limit=min(CLICK_CAP, count))
        assert newest.hot == newest.count == min(CLICK_CAP, count)

        assert read_from.hydrate(user) == {"click": min(CLICK_CAP, count), "order": 0}
        again = history(ingest_to, user, "click")
        assert again.event_ids.tolist() == hydrated.event_ids.tolist()
        assert again.timestamps.tolist() == hydrated.timestamps.tolist()
        assert again.hot == hydrated.hot


# ---- embedded ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def types_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("types") / "interactions.yaml"
    path.write_text(TYPES)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, types_file: Path) -> Path:
    data = tmp_path_factory.mktemp("embedded")
    applied = inferstack("apply", "-f", str(types_file), data_dir=data)
    assert "interaction type click" in applied.stdout
    return data


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[RunningServer]:
    running = start_server(data_dir, env=SWEEP_FAST)
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(server: RunningServer) -> Iterator[InteractionsClient]:
    with InteractionsClient(server.grpc_target, timeout=10) as opened:
        yield opened


def test_ingest_then_last_n_newest_first_with_the_values_sent(client: InteractionsClient) -> None:
    user = next(USERS)
    batch = events("order", user, 6)
    shuffled = [5, 0, 3, 1, 4, 2]  # arrival order must not matter
    sent = EventBatch(
        "order",
        [batch.event_ids[i] for i in shuffled],
        [user] * 6,
        [batch.items[i] for i in shuffled],
        [batch.timestamps[i] for i in shuffled],
        {name: np.asarray(values)[shuffled] for name, values in batch.attributes.items()},
    )
    assert client.ingest_batches([sent]) == 6

    last = history(client, user, "order", limit=4)
    assert last.count == last.hot == 4
    assert last.event_ids.tolist() == newest_first(batch)[:4]
    assert last.timestamps.tolist() == sorted(batch.timestamps, reverse=True)[:4]
    assert last["product_id"].tolist() == [1005, 1004, 1003, 1002]
    assert last["quantity"].tolist() == [6, 5, 4, 3]
    np.testing.assert_array_equal(last["price"], np.array([5.25, 4.25, 3.25, 2.25], np.float32))
    assert last["source"].tolist() == ["app", "web", "app", "web"]
    assert last["quantity"].dtype == np.int32 and last["price"].dtype == np.float32

    everything = client.get(user, limit=100)  # every type, by name
    assert set(everything) == {"click", "order"}
    assert everything["click"].count == 0
    assert everything["order"].event_ids.tolist() == newest_first(batch)


def test_duplicates_are_stored_once(client: InteractionsClient) -> None:
    user = next(USERS)
    batch = events("order", user, 4)
    assert client.ingest_batches([batch]) == 4
    assert client.ingest_batches([batch]) == 4  # a retried call: accepted, stored once
    twice = EventBatch(  # the same event twice in one batch, and once more in a second one
        "order",
        [batch.event_ids[0], batch.event_ids[0]],
        [user, user],
        [batch.items[0]] * 2,
        [batch.timestamps[0]] * 2,
        {name: np.asarray(values)[[0, 0]] for name, values in batch.attributes.items()},
    )
    client.ingest_batches([twice, twice])
    stored = history(client, user, "order")
    assert stored.event_ids.tolist() == newest_first(batch)
    assert len(set(stored.event_ids.tolist())) == stored.count == 4


def test_get_since_a_time(client: InteractionsClient) -> None:
    user = next(USERS)
    batch = events("order", user, 5)
    client.ingest_batches([batch])
    since = sorted(batch.timestamps)[2]  # the third oldest and everything newer
    found = client.get(user, ["order"], since=since)["order"]
    assert found.event_ids.tolist() == newest_first(batch)[:3]
    assert (found.timestamps >= since).all()
    assert client.get(user, ["order"], limit=2, since=since)["order"].count == 2
    assert client.get(user, ["order"], since=now_ms())["order"].count == 0


def test_idle_user_goes_cold_then_hydrate_brings_the_newest_back(
    client: InteractionsClient,
) -> None:
    check_round_trip(client, client)


def test_an_event_delivered_again_after_hydrate_is_returned_once(
    client: InteractionsClient,
) -> None:
    """A retried call or a Kafka redelivery may bring back an event the user's hydrated hot
    tier already holds (as loaded from the cold tier): reads still return it once."""
    user = next(USERS)
    batch = events("click", user, 4)
    client.ingest_batches([batch])
    wait_until_cold(client, [user], "click", {user: 4})
    client.hydrate(user)
    newest = newest_first(batch)
    again = EventBatch(
        "click",
        [batch.event_ids[-1]],
        [user],
        [batch.items[-1]],
        [batch.timestamps[-1]],
        {name: np.asarray(values)[[-1]] for name, values in batch.attributes.items()},
    )
    client.ingest_batches([again])
    assert history(client, user, "click", limit=2).event_ids.tolist() == newest[:2]
    assert history(client, user, "click").event_ids.tolist() == newest


# ---- bad input -----------------------------------------------------------------------------


def _with_events(batch: EventBatch, **changes: Any) -> EventBatch:
    fields = {
        "type": batch.type,
        "event_ids": batch.event_ids,
        "users": batch.users,
        "items": batch.items,
        "timestamps": batch.timestamps,
        "attributes": batch.attributes,
    }
    return EventBatch(**{**fields, **changes})


@dataclass(frozen=True)
class BadCase:
    name: str
    expected: tuple[str, ...]  # each must appear in the error message


GRPC_CASES = [
    BadCase("unknown type", ("batch 1", "unknown interaction type 'nope'", "click, order")),
    BadCase("missing event id", ("batch 1, event 1", "event_id")),
    BadCase("missing user column", ("batch 1", "user_id")),
    BadCase("item of the wrong type", ("batch 1, event 1", "product_id", "int64")),
    BadCase("attribute of the wrong type", ("batch 1", "quantity", "int32")),
    BadCase("timestamp in the future", ("batch 1, event 1", "ts", "5 minutes")),
]


def _bad_grpc_request(case: str, good: EventBatch, user: int) -> pb.IngestRequest:
    bad = events("order", user, 2, tag="bad-")
    now = now_ms()
    if case == "unknown type":
        bad = _with_events(bad, type="nope", attributes={})
    elif case == "missing event id":
        bad = _with_events(bad, event_ids=[bad.event_ids[0], ""])
    elif case == "item of the wrong type":
        bad = _with_events(bad, items=["5", "five"])
    elif case == "attribute of the wrong type":
        bad = _with_events(
            bad, attributes={**bad.attributes, "quantity": np.array([1.5, 2.5], np.float64)}
        )
    elif case == "timestamp in the future":
        bad = _with_events(bad, timestamps=[now, now + FUTURE_MS])
    request = ingest_request([good, bad])
    if case == "missing user column":
        request.batches[1].ClearField("user")
    return request


@pytest.mark.parametrize("case", GRPC_CASES, ids=lambda case: case.name)
def test_bad_grpc_ingest_names_the_field_and_event_and_stores_nothing(
    server: RunningServer, client: InteractionsClient, case: BadCase
) -> None:
    user = next(USERS)
    good = events("order", user, 3)
    request = _bad_grpc_request(case.name, good, user)
    with (
        grpc.insecure_channel(server.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        pb_grpc.InteractionsStub(channel).Ingest(request, timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    for part in case.expected:
        assert part in error.details(), error.details()
    # The good batch of the same request was not stored either: a request is all or nothing.
    assert client.get(user, limit=100)["order"].count == 0
    # And the server keeps serving.
    assert client.ingest_batches([good]) == 3
    assert history(client, user, "order").event_ids.tolist() == newest_first(good)


HTTP_CASES = [
    BadCase("unknown type", ("batch 1", "unknown interaction type 'nope'")),
    BadCase("null user", ("batch 1, event 1", "user_id")),
    BadCase("missing timestamps", ("batch 1", "timestamps", "missing")),
    BadCase("string where a number belongs", ("batch 1, event 1", "price", "float32")),
    BadCase("fraction where an integer belongs", ("batch 1, event 1", "quantity", "int32")),
    BadCase("number where a string belongs", ("batch 1, event 1", "source", "string")),
    BadCase("timestamp in the future", ("batch 1, event 1", "ts", "5 minutes")),
]


def _json_batch(batch: EventBatch) -> dict[str, Any]:
    return {
        "type": batch.type,
        "event_ids": list(batch.event_ids),
        "user_id": list(batch.users),
        "product_id": list(batch.items),
        "timestamps": list(batch.timestamps),
        "attributes": {name: np.asarray(v).tolist() for name, v in batch.attributes.items()},
    }


def _bad_json_batch(case: str, user: int) -> dict[str, Any]:
    bad = _json_batch(events("order", user, 2, tag="bad-"))
    now = now_ms()
    if case == "unknown type":
        bad = {
            "type": "nope",
            "event_ids": ["x"],
            "users": [user],
            "items": [1],
            "timestamps": [now],
        }
    elif case == "null user":
        bad["user_id"] = [user, None]
    elif case == "missing timestamps":
        del bad["timestamps"]
    elif case == "string where a number belongs":
        bad["attributes"]["price"] = [1.5, "cheap"]
    elif case == "fraction where an integer belongs":
        bad["attributes"]["quantity"] = [1, 2.5]
    elif case == "number where a string belongs":
        bad["attributes"]["source"] = ["app", 3]
    elif case == "timestamp in the future":
        bad["timestamps"] = [now, now + FUTURE_MS]
    return bad


def post(server: RunningServer, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{server.http_base}{path}", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda case: case.name)
def test_bad_http_ingest_names_the_field_and_event_and_stores_nothing(
    server: RunningServer, case: BadCase
) -> None:
    user = next(USERS)
    good = _json_batch(events("order", user, 3))
    status, body = post(
        server, "/v1/interactions/ingest", {"batches": [good, _bad_json_batch(case.name, user)]}
    )
    assert status == 400, body
    assert body["error"]["code"] == "INVALID_ARGUMENT"
    for part in case.expected:
        assert part in body["error"]["message"], body["error"]["message"]
    status, body = post(server, "/v1/interactions/get", {"user_id": user, "limit": 100})
    assert status == 200 and body["histories"]["order"]["count"] == 0
    status, body = post(server, "/v1/interactions/ingest", {"batches": [good]})
    assert (status, body) == (200, {"stored": 3})
    status, body = post(server, "/v1/interactions/get", {"user": user, "types": ["order"]})
    assert status == 400  # neither limit nor since: refused, naming both
    assert "limit" in body["error"]["message"] and "since" in body["error"]["message"]
    status, body = post(
        server, "/v1/interactions/get", {"user": user, "types": ["order"], "limit": 10}
    )
    assert status == 200
    assert body["histories"]["order"]["columns"]["event_id"] == good["event_ids"][::-1]


# ---- CLI -----------------------------------------------------------------------------------


def test_cli_ingests_a_parquet_file_and_gets_json(
    server: RunningServer, data_dir: Path, tmp_path: Path
) -> None:
    user = next(USERS)
    batch = events("order", user, 6)
    table = pa.table(
        {
            "event_id": batch.event_ids,
            "user_id": pa.array(batch.users, pa.int64()),
            "product_id": pa.array(batch.items, pa.int64()),
            "ts": pa.array(batch.timestamps, pa.int64()),
            "quantity": pa.array(batch.attributes["quantity"], pa.int32()),
            "price": pa.array(batch.attributes["price"], pa.float32()),
            "source": batch.attributes["source"],
            "note": ["ignored"] * 6,
        }
    )
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path)
    target = ("--target", server.grpc_target)
    ingested = inferstack(
        "interactions", "ingest", "-t", "order", str(path), *target, "--json", data_dir=data_dir
    )
    summary = json.loads(ingested.stdout)
    assert summary["events_stored"] == 6 and summary["events_rejected"] == 0
    assert summary["ignored_columns"] == {str(path): ["note"]}

    got = inferstack(
        "interactions",
        "get",
        str(user),
        "-t",
        "order",
        "-n",
        "4",
        *target,
        "--json",
        data_dir=data_dir,
    )
    orders = json.loads(got.stdout)["order"]
    assert orders["count"] == 4 and orders["hot"] == 4
    assert orders["columns"]["event_id"] == newest_first(batch)[:4]
    assert orders["columns"]["quantity"] == [6, 5, 4, 3]
    assert orders["columns"]["price"] == [5.25, 4.25, 3.25, 2.25]
    assert orders["columns"]["source"] == ["app", "web", "app", "web"]


def test_cli_ingest_reports_the_rejected_batch_and_the_event_in_the_file(
    server: RunningServer, data_dir: Path, tmp_path: Path
) -> None:
    user = next(USERS)
    batch = events("order", user, 6)
    stamps = list(batch.timestamps)
    stamps[4] = now_ms() + FUTURE_MS  # the second batch of 3 holds it
    path = tmp_path / "orders.csv"
    lines = ["event_id,user_id,product_id,ts"]
    rows = zip(batch.event_ids, batch.items, stamps, strict=True)
    lines += [f"{event},{user},{item},{ts}" for event, item, ts in rows]
    path.write_text("\n".join(lines) + "\n")
    result = inferstack(
        "interactions",
        "ingest",
        "-t",
        "order",
        str(path),
        "--target",
        server.grpc_target,
        "--batch-events",
        "3",
        "--json",
        data_dir=data_dir,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events_stored"] == 3 and summary["events_rejected"] == 3
    (rejected,) = summary["rejected_batches"]
    assert (rejected["batch"], rejected["first_event"], rejected["event"]) == (1, 3, 4)
    assert "ts" in rejected["reason"] and "future" in rejected["reason"]
    with InteractionsClient(server.grpc_target) as client:
        stored = history(client, user, "order")
    assert stored.event_ids.tolist() == newest_first(batch)[3:]  # the first batch only


# ---- distributed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    env: dict[str, str]
    prefix: str  # of every hot-tier key of this module's servers


@pytest.fixture(scope="module")
def deployment(
    cassandra_endpoint: str,
    redis_endpoint: str,
    zookeeper_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
    types_file: Path,
) -> Iterator[Deployment]:
    """deploy/distributed.yaml pointed at this module's own keyspace, prefixes and root."""
    run = uuid.uuid4().hex[:8]
    keyspace, root, prefix = f"it_ix_{run}", f"/it-ix-{run}", f"ihix{run}"
    env = {
        "INFERSTACK_DEPLOYMENT": DEPLOY,
        "INFERSTACK_HOST": "127.0.0.1",
        "INFERSTACK_STORAGE__CONTACT_POINTS": f"[{cassandra_endpoint}]",
        "INFERSTACK_STORAGE__KEYSPACE": keyspace,
        "INFERSTACK_CACHE__SHARED__ADDRESS": redis_endpoint,
        "INFERSTACK_CACHE__SHARED__PREFIX": f"itix{run}:",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": redis_endpoint,
        "INFERSTACK_INTERACTIONS__HOT__PREFIX": f"{prefix}a:",
        "INFERSTACK_CONFIG__HOSTS": zookeeper_endpoint,
        "INFERSTACK_CONFIG__ROOT": root,
    }
    unused = tmp_path_factory.mktemp("unused-data-dir")
    inferstack("apply", "-f", str(types_file), data_dir=unused, env=env)
    yield Deployment(env, prefix)
    drop_keyspace(cassandra_endpoint, keyspace)
    with redis.Redis.from_url(f"redis://{redis_endpoint}") as admin:
        for pattern in (f"{prefix}*", f"itix{run}:*"):
            keys = list(admin.scan_iter(match=pattern, count=1000))
            if keys:
                admin.delete(*keys)
    zookeeper = KazooClient(hosts=zookeeper_endpoint)
    zookeeper.start(timeout=10)
    try:
        zookeeper.delete(root, recursive=True)
    finally:
        zookeeper.stop()
        zookeeper.close()


def _two_servers(
    deployment: Deployment,
    tmp_path_factory: pytest.TempPathFactory,
    extra: dict[str, str],
    workers: int,
) -> Iterator[list[RunningServer]]:
    env = {**deployment.env, **extra}
    servers: list[RunningServer] = []
    try:
        for _ in range(2):
            data = tmp_path_factory.mktemp("server")
            servers.append(start_server(data, env=env, workers=workers))
        yield servers
    finally:
        assert [server.stop() for server in servers] == [0] * len(servers)


@pytest.fixture(scope="module")
def sweeping_servers(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningServer]]:
    """Two servers on one Redis and one keyspace, each sweeping every 0.2 s."""
    yield from _two_servers(deployment, tmp_path_factory, SWEEP_FAST, workers=1)


@pytest.fixture(scope="module")
def manual_servers(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningServer]]:
    """Two servers of two workers each, with a hot-tier prefix of their own and no background
    sweeper: only the Sweep calls of the test move users, so every move is counted."""
    own_prefix = {"INFERSTACK_INTERACTIONS__HOT__PREFIX": f"{deployment.prefix}b:"}
    yield from _two_servers(deployment, tmp_path_factory, {**SWEEP_OFF, **own_prefix}, workers=2)


@pytest.mark.services
def test_distributed_idle_user_swept_to_cassandra_and_hydrated(
    sweeping_servers: list[RunningServer],
) -> None:
    first, second = sweeping_servers
    with (
        InteractionsClient(first.grpc_target) as one,
        InteractionsClient(second.grpc_target) as other,
    ):
        check_round_trip(one, other)


def _ingest_users(clients: Sequence[InteractionsClient], users: list[int], per_user: int) -> None:
    """Clicks of `users`, 20 users per call, calls alternating between the servers."""
    for number, start in enumerate(range(0, len(users), 20)):
        group = users[start : start + 20]
        batches = [events("click", user, per_user) for user in group]
        merged = EventBatch(
            "click",
            [i for b in batches for i in b.event_ids],
            [u for b in batches for u in b.users],
            [i for b in batches for i in b.items],
            [t for b in batches for t in b.timestamps],
            {
                name: np.concatenate([np.asarray(b.attributes[name]) for b in batches])
                for name in batches[0].attributes
            },
        )
        stored = clients[number % len(clients)].ingest_batches([merged])
        assert stored == len(group) * per_user


def _check_each_event_once(client: InteractionsClient, users: list[int], per_user: int) -> None:
    for user in users:
        found = history(client, user, "click")
        expected = [f"click-{user}-{i}" for i in reversed(range(per_user))]
        assert found.event_ids.tolist() == expected, f"user {user}"
        assert found.hot == 0


@pytest.mark.services
def test_two_sweeping_servers_move_every_user_once(
    sweeping_servers: list[RunningServer], deployment: Deployment, redis_endpoint: str
) -> None:
    users = [next(USERS) for _ in range(200)]
    with (
        InteractionsClient(sweeping_servers[0].grpc_target) as one,
        InteractionsClient(sweeping_servers[1].grpc_target) as other,
    ):
        _ingest_users([one, other], users, 3)
        wait_until_cold(one, users, "click", dict.fromkeys(users, 3))
        _check_each_event_once(other, users, 3)
    with redis.Redis.from_url(f"redis://{redis_endpoint}") as admin:
        assert admin.zcard(f"{deployment.prefix}a:claims") == 0  # every claim was released


@pytest.mark.services
def test_concurrent_sweeps_on_two_servers_flush_each_user_exactly_once(
    manual_servers: list[RunningServer],
) -> None:
    users = [next(USERS) for _ in range(300)]
    per_user = 2
    clients = [InteractionsClient(server.grpc_target) for server in manual_servers]
    try:
        _ingest_users(clients, users, per_user)
        time.sleep(2.5)  # the click inactivity (2 s): every user is due now
        totals = {"users": 0, "events": 0, "lost_claims": 0}
        lock = threading.Lock()
        deadline = time.monotonic() + IDLE_BOUND

        def sweep(thread: int) -> None:
            client = clients[thread % len(clients)]
            while time.monotonic() < deadline:
                swept = client.sweep(limit=7)
                with lock:
                    totals["users"] += swept.users
                    totals["events"] += swept.events
                    totals["lost_claims"] += swept.lost_claims
                    if totals["users"] >= len(users):
                        return
                if not swept.users:
                    time.sleep(0.05)  # nobody due right now: do not spin

        threads = [threading.Thread(target=sweep, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for client in clients:  # nothing is left for anyone
            assert client.sweep().users == 0
        assert totals == {"users": len(users), "events": len(users) * per_user, "lost_claims": 0}
        _check_each_event_once(clients[1], users, per_user)
    finally:
        for client in clients:
            client.close()
