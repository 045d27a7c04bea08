"""Clients given several servers: calls go round-robin over them, and a call a server does
not take (unreachable, stopped) goes to the next one within its deadline, so a server going
away fails no call. Two real `inferstack serve` on one embedded data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from inferstack.client import AsyncFeatureStoreClient, FeatureStoreClient
from inferstack.server.supervisor import free_port
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
"""
CALLS = 40


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RunningServer]]:
    definitions = tmp_path / "definitions.yaml"
    definitions.write_text(DEFINITIONS)
    data = tmp_path / "data"
    inferstack("apply", "-f", str(definitions), data_dir=data)
    running = [start_server(data, workers=1), start_server(data, workers=1)]
    yield running
    for server in running:
        if server.process.poll() is None:
            assert server.stop() == 0


def _score(client: FeatureStoreClient, item: int) -> float:
    return float(client.retrieve("item", {"item_id": [item]})["item_stats.score"][0])


def test_an_unreachable_server_among_several_fails_no_call(servers: list[RunningServer]) -> None:
    nowhere = f"127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    targets = [nowhere, *(server.grpc_target for server in servers)]
    with FeatureStoreClient(targets, timeout=10, connections=1) as client:
        scores = np.array([2.5], dtype=np.float32)
        assert client.persist("item_stats", {"item_id": [1]}, {"score": scores}) == 1
        assert [_score(client, 1) for _ in range(CALLS)] == [2.5] * CALLS


def test_a_server_stopped_between_calls_fails_no_call(servers: list[RunningServer]) -> None:
    first, second = servers
    with FeatureStoreClient([first.grpc_target, second.grpc_target], timeout=10) as client:
        scores = np.array([1.5], dtype=np.float32)
        client.persist("item_stats", {"item_id": [7]}, {"score": scores})
        assert [_score(client, 7) for _ in range(CALLS)] == [1.5] * CALLS
        assert first.stop() == 0
        assert [_score(client, 7) for _ in range(CALLS)] == [1.5] * CALLS
        # A refusal is an answer: it is not sent to another server.
        with pytest.raises(grpc.RpcError) as refused:
            client.retrieve("nobody", {"id": [1]})
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_async_client_fails_over_too(servers: list[RunningServer]) -> None:
    first, second = servers
    async with AsyncFeatureStoreClient([first.grpc_target, second.grpc_target]) as client:
        assert first.stop() == 0
        for _ in range(CALLS):
            frame = await client.retrieve("item", {"item_id": [3]})
            assert frame.count == 1


def test_one_address_string_may_name_several_servers(servers: list[RunningServer]) -> None:
    joined = ",".join(server.grpc_target for server in servers)
    with FeatureStoreClient(joined, timeout=10, connections=1) as client:
        assert [_score(client, 9) for _ in range(4)] == [0.0] * 4  # never written: default
