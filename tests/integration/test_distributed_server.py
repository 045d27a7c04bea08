"""`inferstack serve --config deploy/distributed.yaml` against real Cassandra, Redis and
ZooKeeper: the same API as embedded, hot reload from ZooKeeper, and the faults users hit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from inferstack.client import FeatureStoreClient
from inferstack.sampledata.generate import generate
from tests.conftest import ROOT, SERVICES_SCRIPT
from tests.helpers import AFFINITY_FEATURES
from tests.servers import RunningServer, inferstack, load_sample, start_server

DEPLOY = str(ROOT / "deploy" / "distributed.yaml")
pytestmark = pytest.mark.services


def services(*args: str) -> None:
    subprocess.run([sys.executable, str(SERVICES_SCRIPT), *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def env(cassandra_endpoint: str, redis_endpoint: str, zookeeper_endpoint: str) -> dict[str, str]:
    """The example deployment file, pointed at this run's services by environment variables."""
    run = uuid.uuid4().hex[:8]
    return {
        "INFERSTACK_DEPLOYMENT": DEPLOY,
        "INFERSTACK_HOST": "127.0.0.1",
        "INFERSTACK_STORAGE__CONTACT_POINTS": f"[{cassandra_endpoint}]",
        "INFERSTACK_STORAGE__KEYSPACE": f"it_{run}",
        "INFERSTACK_CACHE__SHARED__ADDRESS": redis_endpoint,
        "INFERSTACK_CACHE__SHARED__PREFIX": f"it{run}:",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": redis_endpoint,
        "INFERSTACK_INTERACTIONS__HOT__PREFIX": f"ih{run}:",
        "INFERSTACK_CONFIG__HOSTS": zookeeper_endpoint,
        "INFERSTACK_CONFIG__ROOT": f"/it-{run}",
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate(out, scale=0.002)
    return out


@pytest.fixture(scope="module")
def server(
    env: dict[str, str], sample: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("unused-data-dir")
    applied = load_sample(sample, data, env=env)
    assert "Applied revision 1." in applied.stdout
    assert not (data / "lmdb").exists() and not (data / "config").exists()  # nothing embedded
    running = start_server(data, env=env)
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(server: RunningServer) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(server.grpc_target, timeout=5) as c:
        yield c


def test_values_come_back_from_cassandra_through_both_cache_levels(
    client: FeatureStoreClient, sample: Path
) -> None:
    users = pq.read_table(sample / "user.parquet").to_pydict()
    ids = users["user_id"][:50]
    for _ in range(3):  # cold (Cassandra), then Redis or in-process
        frame = client.retrieve("user", {"user_id": [*ids, 10**9]})
        assert frame.found("user_profile").tolist() == [True] * 50 + [False]
        assert frame["user_profile.age"].tolist() == [*users["age"][:50], -1]
        np.testing.assert_array_equal(
            frame["user_profile.embedding"][:50], np.array(users["embedding"][:50], np.float32)
        )


def test_persist_invalidates_and_is_read_back(client: FeatureStoreClient) -> None:
    keys = {"user_id": [5, 6], "category_id": ["c-x", "c-y"]}
    assert not client.retrieve("user_category", keys).found().any()  # cached as absent now
    client.persist(
        "user_category_affinity",
        keys,
        {n: np.array([1.0, 2.0], np.float32) for n in AFFINITY_FEATURES},
    )
    # Persist dropped the negative entries in Redis and in the worker that served it; the
    # other worker's in-process entry lives at most cache.negative_ttl (10 s).
    deadline = time.monotonic() + 15
    while not client.retrieve("user_category", keys).found().all():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.retrieve("user_category", keys)["user_category_affinity.affinity"].tolist() == [
        1.0,
        2.0,
    ]


def _wait_for_group(client: FeatureStoreClient, group: str, deadline_s: float) -> float:
    """Seconds until enough calls in a row (hitting both workers) know `group`."""
    started = time.monotonic()
    streak = 0
    while streak < 8:
        try:
            client.retrieve("user", {"user_id": [1]}, [group])
            streak += 1
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            streak = 0
            assert time.monotonic() - started < deadline_s, (
                f"{group} not served after {deadline_s} s"
            )
            time.sleep(0.02)
    return time.monotonic() - started


def _apply_group(env: dict[str, str], tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"feature_groups:\n  - name: {name}\n    entity: user\n"
        "    features:\n      - {name: vip, type: bool, default: true}\n"
    )
    inferstack("apply", "-f", str(path), data_dir=tmp_path, env=env)


def test_applied_definitions_reach_every_server_without_restart(
    client: FeatureStoreClient, env: dict[str, str], tmp_path: Path, server: RunningServer
) -> None:
    # A second server process on the same ZooKeeper sees the change too.
    other = start_server(tmp_path / "other", env=env, workers=1)
    try:
        _apply_group(env, tmp_path, "flags_a")
        assert _wait_for_group(client, "flags_a", 3.0) < 3.0
        with FeatureStoreClient(other.grpc_target) as second:
            assert second.retrieve("user", {"user_id": [1]}, ["flags_a"])[
                "flags_a.vip"
            ].tolist() == [True]
    finally:
        assert other.stop() == 0


def test_redis_stopped_during_reads_fails_no_read(client: FeatureStoreClient) -> None:
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                frame = client.retrieve("product", {"product_id": list(range(1, 101))})
                if not frame.found().all():
                    failures.append("rows missing")
            except grpc.RpcError as error:
                failures.append(str(error))
            reads += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.5)
        services("stop", "redis")
        time.sleep(2.0)
    finally:
        services("start", "redis")
        time.sleep(1.0)
        stop.set()
        thread.join()
    assert reads > 50 and failures == []


def test_zookeeper_restart_keeps_serving_and_later_changes_arrive(
    client: FeatureStoreClient, env: dict[str, str], tmp_path: Path
) -> None:
    try:
        services("stop", "zookeeper")
        assert client.retrieve("user", {"user_id": [1]}).found("user_profile").all()
    finally:
        services("start", "zookeeper")
    _apply_group(env, tmp_path, "flags_b")
    _wait_for_group(client, "flags_b", 15.0)


def test_cassandra_stopped_answers_unavailable_in_time_and_recovers(
    client: FeatureStoreClient, sample: Path
) -> None:
    fresh = iter(range(2_000_000, 3_000_000, 7))  # never cached: each read must reach storage
    try:
        services("stop", "cassandra")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            client.retrieve("product", {"product_id": [next(fresh)]})
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "cassandra" in caught.value.details()  # type: ignore[attr-defined]
        assert time.monotonic() - started < client.timeout
    finally:
        services("start", "cassandra")
    # Recovered means several calls in a row succeed, so both workers are reconnected.
    deadline = time.monotonic() + 60
    streak = 0
    while streak < 8:
        try:
            frame = client.retrieve("product", {"product_id": [1, next(fresh)]})
            assert frame.found().tolist() == [True, False]
            streak += 1
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "did not recover within 60 s of Cassandra's start"
            streak = 0
            time.sleep(0.5)


def test_unreachable_addresses_stop_start_up_naming_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    for variable, value, message in [
        ("INFERSTACK_STORAGE__CONTACT_POINTS", "[127.0.0.1:1]", "cassandra at 127.0.0.1:1"),
        ("INFERSTACK_CACHE__SHARED__ADDRESS", "127.0.0.1:1", "redis at 127.0.0.1:1"),
        ("INFERSTACK_INTERACTIONS__HOT__ADDRESS", "127.0.0.1:1", "interactions.hot: redis"),
        ("INFERSTACK_CONFIG__HOSTS", "127.0.0.1:1", "127.0.0.1:1"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "inferstack.cli.main", "serve", "--port", "0"],
            env={
                **__import__("os").environ,
                **env,
                variable: value,
                "INFERSTACK_STORAGE__CONNECT_TIMEOUT": "2s",
                "INFERSTACK_CONFIG__CONNECT_TIMEOUT": "2s",
            },
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == 1, result
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
