"""Inferflow end to end on deploy/distributed.yaml: the sample ranker's config and ONNX files
from ZooKeeper, features from Cassandra through Redis, scores checked against an independent
computation, a second stateless server, a new model version reaching both, and inference
records read back from a real Kafka topic."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from kazoo.client import KazooClient

from inferstack.client import FeatureStoreClient
from inferstack.client.inferflow import Context, InferflowClient, Scores
from inferstack.configstore.zookeeper import open_zookeeper
from inferstack.inferflow.inferencelog.kafka import table_from_message
from inferstack.sampledata.generate import GROUP_FILES
from tests.conftest import ROOT
from tests.helpers import drop_keyspace
from tests.ranker import expected_scores, ranker_sample
from tests.servers import RunningServer, inferstack, start_server

pytestmark = pytest.mark.services

DEPLOY = str(ROOT / "deploy" / "distributed.yaml")
MODEL_FILES = ("pctr.onnx", "pcvr.onnx")
PRODUCTS = 400  # products in the sample at SCALE
USERS = 200  # users in the sample at SCALE
SCALE = 0.002
ABSENT_PRODUCT = 10**6  # no row: read as defaults on both sides
RELOAD_BOUND = 10.0  # seconds a new model version may take to reach a server
LOG_BOUND = 15.0  # seconds inference records may take to reach the topic
OFFSET_BEGINNING = -2  # librdkafka's logical offset "earliest"


@dataclass(frozen=True)
class Deployment:
    env: dict[str, str]  # what every `inferstack` process of this module runs with
    zookeeper: str
    root: str


@pytest.fixture(scope="module")
def deployment(
    cassandra_endpoint: str, redis_endpoint: str, zookeeper_endpoint: str
) -> Iterator[Deployment]:
    """The example deployment file pointed at this run's own keyspace, prefix and root."""
    run = uuid.uuid4().hex[:8]
    keyspace, root = f"it_flow_{run}", f"/it-flow-{run}"
    env = {
        "INFERSTACK_DEPLOYMENT": DEPLOY,
        "INFERSTACK_HOST": "127.0.0.1",
        "INFERSTACK_STORAGE__CONTACT_POINTS": f"[{cassandra_endpoint}]",
        "INFERSTACK_STORAGE__KEYSPACE": keyspace,
        "INFERSTACK_CACHE__SHARED__ADDRESS": redis_endpoint,
        "INFERSTACK_CACHE__SHARED__PREFIX": f"itflow{run}:",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": redis_endpoint,
        "INFERSTACK_INTERACTIONS__HOT__PREFIX": f"ihflow{run}:",
        "INFERSTACK_CONFIG__HOSTS": zookeeper_endpoint,
        "INFERSTACK_CONFIG__ROOT": root,
    }
    yield Deployment(env, zookeeper_endpoint, root)
    drop_keyspace(cassandra_endpoint, keyspace)
    zookeeper = KazooClient(hosts=zookeeper_endpoint)
    zookeeper.start(timeout=10)
    try:
        zookeeper.delete(root, recursive=True)
    finally:
        zookeeper.stop()
        zookeeper.close()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data, models and ranker.yaml, with every request logged."""
    out = ranker_sample(tmp_path_factory.mktemp("ranker"), scale=SCALE)
    config = out / "ranker.yaml"
    text = config.read_text()
    assert "sample_rate: 0 " in text
    config.write_text(text.replace("sample_rate: 0 ", "sample_rate: 1 "))
    return out


@pytest.fixture(scope="module")
def log_topic(kafka_endpoint: str) -> Iterator[str]:
    """A topic of this run only, deleted afterwards (the Kafka is shared)."""
    name = f"inferflow-log-{uuid.uuid4().hex[:12]}"
    yield name
    admin = AdminClient({"bootstrap.servers": kafka_endpoint})
    with contextlib.suppress(Exception):  # never created, or already gone
        admin.delete_topics([name], request_timeout=10)[name].result(timeout=15)


@pytest.fixture(scope="module")
def applied(deployment: Deployment, sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole sample folder applied to ZooKeeper and its three groups ingested."""
    data = tmp_path_factory.mktemp("cli-data-dir")
    result = inferstack("apply", "-f", str(sample), data_dir=data, env=deployment.env)
    assert "+ model ranker (v1)" in result.stdout and "Applied revision 1." in result.stdout
    for group, file in GROUP_FILES.items():
        inferstack("ingest", "-g", group, str(sample / file), data_dir=data, env=deployment.env)
    assert not any(data.iterdir()), "nothing may be written to an embedded data dir"
    return sample


@pytest.fixture(scope="module")
def server(
    deployment: Deployment,
    applied: Path,
    kafka_endpoint: str,
    log_topic: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    """The first server, logging every request of the ranker to `log_topic`."""
    env = {
        **deployment.env,
        "INFERSTACK_INFERFLOW__INFERENCE_LOG__TYPE": "kafka",
        "INFERSTACK_INFERFLOW__INFERENCE_LOG__BOOTSTRAP": kafka_endpoint,
        "INFERSTACK_INFERFLOW__INFERENCE_LOG__TOPIC": log_topic,
    }
    running = start_server(tmp_path_factory.mktemp("first"), env=env)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def second_server(
    deployment: Deployment, server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Another process on the same ZooKeeper, with an empty data dir of its own."""
    running = start_server(tmp_path_factory.mktemp("second"), env=deployment.env, workers=1)
    yield running
    assert running.stop() == 0


def candidates(rng: np.random.Generator, count: int = 50) -> list[int]:
    chosen = rng.choice(np.arange(1, PRODUCTS + 1), count - 1, replace=False).tolist()
    return [*chosen, ABSENT_PRODUCT]


def assert_scores_match(
    scores: Scores, expected: dict[str, np.ndarray], products: list[int]
) -> None:
    assert scores.count == len(products)
    for name in ("pctr", "pcvr"):
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-6, atol=0, err_msg=name)
    np.testing.assert_allclose(scores["score"], expected["score"], rtol=1e-6, atol=0)
    # Not a constant model: candidates get different scores, so a shifted row would show.
    assert len(np.unique(scores["score"])) > len(products) // 2


def test_scores_equal_the_independent_computation(server: RunningServer, applied: Path) -> None:
    rng = np.random.default_rng(1)
    with (
        InferflowClient(server.grpc_target) as flow,
        FeatureStoreClient(server.grpc_target, timeout=10) as store,
    ):
        for user_id in rng.choice(np.arange(1, USERS + 1), 3, replace=False).tolist():
            products = candidates(rng)
            scores = flow.infer("ranker", {"user_id": user_id, "product_ids": products})
            assert (scores.model, scores.version) == ("ranker", 1)
            expected = expected_scores(store, applied, user_id, products)
            assert_scores_match(scores, expected, products)
            # Features come back in candidate order with their own types.
            prices = store.retrieve("product", {"product_id": products}, ["product_stats.price"])
            np.testing.assert_array_equal(
                scores["product.price"], prices["product_stats.price"].astype(np.float32)
            )


def test_every_request_is_logged_to_kafka(
    server: RunningServer, kafka_endpoint: str, log_topic: str
) -> None:
    rng = np.random.default_rng(2)
    responses: dict[str, tuple[int, list[int], Scores]] = {}
    with InferflowClient(server.grpc_target) as flow:
        for number in range(8):
            user_id, products = int(rng.integers(1, USERS + 1)), candidates(rng, 20)
            request_id = f"logged-{uuid.uuid4().hex[:8]}-{number}"
            scores = flow.infer(
                "ranker", {"user_id": user_id, "product_ids": products}, request_id=request_id
            )
            assert scores.request_id == request_id
            responses[request_id] = (user_id, products, scores)

    tables = consume_records(kafka_endpoint, log_topic, set(responses), LOG_BOUND)
    assert set(tables) == set(responses), "every sampled request arrives once"
    for request_id, table in tables.items():
        user_id, products, scores = responses[request_id]
        assert table.column("request_id").to_pylist() == [request_id] * len(products)
        assert table.column("model").to_pylist() == ["ranker"] * len(products)
        assert table.column("version").to_pylist() == [1] * len(products)
        assert table.column("candidate").to_pylist() == products
        assert table.column("position").to_pylist() == list(range(len(products)))
        assert table.column("context.user_id").to_pylist() == [user_id] * len(products)
        for name in ("score", "pctr", "pcvr"):
            logged = table.column(f"output.{name}").to_numpy()
            np.testing.assert_array_equal(logged, scores[name])


def consume_records(
    endpoint: str, topic: str, request_ids: set[str], bound: float
) -> dict[str, pa.Table]:
    """The decoded record of each of `request_ids` found on `topic` within `bound` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": endpoint,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    found: dict[str, pa.Table] = {}
    deadline = time.monotonic() + bound
    try:
        partitions: list[int] = []
        while not partitions:  # the server's sink creates the topic on its first write
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is not None and metadata.error is None:
                partitions = list(metadata.partitions)
            assert partitions or time.monotonic() < deadline, f"topic {topic} never appeared"
            if not partitions:
                time.sleep(0.2)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while set(found) != request_ids and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            key, value = message.key(), message.value()
            assert key is not None and value is not None
            if key.decode() in request_ids:
                assert key.decode() not in found, f"{key!r} logged twice"
                found[key.decode()] = table_from_message(value)
    finally:
        consumer.close()
    return found


def test_a_second_server_fetches_the_models_from_zookeeper_and_agrees(
    server: RunningServer,
    second_server: RunningServer,
    deployment: Deployment,
    applied: Path,
) -> None:
    store = open_zookeeper(deployment.zookeeper, deployment.root)
    try:
        for name in MODEL_FILES:
            assert store.blobs.has(hashlib.sha256((applied / name).read_bytes()).hexdigest())
    finally:
        store.close()
    rng = np.random.default_rng(3)
    with (
        InferflowClient(server.grpc_target) as first,
        InferflowClient(second_server.grpc_target) as second,
    ):
        for user_id in (1, 17, USERS):
            context: Context = {"user_id": user_id, "product_ids": candidates(rng)}
            ours, theirs = first.infer("ranker", context), second.infer("ranker", context)
            assert theirs.version == ours.version == 1
            for name in ("score", "pctr", "pcvr", "expected_value"):
                np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
    # The model files came from ZooKeeper into memory: none of them is on the second's disk.
    data_dir = second_server.log.parent
    models = {(applied / name).read_bytes() for name in MODEL_FILES}
    on_disk = [path for path in data_dir.rglob("*") if path.is_file()]
    assert not [path for path in on_disk if path.read_bytes() in models]
    assert not (data_dir / "config").exists() and not (data_dir / "lmdb").exists()


def test_a_new_model_version_reaches_both_servers(
    server: RunningServer,
    second_server: RunningServer,
    deployment: Deployment,
    applied: Path,
    tmp_path: Path,
) -> None:
    changed = shutil.copytree(applied, tmp_path / "v2")
    config = changed / "ranker.yaml"
    text = config.read_text()
    assert "score: pctr * pcvr ** 0.5" in text
    config.write_text(text.replace("score: pctr * pcvr ** 0.5", "score: pctr * pcvr"))
    result = inferstack("apply", "-f", str(changed), data_dir=tmp_path, env=deployment.env)
    assert "~ model ranker (v1 -> v2; expressions changed)" in result.stdout

    context: Context = {"user_id": 5, "product_ids": candidates(np.random.default_rng(4))}
    for running in (server, second_server):
        with InferflowClient(running.grpc_target) as flow:
            # Several answers in a row at v2, so every worker of the server has switched.
            deadline, streak = time.monotonic() + RELOAD_BOUND, 0
            while streak < 6:
                scores = flow.infer("ranker", context)
                if scores.version == 2:
                    streak += 1
                    np.testing.assert_allclose(
                        scores["score"], scores["pctr"] * scores["pcvr"], rtol=1e-6, atol=0
                    )
                else:
                    assert scores.version == 1
                    streak = 0
                    assert time.monotonic() < deadline, (
                        f"{running.grpc_target} still serves v1 after {RELOAD_BOUND} s"
                    )
                    time.sleep(0.05)
