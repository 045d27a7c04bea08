"""The feature store over real gRPC and HTTP, served by `inferstack serve` with 2 workers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from inferstack.client import AsyncFeatureStoreClient, FeatureStoreClient, Query
from inferstack.core.rowformat import RowStatus
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.proto.featurestore.v1 import featurestore_pb2_grpc as pb_grpc
from inferstack.sampledata.generate import generate
from tests.helpers import AFFINITY_FEATURES
from tests.servers import RunningServer, inferstack, load_sample, start_server

MAX_KEYS = 500


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate(out, scale=0.01)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, sample: Path) -> Path:
    data = tmp_path_factory.mktemp("data")
    load_sample(sample, data)
    return data


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[RunningServer]:
    # The in-process cache is off by default on LMDB; on here, so its metrics can be seen.
    running = start_server(data_dir, "--max-keys", str(MAX_KEYS), "--cache-mb", "64")
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(server: RunningServer) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(server.grpc_target) as c:
        yield c


def test_retrieve_returns_the_ingested_values(client: FeatureStoreClient, sample: Path) -> None:
    users = pq.read_table(sample / "user.parquet").slice(0, 5).to_pydict()
    frame = client.retrieve("user", {"user_id": users["user_id"] + [10**9]})
    assert frame.found("user_profile").tolist() == [True] * 5 + [False]
    assert frame["user_profile.age"].tolist() == users["age"] + [-1]
    assert frame["user_profile.region_id"].tolist() == users["region_id"] + ["unknown"]
    np.testing.assert_array_equal(
        frame["user_profile.embedding"][:5], np.array(users["embedding"], dtype=np.float32)
    )
    assert frame["user_profile.embedding"].shape == (6, 16)
    assert frame["user_profile.recency_days"][5] == 365.0
    df = frame.to_pandas()
    assert list(df["user_profile.age"]) == users["age"] + [-1]


def test_batch_of_user_products_and_user_categories(
    client: FeatureStoreClient, sample: Path
) -> None:
    pairs = pq.read_table(sample / "user_category.parquet").slice(0, 3).to_pydict()
    frames = client.retrieve_batch(
        [
            Query("user", {"user_id": [pairs["user_id"][0]]}, ["user_profile.age"]),
            Query("product", {"product_id": list(range(1, 101))}),
            Query(
                "user_category", {"user_id": pairs["user_id"], "category_id": pairs["category_id"]}
            ),
        ]
    )
    assert [f.entity for f in frames] == ["user", "product", "user_category"]
    assert frames[1].count == 100 and frames[1].found().all()
    assert len(frames[1].columns) == 27
    assert frames[2]["user_category_affinity.affinity"].tolist() == pytest.approx(pairs["affinity"])


async def test_async_client_and_persist_round_trip(server: RunningServer) -> None:
    async with AsyncFeatureStoreClient(server.grpc_target) as client:
        written = await client.persist(
            "user_category_affinity",
            {"user_id": [77, 78], "category_id": ["zz", "ÿ"]},
            {name: np.array([1.5, 2.5], np.float32) for name in AFFINITY_FEATURES},
        )
        assert written == 2
        frame = await client.retrieve(
            "user_category",
            {"user_id": [78, 77], "category_id": ["ÿ", "zz"]},
            ["user_category_affinity.affinity"],
        )
    assert frame["user_category_affinity.affinity"].tolist() == [2.5, 1.5]


def _code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("entity", "keys", "features", "code", "message"),
    [
        ("shopper", {"user_id": [1]}, [], grpc.StatusCode.NOT_FOUND, "entity 'shopper' not found"),
        (
            "user",
            {"user_id": [1]},
            ["nope"],
            grpc.StatusCode.NOT_FOUND,
            "feature group 'nope' not found",
        ),
        (
            "user",
            {"user_id": [1]},
            ["user_profile.nope"],
            grpc.StatusCode.NOT_FOUND,
            "feature 'user_profile.nope' not found",
        ),
        ("user", {"uid": [1]}, [], grpc.StatusCode.INVALID_ARGUMENT, "needs key 'user_id'"),
        (
            "user_category",
            {"user_id": [1]},
            [],
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs key 'category_id'",
        ),
        (
            "user",
            {"user_id": ["x"]},
            [],
            grpc.StatusCode.INVALID_ARGUMENT,
            "key 'user.user_id' is an integer",
        ),
        (
            "user_category",
            {"user_id": [1], "category_id": [5]},
            [],
            grpc.StatusCode.INVALID_ARGUMENT,
            "key 'user_category.category_id' is a string",
        ),
        (
            "user",
            {"user_id": list(range(MAX_KEYS + 1))},
            [],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"maximum per request is {MAX_KEYS}",
        ),
    ],
)
def test_bad_requests_get_clear_status_and_the_server_keeps_serving(
    client: FeatureStoreClient,
    entity: str,
    keys: dict[str, list[Any]],
    features: list[str],
    code: grpc.StatusCode,
    message: str,
) -> None:
    got_code, details = _code_of(lambda: client.retrieve(entity, keys, features))
    assert got_code == code and message in details
    assert "Traceback" not in details
    assert client.retrieve("user", {"user_id": [1]}).found().all()


def test_bad_persist_writes_nothing(client: FeatureStoreClient) -> None:
    features = {
        name: np.array([1.0, 2.0], np.float32)
        for name in AFFINITY_FEATURES[:-1]  # recency_days left out
    }
    keys = {"user_id": [501, 502], "category_id": ["a", "b"]}
    code, details = _code_of(lambda: client.persist("user_category_affinity", keys, features))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "recency_days' is missing" in details
    features["recency_days"] = np.array([1, 2], np.int64)
    code, details = _code_of(lambda: client.persist("user_category_affinity", keys, features))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "is float32, the column is int64" in details
    assert not client.retrieve("user_category", keys).found().any()


def test_raw_grpc_bad_buffers_and_batch_limit(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FeatureStoreStub(channel)
        bad = pb.PersistRequest(
            feature_group="user_category_affinity",
            keys=[
                pb.KeyColumn(name="user_id", int64_values=[1]),
                pb.KeyColumn(name="category_id", string_values=["a"]),
            ],
            columns=[pb.Column(name="clicks_7d", type="float32", values=b"\x00\x01")],
        )
        code, details = _code_of(lambda: stub.Persist(bad, timeout=5))
        assert (
            code == grpc.StatusCode.INVALID_ARGUMENT
            and "column 'clicks_7d': 2 bytes of float32" in details
        )
        many = pb.RetrieveBatchRequest(
            requests=[
                pb.RetrieveRequest(
                    entity="user",
                    keys=[pb.KeyColumn(name="user_id", int64_values=list(range(300)))],
                )
            ]
            * 2
        )
        code, details = _code_of(lambda: stub.RetrieveBatch(many, timeout=5))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_reflection_lists_the_services(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [response] = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"inferstack.featurestore.v1.FeatureStore", "grpc.health.v1.Health"} <= names


def _post(server: RunningServer, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.http_base}/v1/retrieve", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_retrieve_and_errors(server: RunningServer, sample: Path) -> None:
    status, body = _post(
        server,
        json.dumps(
            {
                "entity": "product",
                "keys": {"product_id": [1, 10**9]},
                "features": ["product_stats.brand", "product_stats.price"],
            }
        ).encode(),
    )
    first = pq.read_table(sample / "product.parquet").slice(0, 1).to_pydict()
    assert status == 200
    assert body["columns"]["product_stats.brand"] == [first["brand"][0], "unknown"]
    assert body["status"]["product_stats"] == ["found", "missing"]
    for payload, code, message in [
        (b"{not json", 400, "not JSON"),
        (json.dumps({"entity": "nope", "keys": {}}).encode(), 404, "entity 'nope' not found"),
        (json.dumps({"entity": "user", "keys": {"user_id": ["q"]}}).encode(), 400, "user.user_id"),
        (
            json.dumps({"entity": "user", "keys": {"user_id": list(range(MAX_KEYS + 1))}}).encode(),
            429,
            "maximum",
        ),
    ]:
        status, body = _post(server, payload)
        assert status == code and message in body["error"]["message"], body


def test_definitions_applied_while_serving_are_picked_up(
    server: RunningServer, data_dir: Path, client: FeatureStoreClient, tmp_path: Path
) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "feature_groups:\n"
        "  - name: user_flags\n    entity: user\n"
        "    features:\n      - {name: vip, type: bool, default: true}\n"
    )
    inferstack("apply", "-f", str(extra), data_dir=data_dir)
    deadline = time.monotonic() + 5
    while True:
        try:
            frame = client.retrieve("user", {"user_id": [1]}, ["user_flags"])
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "new definitions not seen within 5 s"
            time.sleep(0.1)
    assert frame["user_flags.vip"].tolist() == [True]
    assert frame.status["user_flags"].tolist() == [RowStatus.MISSING]


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of one metric's samples with these labels, across every worker."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        sample_labels, value = line[len(name) + 1 :].rsplit("} ", 1)
        if all(f'{k}="{v}"' in sample_labels for k, v in labels.items()):
            total += float(value)
    return total


def test_metrics_count_calls_of_every_worker(
    server: RunningServer, client: FeatureStoreClient
) -> None:
    def scrape() -> str:
        with urllib.request.urlopen(f"{server.http_base}/metrics", timeout=5) as response:
            return str(response.read().decode())

    before = scrape()
    ok_before = _metric(before, "inferstack_requests_total", method="Retrieve", code="OK")
    missing_before = _metric(
        before, "inferstack_requests_total", method="Retrieve", code="NOT_FOUND"
    )
    # Separate connections, so the kernel spreads the calls over both workers.
    for _ in range(10):
        with FeatureStoreClient(server.grpc_target) as fresh:
            fresh.retrieve("user", {"user_id": [1, 2, 3]})
    with pytest.raises(grpc.RpcError):
        client.retrieve("nobody", {"id": [1]})
    after = scrape()
    assert (
        _metric(after, "inferstack_requests_total", method="Retrieve", code="OK") == ok_before + 10
    )
    assert (
        _metric(after, "inferstack_requests_total", method="Retrieve", code="NOT_FOUND")
        == missing_before + 1
    )
    assert _metric(after, "inferstack_keys_total", feature_group="user_profile") >= 30
    assert _metric(after, "inferstack_cache_lookups_total", level="local", result="hit") > 0
    assert _metric(after, "inferstack_request_seconds_count", method="Retrieve") >= 11
