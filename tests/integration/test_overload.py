"""Overload against a real `inferstack serve`: one worker, one execution slot, and a call that
really is slow (a Persist of hundreds of thousands of rows: its LMDB write runs in a thread
while the worker's loop stays free to take, and refuse, other calls).

No timing assertions: each test repeats the slow call until its probes were seen overlapping
it, then checks how the overlapping calls were answered and that the worker serves again.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferstack.client import AsyncFeatureStoreClient
from tests.servers import RunningServer, inferstack, start_server

DEFINITIONS = """
entities:
  - name: item
    keys: [{name: item_id, type: int64}]
feature_groups:
  - name: item_stats
    entity: item
    features:
      - {name: score, type: float32, default: 0}
      - {name: embedding, type: "float32[8]"}
"""
ROWS = 400_000  # enough for a write that lasts while a few probes go back and forth
ATTEMPTS = 5
Probe = Callable[[], Awaitable[str]]  # one call during the slow one; returns how it ended


def data_dir(tmp: Path) -> Path:
    (tmp / "items.yaml").write_text(DEFINITIONS)
    inferstack("apply", "-f", str(tmp / "items.yaml"), data_dir=tmp / "data")
    return tmp / "data"


def overloaded_server(tmp: Path, **limits: str) -> Iterator[RunningServer]:
    env = {f"INFERSTACK_ADMISSION__{name.upper()}": value for name, value in limits.items()}
    running = start_server(data_dir(tmp), workers=1, env=env)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def no_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from overloaded_server(
        tmp_path_factory.mktemp("no-queue"), max_in_flight="1", max_queue="0"
    )


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from overloaded_server(
        tmp_path_factory.mktemp("queue"), max_in_flight="1", max_queue="16", max_queue_wait="60s"
    )


def scrape(server: RunningServer) -> str:
    with urllib.request.urlopen(f"{server.http_base}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample_labels, value = line[len(name) :].rsplit(" ", 1)
            if all(f'{k}="{v}"' in sample_labels for k, v in labels.items()):
                total += float(value)
    return total


async def slow_persist(client: AsyncFeatureStoreClient, value: float) -> int:
    ids = np.arange(1, ROWS + 1, dtype=np.int64)
    features = {
        "score": np.full(ROWS, value, dtype=np.float32),
        "embedding": np.full((ROWS, 8), value, dtype=np.float32),
    }
    return await client.persist("item_stats", {"item_id": ids}, features, timeout=120)


async def probe_during_slow_calls(
    client: AsyncFeatureStoreClient, probes: list[Probe]
) -> list[str]:
    """Run slow Persists, each with the probes going round while it lasts, until some probe
    was refused (it overlapped), at most ATTEMPTS times; every probe's outcome, in order."""
    outcomes: list[str] = []
    for attempt in range(ATTEMPTS):
        persist = asyncio.create_task(slow_persist(client, float(attempt + 1)))
        while not persist.done():
            for probe in probes:
                outcomes.append(await probe())
        assert await persist == ROWS
        if any(outcome != "OK" for outcome in outcomes):
            break
    return outcomes


def grpc_probe(client: AsyncFeatureStoreClient, timeout: float) -> Probe:
    async def probe() -> str:
        try:
            await client.retrieve("item", {"item_id": [1]}, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return "OK"

    return probe


def http_probe(session: aiohttp.ClientSession, server: RunningServer) -> Probe:
    async def probe() -> str:
        body = {"entity": "item", "keys": {"item_id": [1]}}
        async with session.post(f"{server.http_base}/v1/retrieve", json=body) as response:
            if response.status == 200:
                return "OK"
            error = (await response.json())["error"]
            return f"HTTP {response.status} {error['code']}: {error['message']}"

    return probe


async def test_calls_beyond_a_full_worker_are_refused_at_once_and_it_serves_on(
    no_queue: RunningServer,
) -> None:
    before = scrape(no_queue)
    async with (
        AsyncFeatureStoreClient(no_queue.grpc_target, connections=2) as client,
        aiohttp.ClientSession() as session,
    ):
        probes = [grpc_probe(client, timeout=30), http_probe(session, no_queue)]
        outcomes = await probe_during_slow_calls(client, probes)
        refused = [o for o in outcomes if o != "OK"]
        assert refused, f"no probe overlapped a slow call in {ATTEMPTS} attempts"
        for outcome in refused:
            assert outcome.startswith(("RESOURCE_EXHAUSTED: ", "HTTP 429 RESOURCE_EXHAUSTED: "))
            assert "admission.max_in_flight = 1" in outcome and "admission.max_queue = 0" in outcome
        # The worker serves on: the slow write landed and the next calls are answered.
        frame = await client.retrieve("item", {"item_id": [1, ROWS]})
        assert frame.found().all() and frame["item_stats.score"][0] >= 1.0
        assert await probes[1]() == "OK"
    after = scrape(no_queue)
    shed = metric(after, "inferstack_shed_total", reason="queue_full") - metric(
        before, "inferstack_shed_total", reason="queue_full"
    )
    assert shed == len(refused)
    exhausted = metric(after, "inferstack_requests_total", code="RESOURCE_EXHAUSTED")
    assert exhausted - metric(before, "inferstack_requests_total", code="RESOURCE_EXHAUSTED") == (
        len(refused)
    )


async def test_queued_calls_that_cannot_meet_their_deadline_are_refused_before_it(
    queue: RunningServer,
) -> None:
    async with AsyncFeatureStoreClient(queue.grpc_target, connections=2) as client:
        # One slow call alone first, so the worker knows how long such calls take.
        assert await slow_persist(client, 0.5) == ROWS
        before = scrape(queue)
        # Deadlines well inside one slow Persist's execution (~0.3 s in the server), so a
        # probe behind it cannot be served in time however the estimates stand.
        outcomes = await probe_during_slow_calls(client, [grpc_probe(client, timeout=0.1)])
        refused = [o for o in outcomes if o != "OK"]
        assert refused, f"no probe overlapped a slow call in {ATTEMPTS} attempts"
        assert all(o.startswith("DEADLINE_EXCEEDED: ") for o in refused), refused
        # Answered by the server before the deadline, naming the limit (the client's own
        # deadline error would just say "Deadline Exceeded").
        from_server = [o for o in refused if "admission.max_in_flight = 1" in o]
        assert from_server, refused
        assert all("cannot finish before the deadline" in o for o in from_server)
        frame = await client.retrieve("item", {"item_id": [ROWS]}, timeout=30)
        assert frame.found().all()
    after = scrape(queue)
    shed = metric(after, "inferstack_shed_total", reason="deadline") - metric(
        before, "inferstack_shed_total", reason="deadline"
    )
    assert shed >= len(from_server)
    assert metric(after, "inferstack_queue_wait_seconds_count") >= metric(
        before, "inferstack_queue_wait_seconds_count"
    )


async def test_health_checks_are_answered_while_the_worker_is_full(
    no_queue: RunningServer,
) -> None:
    statuses: list[int] = []
    async with (
        AsyncFeatureStoreClient(no_queue.grpc_target, connections=1) as client,
        grpc.aio.insecure_channel(no_queue.grpc_target) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)

        async def check() -> str:
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            statuses.append(response.status)
            return "OK"

        outcomes = await probe_during_slow_calls(client, [grpc_probe(client, 30), check])
    assert any(o.startswith("RESOURCE_EXHAUSTED") for o in outcomes)  # the worker was full...
    assert statuses and set(statuses) == {health_pb2.HealthCheckResponse.SERVING}  # ...yet healthy
    with urllib.request.urlopen(f"{no_queue.http_base}/healthz", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "SERVING"}
