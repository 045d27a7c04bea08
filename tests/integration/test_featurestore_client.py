"""The feature store clients against a real `inferstack serve` with two workers: one client
process's calls reach both workers (its own connections), and deadlines travel with calls.

Which worker answered is read from `inferstack_worker_calls_total{worker="<pid>"}`, the
per-worker count of admitted calls that every worker publishes about once a second.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from inferstack.client import AsyncFeatureStoreClient, FeatureStoreClient, Query
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
      - {name: label, type: string, default: none}
"""
CALLS = 64
CONNECTIONS = 16  # all on one worker by chance: 2 x 2^-16


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("client")
    (tmp / "items.yaml").write_text(DEFINITIONS)
    inferstack("apply", "-f", str(tmp / "items.yaml"), data_dir=tmp / "data")
    running = start_server(tmp / "data", workers=2)
    with FeatureStoreClient(running.grpc_target) as client:
        labels = ["plain", "ünïcödé", ""]
        client.persist(
            "item_stats",
            {"item_id": [1, 2, 3]},
            {"score": np.array([0.5, 1.5, 2.5], dtype=np.float32), "label": labels},
        )
    workers_reached(running, {}, 1)  # so the tests' counts start after this call's
    yield running
    assert running.stop() == 0


def calls_per_worker(server: RunningServer) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.http_base}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    prefix = 'inferstack_worker_calls_total{worker="'
    for line in text.splitlines():
        if line.startswith(prefix):
            worker, value = line[len(prefix) :].split('"} ')
            counts[worker] = float(value)
    return counts


def workers_reached(server: RunningServer, before: dict[str, float], calls: int) -> set[str]:
    """Workers whose count grew, once all `calls` are published (within 10 s: a hang guard)."""
    deadline = time.monotonic() + 10
    while True:
        after = calls_per_worker(server)
        grown = {w: after[w] - before.get(w, 0.0) for w in after}
        if sum(grown.values()) >= calls or time.monotonic() > deadline:
            assert sum(grown.values()) == calls
            return {worker for worker, count in grown.items() if count > 0}
        time.sleep(0.2)


async def test_one_async_clients_concurrent_calls_reach_both_workers(
    server: RunningServer,
) -> None:
    before = calls_per_worker(server)
    async with AsyncFeatureStoreClient(server.grpc_target, connections=CONNECTIONS) as client:
        frames = await asyncio.gather(
            *(client.retrieve("item", {"item_id": [1, 2, 3]}) for _ in range(CALLS))
        )
    assert all(f["item_stats.score"].tolist() == [0.5, 1.5, 2.5] for f in frames)
    reached = await asyncio.to_thread(workers_reached, server, before, CALLS)
    assert len(reached) == 2


def test_one_sync_clients_calls_from_threads_reach_both_workers(server: RunningServer) -> None:
    before = calls_per_worker(server)
    with (
        FeatureStoreClient(server.grpc_target, connections=CONNECTIONS) as client,
        ThreadPoolExecutor(8) as pool,
    ):
        batches = list(
            pool.map(
                lambda _: client.retrieve_batch([Query("item", {"item_id": [3, 2]})]),
                range(CALLS),
            )
        )
    assert all(b[0]["item_stats.label"].tolist() == ["", "ünïcödé"] for b in batches)
    assert len(workers_reached(server, before, CALLS)) == 2


def test_a_connection_count_below_one_is_refused(server: RunningServer) -> None:
    with pytest.raises(ValueError, match="connections must be at least 1"):
        FeatureStoreClient(server.grpc_target, connections=0)


class DeadlineRecorder(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A real gRPC server's view of each call's deadline: it records the time remaining
    and refuses the call, so the test reads the deadline the client sent, not a race
    between a tiny deadline and a fast loopback answer."""

    def __init__(self) -> None:
        self.remaining: list[float] = []

    def service(
        self, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.remaining.append(context.time_remaining())
            context.abort(grpc.StatusCode.UNAVAILABLE, "recorded")

        return grpc.unary_unary_rpc_method_handler(refuse)


def test_a_calls_own_deadline_wins_over_the_clients() -> None:
    recorder = DeadlineRecorder()
    recording_server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[recorder])
    port = recording_server.add_insecure_port("127.0.0.1:0")
    recording_server.start()
    try:
        with FeatureStoreClient(f"127.0.0.1:{port}", timeout=30) as client:
            for timeout in (2.0, None):
                with pytest.raises(grpc.RpcError) as refused:
                    client.retrieve("item", {"item_id": [1]}, timeout=timeout)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        recording_server.stop(grace=None)
    own, clients = recorder.remaining
    # The server's clock reads the deadline a little differently: a margin, not an equality.
    assert 0 < own <= 2.5
    assert 5.0 < clients <= 31.0


def test_decoded_frames_behave_as_before(server: RunningServer, tmp_path: Path) -> None:
    with FeatureStoreClient(server.grpc_target) as client:
        frame = client.retrieve("item", {"item_id": [1, 2, 3, 99]})
    assert list(frame.columns) == ["item_stats.score", "item_stats.label"]
    assert frame["item_stats.label"].tolist() == ["plain", "ünïcödé", "", "none"]
    assert frame.found().tolist() == [True, True, True, False]
    table = frame.to_pandas()
    assert table["item_stats.label"].tolist() == ["plain", "ünïcödé", "", "none"]
    assert table["item_stats.score"].dtype == np.float32
