"""Inferflow as callers use it: `inferstack serve` on the embedded default, the sample ranker
(three entity hops, two ONNX models, expressions), the Python client, HTTP and the CLI."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.dataset as ds
import pytest

from inferstack.client import FeatureStoreClient
from inferstack.client.inferflow import AsyncInferflowClient, InferflowClient, Scores
from inferstack.sampledata.generate import FULL_SIZES, GROUP_FILES
from tests.ranker import expected_scores, ranker_sample
from tests.servers import RunningServer, inferstack, start_server

SCALE = 0.01
PRODUCTS = int(FULL_SIZES["product"] * SCALE)
USERS = int(FULL_SIZES["user"] * SCALE)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ranker_sample(tmp_path_factory.mktemp("ranker"), scale=SCALE)


@pytest.fixture(scope="module")
def data(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    applied = inferstack("apply", "-f", str(sample), data_dir=data)
    assert "+ model ranker (v1)" in applied.stdout
    for group, file in GROUP_FILES.items():
        inferstack("ingest", "-g", group, str(sample / file), data_dir=data)
    return data


@pytest.fixture(scope="module")
def server(data: Path) -> Iterator[RunningServer]:
    running = start_server(data)
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(server: RunningServer) -> Iterator[InferflowClient]:
    with InferflowClient(server.grpc_target, timeout=10) as c:
        yield c


def random_request(rng: np.random.Generator, count: int = 100) -> tuple[int, list[int]]:
    user = int(rng.integers(1, USERS + 1))
    return user, rng.choice(np.arange(1, PRODUCTS + 1), count, replace=False).tolist()


def test_scores_equal_a_direct_read_and_onnxruntime(
    server: RunningServer, client: InferflowClient, sample: Path
) -> None:
    rng = np.random.default_rng(5)
    with FeatureStoreClient(server.grpc_target) as features:
        for _ in range(4):
            user, products = random_request(rng)
            products += [products[0], PRODUCTS + 50]  # a repeat, and one that is not stored
            scores = client.infer("ranker", {"user_id": user, "product_ids": products})
            expected = expected_scores(features, sample, user, products)
            assert scores.count == len(products)
            for name in ("pctr", "pcvr", "score"):
                np.testing.assert_allclose(scores[name], expected[name], rtol=1e-6)
            assert scores["score"][0] == scores["score"][-2]  # the repeat scores the same


def test_http_gives_the_same_scores_as_grpc(server: RunningServer, client: InferflowClient) -> None:
    products = list(range(1, 31))
    grpc_scores = client.infer("ranker", {"user_id": 9, "product_ids": products})
    body = json.dumps(
        {"model": "ranker", "context": {"user_id": 9, "product_ids": products}}
    ).encode()
    with urllib.request.urlopen(f"{server.http_base}/v1/infer", body, timeout=10) as response:
        answer = json.load(response)
    assert answer["version"] == grpc_scores.version
    np.testing.assert_allclose(answer["outputs"]["score"], grpc_scores["score"], rtol=1e-6)
    assert answer["features"]["product.category_id"] == list(
        grpc_scores.features["product.category_id"]
    )


def test_explain_and_return_features(client: InferflowClient) -> None:
    products = [1, 2, 3, PRODUCTS + 7]
    scores = client.infer(
        "ranker",
        {"user_id": 3, "product_ids": products},
        return_features=["product.rating", "user.price_sensitivity"],
        explain=True,
    )
    stages = [name for name, _ in scores.timings]
    assert stages[0] == "context"
    assert "fetch 1: user, product" in stages and "fetch 2: affinity" in stages
    assert {"model pctr", "model pcvr", "expression score"} <= set(stages)
    assert all(ms >= 0 for _, ms in scores.timings)
    assert scores.defaults["product.price"] == 1  # the product that is not stored
    assert scores.features["product.rating"][3] == 0  # ...reads as its default
    assert len(set(scores.features["user.price_sensitivity"].tolist())) == 1  # broadcast


@pytest.mark.parametrize(
    ("model", "context", "code", "message"),
    [
        ("rankr", {"user_id": 1, "product_ids": [1]}, grpc.StatusCode.NOT_FOUND, "'rankr'"),
        ("ranker", {"product_ids": [1]}, grpc.StatusCode.INVALID_ARGUMENT, "'user_id'"),
        (
            "ranker",
            {"user_id": "abc", "product_ids": [1]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "user_id",
        ),
        (
            "ranker",
            {"user_id": 1, "product_ids": list(range(1001))},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "at most 1000",
        ),
        (
            "ranker",
            {"user_id": 1, "product_ids": [1], "shop": 2},
            grpc.StatusCode.INVALID_ARGUMENT,
            "'shop'",
        ),
    ],
)
def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    client: InferflowClient,
    model: str,
    context: dict[str, Any],
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.infer(model, context)
    assert caught.value.code() == code
    assert message in (caught.value.details() or "")
    assert client.infer("ranker", {"user_id": 1, "product_ids": [1, 2]}).count == 2


def test_the_cli_prints_the_top_candidates(server: RunningServer, data: Path) -> None:
    products = ",".join(str(p) for p in range(1, 101))
    shown = inferstack(
        "infer",
        "ranker",
        "user_id=42",
        f"product_ids={products}",
        "--json",
        "-t",
        server.grpc_target,
        data_dir=data,
    )
    payload = json.loads(shown.stdout)
    scores = payload["outputs"]["score"]
    assert len(scores) == 100 and payload["model"] == "ranker"
    bad = inferstack(
        "infer",
        "ranker",
        "user_id=x",
        "product_ids=1",
        "-t",
        server.grpc_target,
        data_dir=data,
        check=False,
    )
    assert bad.returncode == 1 and "user_id" in bad.stderr and "Traceback" not in bad.stderr


def test_a_refused_config_changes_nothing_on_the_server(
    client: InferflowClient, sample: Path, data: Path, tmp_path: Path
) -> None:
    before = client.infer("ranker", {"user_id": 5, "product_ids": [1, 2, 3]})
    broken = tmp_path / "ranker.yaml"
    broken.write_text(
        (sample / "ranker.yaml").read_text().replace("pctr * pcvr ** 0.5", "pctr * nothing")
    )
    for onnx in ("pctr.onnx", "pcvr.onnx"):
        (tmp_path / onnx).write_bytes((sample / onnx).read_bytes())
    refused = inferstack("apply", "-f", str(broken), data_dir=data, check=False)
    assert refused.returncode == 1 and "nothing" in refused.stderr
    time.sleep(1.0)  # longer than servers take to see an applied change
    after = client.infer("ranker", {"user_id": 5, "product_ids": [1, 2, 3]})
    assert after.version == before.version
    np.testing.assert_array_equal(after["score"], before["score"])


def _consistent(scores: Scores) -> bool:
    """v1 scores pctr * pcvr ** 0.5; the next version pctr * pcvr. Never a mix."""
    pctr, pcvr = scores["pctr"], scores["pcvr"]
    formula = pctr * pcvr ** np.float32(0.5) if scores.version == 1 else pctr * pcvr
    return bool(np.allclose(scores["score"], formula, rtol=1e-5))


async def test_a_new_version_applied_under_load_answers_within_a_second(
    server: RunningServer, sample: Path, data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "v2"
    folder.mkdir()
    text = (sample / "ranker.yaml").read_text()
    (folder / "ranker.yaml").write_text(text.replace("pctr * pcvr ** 0.5", "pctr * pcvr"))
    for onnx in ("pctr.onnx", "pcvr.onnx"):
        (folder / onnx).write_bytes((sample / onnx).read_bytes())
    rng = np.random.default_rng(9)
    seen: list[tuple[float, Scores]] = []
    stop = asyncio.Event()

    async def caller(client: AsyncInferflowClient) -> None:
        deadline = time.monotonic() + 60  # bounded even if the test body fails
        while not stop.is_set() and time.monotonic() < deadline:
            user, products = random_request(rng, 50)
            started = time.monotonic()
            scores = await client.infer("ranker", {"user_id": user, "product_ids": products})
            seen.append((started, scores))

    async with AsyncInferflowClient(server.grpc_target, connections=2) as client:
        callers = [asyncio.create_task(caller(client)) for _ in range(4)]
        await asyncio.sleep(0.5)
        before = seen[-1][1].version
        applied = await asyncio.to_thread(inferstack, "apply", "-f", str(folder), data_dir=data)
        assert f"v{before} -> v{before + 1}" in applied.stdout
        applied_at = time.monotonic()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*callers)

    assert all(_consistent(s) for _, s in seen if s.version in (1, 2))
    late = [s.version for started, s in seen if started > applied_at + 1.0]
    assert late and set(late) == {before + 1}
    assert {s.version for _, s in seen} == {before, before + 1}


def test_sampled_requests_are_logged_to_parquet(sample: Path, data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "logged"
    folder.mkdir()
    text = (sample / "ranker.yaml").read_text()
    text = text.replace("name: ranker", "name: logged").replace("sample_rate: 0", "sample_rate: 1")
    (folder / "logged.yaml").write_text(text)
    for onnx in ("pctr.onnx", "pcvr.onnx"):
        (folder / onnx).write_bytes((sample / onnx).read_bytes())
    inferstack("apply", "-f", str(folder), data_dir=data)
    log_dir = tmp_path / "inference-log"
    running = start_server(
        data, workers=1, env={"INFERSTACK_INFERFLOW__INFERENCE_LOG__DIRECTORY": str(log_dir)}
    )
    responses = []
    try:
        with InferflowClient(running.grpc_target) as client:
            for user in range(1, 6):
                products = list(range(user, user + 20))
                responses.append(
                    (products, client.infer("logged", {"user_id": user, "product_ids": products}))
                )
    finally:
        assert running.stop() == 0  # closing the log completes its files
    table = ds.dataset(log_dir, format="parquet").to_table().to_pandas()
    assert len(table) == 5 * 20
    for products, scores in responses:
        rows = table[table["request_id"] == scores.request_id].sort_values("position")
        assert rows["candidate"].tolist() == products
        np.testing.assert_allclose(rows["output.score"], scores["score"], rtol=1e-6)
        assert (rows["version"] == scores.version).all()


def test_an_unknown_model_over_http_is_404(server: RunningServer) -> None:
    body = json.dumps({"model": "nope", "context": {"user_id": 1}}).encode()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{server.http_base}/v1/infer", body, timeout=10)
    assert caught.value.code == 404
    assert "nope" in json.load(caught.value)["error"]["message"]


def test_inferflow_can_fetch_from_a_remote_feature_store(
    server: RunningServer, sample: Path, tmp_path: Path
) -> None:
    # This server's own store holds the definitions and no rows: its scores can only match
    # if its inferflow reads the features from the first server.
    own = tmp_path / "definitions-only"
    inferstack("apply", "-f", str(sample), data_dir=own)
    remote = start_server(
        own, workers=1, env={"INFERSTACK_INFERFLOW__FEATURE_STORE": server.grpc_target}
    )
    try:
        rng = np.random.default_rng(21)
        with (
            FeatureStoreClient(server.grpc_target) as features,
            InferflowClient(remote.grpc_target) as client,
        ):
            for _ in range(3):
                user, products = random_request(rng, 40)
                scores = client.infer("ranker", {"user_id": user, "product_ids": products})
                expected = expected_scores(features, sample, user, products)
                for name in ("pctr", "pcvr"):
                    np.testing.assert_allclose(scores[name], expected[name], rtol=1e-6)
        with FeatureStoreClient(remote.grpc_target) as local:
            assert not local.retrieve("product", {"product_id": products}).found().any()
    finally:
        assert remote.stop() == 0


def test_metrics_show_infer_calls_parts_and_default_rows(
    server: RunningServer, client: InferflowClient
) -> None:
    client.infer("ranker", {"user_id": 2, "product_ids": [1, 2, PRODUCTS + 9]})
    with urllib.request.urlopen(f"{server.http_base}/metrics", timeout=5) as response:
        text = response.read().decode()
    lines = text.splitlines()

    def value(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

    assert value('inferstack_requests_total{code="OK",method="Infer"}') >= 1
    for part in ("fetch", "model", "expression", "other"):
        assert value(f'inferstack_infer_seconds_count{{model="ranker",part="{part}"}}') >= 1
    assert value('inferstack_infer_default_rows_total{fetch="product",model="ranker"}') >= 1
