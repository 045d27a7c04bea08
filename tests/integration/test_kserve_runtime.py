"""KServeRuntime and WeightedRuntime against a real MLServer (Open Inference Protocol, gRPC).

MLServer comes from scripts/services.py and serves `pcvr-test`, a scikit-learn logistic
regression on 12 features trained by the MLServer venv. Both venvs pin the same
scikit-learn, numpy and joblib, so the test loads the very model file the server loaded and
compares the server's answers with its own. A small in-process grpc.aio server stands in
where MLServer cannot: a model that never answers, and outputs sent as typed contents.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import joblib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import pytest

from inferstack.core.errors import (
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from inferstack.inferflow.runtimes.kserve import KServeRuntime
from inferstack.inferflow.runtimes.weighted import WeightedRuntime
from inferstack.proto.kserve.v2 import grpc_service_pb2 as pb
from inferstack.proto.kserve.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ROOT

pytestmark = pytest.mark.services

MODEL = "pcvr-test"
WIDTH = 12
TIMEOUT = 10.0  # generous: MLServer shares two cores with the other services
HANG_GUARD = 10.0  # a bound against hangs, not a performance claim
Output = pb.ModelInferResponse.InferOutputTensor


@pytest.fixture(scope="module")
def served_model(mlserver_endpoint: str) -> Any:
    """The model file MLServer loaded, read by this venv's scikit-learn."""
    services_dir = Path(os.environ.get("INFERSTACK_SERVICES_DIR") or ROOT / ".services")
    return joblib.load(services_dir / "mlserver" / "conf" / MODEL / "model.joblib")


def features(rows: int, seed: int = 0, dtype: type = np.float64) -> npt.NDArray[Any]:
    return np.random.default_rng(seed).normal(size=(rows, WIDTH)).astype(dtype)


def dead_address() -> str:
    """A loopback port nobody listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_probabilities_equal_sklearn_on_the_same_rows(
    mlserver_endpoint: str, served_model: Any
) -> None:
    runtime = KServeRuntime(
        mlserver_endpoint, MODEL, output_names=["predict_proba"], timeout=TIMEOUT
    )
    try:
        matrix = features(64)
        outputs = await runtime.infer(matrix)
    finally:
        await runtime.close()
    assert list(outputs) == ["predict_proba"]
    scores = outputs["predict_proba"]
    expected = served_model.predict_proba(matrix)
    assert scores.dtype == np.float64 and scores.shape == (64, 2)
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=0)
    # Not a constant model: the rows get different scores on both sides of 0.5.
    assert scores[:, 1].min() < 0.5 < scores[:, 1].max()


async def test_float32_matrix_is_scored_as_fp32(mlserver_endpoint: str, served_model: Any) -> None:
    runtime = KServeRuntime(
        mlserver_endpoint, MODEL, output_names=["predict_proba"], timeout=TIMEOUT
    )
    try:
        matrix = features(16, seed=1, dtype=np.float32)
        scores = (await runtime.infer(matrix))["predict_proba"]
    finally:
        await runtime.close()
    expected = served_model.predict_proba(matrix)
    assert scores.dtype == expected.dtype
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


async def test_default_output_is_predict_and_both_can_be_requested(
    mlserver_endpoint: str, served_model: Any
) -> None:
    matrix = features(32, seed=2)
    default = KServeRuntime(mlserver_endpoint, MODEL, timeout=TIMEOUT)
    both = KServeRuntime(
        mlserver_endpoint, MODEL, output_names=["predict", "predict_proba"], timeout=TIMEOUT
    )
    try:
        plain = await default.infer(matrix)
        together = await both.infer(matrix)
    finally:
        await default.close()
        await both.close()
    assert list(plain) == ["predict"]
    assert plain["predict"].dtype == np.int64 and plain["predict"].shape == (32, 1)
    np.testing.assert_array_equal(plain["predict"][:, 0], served_model.predict(matrix))
    assert set(together) == {"predict", "predict_proba"}
    np.testing.assert_array_equal(together["predict"], plain["predict"])
    np.testing.assert_allclose(together["predict_proba"], served_model.predict_proba(matrix))


async def test_many_concurrent_calls_share_one_channel(
    mlserver_endpoint: str, served_model: Any
) -> None:
    runtime = KServeRuntime(
        mlserver_endpoint, MODEL, output_names=["predict_proba"], timeout=TIMEOUT
    )
    matrices = [features(8, seed=seed) for seed in range(20)]
    try:
        results = await asyncio.gather(*(runtime.infer(m) for m in matrices))
    finally:
        await runtime.close()
    for matrix, outputs in zip(matrices, results, strict=True):
        np.testing.assert_allclose(outputs["predict_proba"], served_model.predict_proba(matrix))


async def test_model_version_selects_and_unknown_version_is_not_found(
    mlserver_endpoint: str,
) -> None:
    versioned = KServeRuntime(mlserver_endpoint, MODEL, "1", timeout=TIMEOUT)
    missing = KServeRuntime(mlserver_endpoint, MODEL, "9", timeout=TIMEOUT)
    try:
        assert (await versioned.infer(features(2)))["predict"].shape == (2, 1)
        with pytest.raises(NotFoundError) as caught:
            await missing.infer(features(2))
    finally:
        await versioned.close()
        await missing.close()
    message = str(caught.value)
    assert f"kserve {MODEL}/9@{mlserver_endpoint}" in message
    assert "version 9 not found" in message


async def test_wrong_model_name_is_not_found_naming_it(mlserver_endpoint: str) -> None:
    runtime = KServeRuntime(mlserver_endpoint, "no-such-model", timeout=TIMEOUT)
    try:
        with pytest.raises(NotFoundError) as infer_error:
            await runtime.infer(features(2))
        with pytest.raises(NotFoundError) as check_error:
            await runtime.check_ready()
    finally:
        await runtime.close()
    for error in (infer_error.value, check_error.value):
        assert "no-such-model" in str(error) and mlserver_endpoint in str(error)
        assert error.status == "NOT_FOUND"


async def test_server_refusal_is_invalid_argument_with_its_message(
    mlserver_endpoint: str,
) -> None:
    runtime = KServeRuntime(
        mlserver_endpoint, MODEL, output_names=["decision_path"], timeout=TIMEOUT
    )
    try:
        with pytest.raises(InvalidArgumentError) as caught:
            await runtime.infer(features(2))
    finally:
        await runtime.close()
    message = str(caught.value)
    assert message.startswith(f"kserve {MODEL}@{mlserver_endpoint}: ModelInfer: refused: ")
    assert "decision_path was received" in message  # MLServer's own words


async def test_check_ready_reads_the_declared_input(
    mlserver_endpoint: str, served_model: Any
) -> None:
    runtime = KServeRuntime(
        mlserver_endpoint, MODEL, output_names=["predict_proba"], timeout=TIMEOUT
    )
    try:
        assert await runtime.server_ready()
        assert await runtime.model_ready()
        metadata = await runtime.check_ready()
        assert metadata.name == MODEL
        assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [
            ("input-0", "FP64", (-1, WIDTH))
        ]
        assert {t.name for t in metadata.outputs} == {"predict", "predict_proba"}
        # The declared width is enforced here, before the server answers with INTERNAL.
        with pytest.raises(InvalidArgumentError, match=r"the matrix has 5 columns, .* takes 12"):
            await runtime.infer(np.ones((3, 5)))
        # The declared datatype wins: a float32 matrix now travels as FP64.
        matrix = features(4, seed=3, dtype=np.float32)
        scores = (await runtime.infer(matrix))["predict_proba"]
    finally:
        await runtime.close()
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, served_model.predict_proba(matrix.astype(np.float64)))


async def test_check_ready_refuses_an_input_name_the_model_lacks(mlserver_endpoint: str) -> None:
    runtime = KServeRuntime(mlserver_endpoint, MODEL, input_name="features", timeout=TIMEOUT)
    try:
        with pytest.raises(InvalidArgumentError, match=r"no input 'features' .*'input-0'"):
            await runtime.check_ready()
    finally:
        await runtime.close()


async def test_dead_address_is_unavailable_within_the_timeout() -> None:
    address = dead_address()
    runtime = KServeRuntime(address, MODEL, timeout=0.5)
    try:
        with pytest.raises(UnavailableError) as caught:
            # The runtime must fail by itself; wait_for only turns a hang into a failure.
            await asyncio.wait_for(runtime.infer(features(2)), HANG_GUARD)
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(runtime.check_ready(), HANG_GUARD)
    finally:
        await runtime.close()
    assert f"kserve {MODEL}@{address}" in str(caught.value)


async def test_closed_runtime_refuses_calls(mlserver_endpoint: str) -> None:
    runtime = KServeRuntime(mlserver_endpoint, MODEL, timeout=TIMEOUT)
    await runtime.infer(features(1))
    await runtime.close()
    with pytest.raises(UnavailableError, match="closed"):
        await runtime.infer(features(1))


async def test_weighted_split_over_two_real_runtimes(
    mlserver_endpoint: str, served_model: Any
) -> None:
    # Two arms on the same server that answer differently, so each answer shows its arm.
    probabilities = KServeRuntime(
        mlserver_endpoint, MODEL, output_names=["predict_proba"], timeout=TIMEOUT
    )
    labels = KServeRuntime(mlserver_endpoint, MODEL, output_names=["predict"], timeout=TIMEOUT)
    weighted = WeightedRuntime([(probabilities, 3), (labels, 1)], rng=random.Random(11))
    assert weighted.description == (
        f"weighted [kserve {MODEL}@{mlserver_endpoint} weight 3 (75.0%), "
        f"kserve {MODEL}@{mlserver_endpoint} weight 1 (25.0%)]"
    )
    # The same seed replayed says which arm each call must reach.
    replay = WeightedRuntime([(probabilities, 3), (labels, 1)], rng=random.Random(11))
    expected_arms = [replay.choose() for _ in range(40)]
    matrix = features(6, seed=4)
    try:
        for arm in expected_arms:
            outputs = await weighted.infer(matrix)
            if arm is probabilities:
                assert list(outputs) == ["predict_proba"]
                np.testing.assert_allclose(
                    outputs["predict_proba"], served_model.predict_proba(matrix)
                )
            else:
                assert list(outputs) == ["predict"]
                np.testing.assert_array_equal(
                    outputs["predict"][:, 0], served_model.predict(matrix)
                )
    finally:
        await weighted.close()
    assert {id(arm) for arm in expected_arms} == {id(probabilities), id(labels)}
    with pytest.raises(UnavailableError, match="closed"):
        await probabilities.infer(matrix)


# --------------------------------------------------------------------------------------------
# What MLServer does not do: never answer, or answer with typed contents
# --------------------------------------------------------------------------------------------


class ScriptedServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """`slow` never answers in time; `typed` echoes row sums as typed FP32, INT32 and BOOL."""

    async def ModelInfer(  # noqa: N802 (the protocol's method name)
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        if request.model_name == "slow":
            await asyncio.sleep(HANG_GUARD)
        tensor = request.inputs[0]
        dtype = {"FP32": "<f4", "FP64": "<f8"}[tensor.datatype]
        matrix = np.frombuffer(request.raw_input_contents[0], dtype=dtype).reshape(tensor.shape)
        sums = matrix.sum(axis=1)
        rows = len(sums)
        contents = pb.InferTensorContents
        return pb.ModelInferResponse(
            model_name=request.model_name,
            outputs=[
                Output(
                    name="sum", datatype="FP32", shape=[rows], contents=contents(fp32_contents=sums)
                ),
                Output(
                    name="rounded",
                    datatype="INT32",
                    shape=[rows, 1],
                    contents=contents(int_contents=np.rint(sums).astype(int).tolist()),
                ),
                Output(
                    name="positive",
                    datatype="BOOL",
                    shape=[rows],
                    contents=contents(bool_contents=(sums > 0).tolist()),
                ),
            ],
        )


@pytest.fixture(scope="module")
async def scripted_server() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(ScriptedServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(grace=None)


async def test_deadline_is_unavailable_naming_the_timeout(scripted_server: str) -> None:
    runtime = KServeRuntime(scripted_server, "slow", timeout=0.2)
    try:
        with pytest.raises(UnavailableError) as caught:
            await asyncio.wait_for(runtime.infer(features(2)), HANG_GUARD)
    finally:
        await runtime.close()
    assert str(caught.value) == (
        f"kserve slow@{scripted_server}: ModelInfer: no answer within 0.2s"
    )


async def test_typed_contents_are_decoded_over_the_wire(scripted_server: str) -> None:
    runtime = KServeRuntime(scripted_server, "typed", timeout=TIMEOUT)
    matrix = np.array([[1.0, 2.0], [-3.0, 0.25], [0.5, 0.25]])
    try:
        outputs = await runtime.infer(matrix)
    finally:
        await runtime.close()
    assert outputs["sum"].dtype == np.float32
    assert outputs["sum"].tolist() == [3.0, -2.75, 0.75]
    assert outputs["rounded"].dtype == np.int32 and outputs["rounded"].tolist() == [[3], [-3], [1]]
    assert outputs["positive"].tolist() == [True, False, True]
