"""Inferflow calling a remote model on a real MLServer (Open Inference Protocol over gRPC).

`inferstack serve` on an embedded data dir holds the sample data, the sample ranker and three
model configs over MLServer's `pcvr-test` (a scikit-learn classifier on 12 features): one on
the real endpoint, one A/B split between the real endpoint and a dead address, and one with
only the dead address. Scores are checked against the very model file MLServer loaded, run
here on rows read through the feature store client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import pytest

from inferstack.client import FeatureStoreClient, Query
from inferstack.client.inferflow import InferflowClient
from inferstack.sampledata.generate import GROUP_FILES
from inferstack.server.supervisor import free_port
from tests.conftest import ROOT
from tests.ranker import ranker_sample
from tests.servers import RunningServer, inferstack, start_server

pytestmark = pytest.mark.services

SERVED_MODEL = "pcvr-test"
USER_FEATURES = (
    "avg_order_value",
    "orders_30d",
    "clicks_7d",
    "sessions_7d",
    "cart_adds_7d",
    "return_rate",
)
PRODUCT_FEATURES = ("price", "rating", "rating_count", "ctr_1d", "ctr_7d", "ctr_30d")
# Inputs interleaved across the two fetches, so a column placed wrongly changes the scores.
INPUTS = tuple(
    reference
    for user, product in zip(USER_FEATURES, PRODUCT_FEATURES, strict=True)
    for reference in (f"user.{user}", f"product.{product}")
)
MAX_ROWS = 16  # 100 candidates -> 7 concurrent calls
PRODUCTS = 400  # products in the sample at scale 0.002
USERS = 200
DEAD_TIMEOUT = "300ms"
FAILURE_BOUND = 3.0  # seconds: a bound against hanging, not a performance claim


def model_yaml(name: str, endpoints: list[str], timeout: str) -> str:
    """A model config scoring candidates with `pcvr-test` on each endpoint (weight 1 each)."""
    entries = "\n".join(
        f"          - {{address: '{address}', model: {SERVED_MODEL}, weight: 1}}"
        for address in endpoints
    )
    inputs = "\n".join(f"          - {reference}" for reference in INPUTS)
    return f"""\
models:
  - name: {name}
    context:
      - {{name: user_id, type: int64}}
      - {{name: product_ids, type: int64, candidates: true}}
    fetches:
      - name: user
        entity: user
        keys: [context.user_id]
        features: [{", ".join(f"user_profile.{f}" for f in USER_FEATURES)}]
      - name: product
        entity: product
        keys: [context.product_ids]
        features: [{", ".join(f"product_stats.{f}" for f in PRODUCT_FEATURES)}]
    models:
      - name: buy
        runtime: kserve
        endpoints:
{entries}
        inputs:
{inputs}
        outputs: [{{name: p_buy, tensor: predict_proba, index: 1}}]
        dtype: float64
        max_rows: {MAX_ROWS}
        timeout: {timeout}
    response:
      outputs: [p_buy]
"""


@pytest.fixture(scope="module")
def served_model(mlserver_endpoint: str) -> Any:
    """The model file MLServer loaded, read by this venv's scikit-learn (same pins)."""
    services_dir = Path(os.environ.get("INFERSTACK_SERVICES_DIR") or ROOT / ".services")
    return joblib.load(services_dir / "mlserver" / "conf" / SERVED_MODEL / "model.joblib")


@pytest.fixture(scope="module")
def dead_address() -> str:
    """A loopback port nothing listens on (bound once, then released)."""
    return f"127.0.0.1:{free_port('127.0.0.1')}"


@pytest.fixture(scope="module")
def server(
    mlserver_endpoint: str, dead_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    sample = ranker_sample(tmp_path_factory.mktemp("sample"), scale=0.002)
    (sample / "buyers.yaml").write_text(
        model_yaml("buyer", [mlserver_endpoint], "10s")
        + model_yaml("buyer_ab", [mlserver_endpoint, dead_address], "10s").removeprefix("models:\n")
        + model_yaml("buyer_dead", [dead_address], DEAD_TIMEOUT).removeprefix("models:\n")
    )
    data = tmp_path_factory.mktemp("data")
    applied = inferstack("apply", "-f", str(sample), data_dir=data)
    for name in ("ranker", "buyer", "buyer_ab", "buyer_dead"):
        assert f"+ model {name} (v1)" in applied.stdout, applied.stdout
    for group, file in GROUP_FILES.items():
        inferstack("ingest", "-g", group, str(sample / file), data_dir=data)
    running = start_server(data)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def flow(server: RunningServer) -> Iterator[InferflowClient]:
    with InferflowClient(server.grpc_target, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def store(server: RunningServer) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(server.grpc_target, timeout=10) as client:
        yield client


def expected_p_buy(
    store: FeatureStoreClient, served_model: Any, user_id: int, products: list[int]
) -> npt.NDArray[np.float64]:
    """predict_proba[:, 1] of the served model on rows read through the feature store."""
    user, items = store.retrieve_batch(
        [
            Query("user", {"user_id": [user_id]}, [f"user_profile.{f}" for f in USER_FEATURES]),
            Query(
                "product",
                {"product_id": products},
                [f"product_stats.{f}" for f in PRODUCT_FEATURES],
            ),
        ]
    )
    columns = []
    for user_feature, product_feature in zip(USER_FEATURES, PRODUCT_FEATURES, strict=True):
        value = np.asarray(user[f"user_profile.{user_feature}"], dtype=np.float32)
        columns.append(np.broadcast_to(value, (len(products),)))
        columns.append(np.asarray(items[f"product_stats.{product_feature}"], dtype=np.float32))
    rows = np.column_stack(columns).astype(np.float64)  # as inferflow sends them (dtype float64)
    probabilities: npt.NDArray[np.float64] = served_model.predict_proba(rows)[:, 1]
    return probabilities


def candidates(rng: np.random.Generator, count: int) -> list[int]:
    return [int(p) for p in rng.choice(np.arange(1, PRODUCTS + 1), count, replace=False)]


def assert_unavailable_naming_the_endpoint(error: grpc.RpcError, address: str) -> None:
    code, details = error.code(), error.details() or ""
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert SERVED_MODEL in details and address in details, details


def test_split_calls_give_sklearn_scores_in_candidate_order(
    flow: InferflowClient, store: FeatureStoreClient, served_model: Any
) -> None:
    rng = np.random.default_rng(5)
    for user_id in (1, 42, USERS):
        products = candidates(rng, 100)  # 7 parts of at most 16 rows, scored concurrently
        scores = flow.infer("buyer", {"user_id": user_id, "product_ids": products})
        assert (scores.model, scores.count) == ("buyer", 100)
        expected = expected_p_buy(store, served_model, user_id, products)
        np.testing.assert_allclose(scores["p_buy"], expected, rtol=1e-5, atol=0)
        # Every candidate scores differently, so a part placed at the wrong rows would show.
        assert len(np.unique(scores["p_buy"])) == 100


def test_an_ab_split_with_a_dead_arm_fails_only_its_share(
    flow: InferflowClient, store: FeatureStoreClient, served_model: Any, dead_address: str
) -> None:
    rng = np.random.default_rng(6)
    succeeded = failed = 0
    for _ in range(40):
        user_id, products = int(rng.integers(1, USERS + 1)), candidates(rng, 10)  # one call
        try:
            scores = flow.infer("buyer_ab", {"user_id": user_id, "product_ids": products})
        except grpc.RpcError as error:
            assert_unavailable_naming_the_endpoint(error, dead_address)
            failed += 1
            continue
        expected = expected_p_buy(store, served_model, user_id, products)
        np.testing.assert_allclose(scores["p_buy"], expected, rtol=1e-5, atol=0)
        succeeded += 1
    assert succeeded > 0 and failed > 0, (succeeded, failed)
    # The server keeps serving the model whose endpoint is up.
    assert flow.infer("buyer", {"user_id": 3, "product_ids": [1, 2, 3]}).count == 3


def test_only_a_dead_endpoint_fails_every_request_quickly(
    flow: InferflowClient, dead_address: str
) -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        user_id, products = int(rng.integers(1, USERS + 1)), candidates(rng, 100)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            flow.infer("buyer_dead", {"user_id": user_id, "product_ids": products})
        assert time.monotonic() - started < FAILURE_BOUND
        assert_unavailable_naming_the_endpoint(caught.value, dead_address)
    # Other models are untouched: the ONNX ranker and the model on the live endpoint answer.
    ranked = flow.infer("ranker", {"user_id": 9, "product_ids": [4, 5, 6, 7]})
    assert ranked.count == 4 and np.all((ranked["pctr"] > 0) & (ranked["pctr"] < 1))
    assert flow.infer("buyer", {"user_id": 9, "product_ids": [4, 5]}).count == 2
