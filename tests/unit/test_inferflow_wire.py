"""Inferflow's surfaces without a server: wire round trips, the client's Scores, the HTTP
gateway's parsing and JSON, the CLI's context parsing and `inferstack models` output."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from typer.testing import CliRunner

from inferstack.cli import models as models_cli
from inferstack.cli.infer import parse_context, scores_json
from inferstack.client.channels import AsyncChannelPool, ChannelPool
from inferstack.client.inferflow import AsyncInferflowClient, InferflowClient, decode_response
from inferstack.configstore.files import open_files
from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.registry import Registry, plan
from inferstack.core.rowformat import var_column
from inferstack.core.types import FeatureType
from inferstack.featurestore.catalog import Catalog
from inferstack.inferflow import describe
from inferstack.inferflow.executor import InferResult
from inferstack.inferflow.graph import FeatureRef, compile_plan
from inferstack.proto.inferflow.v1 import inferflow_pb2 as pb
from inferstack.proto.inferflow.v1 import inferflow_pb2_grpc as pb_grpc
from inferstack.server.components import build
from inferstack.server.grpc import inferflow as inferflow_grpc
from inferstack.server.grpc.inferflow import response_to_proto
from inferstack.server.grpc.registration import add_service
from inferstack.server.http.app import make_app
from inferstack.server.http.inferflow import parse_request, result_to_json
from inferstack.server.settings import load_settings
from inferstack.server.supervisor import free_port
from inferstack.wire.inferflow import request_from_proto, request_to_proto
from tests.helpers import open_pipeline

# ---- a small registry: three entity hops, two models, one expression -------------------------

SPEC: dict[str, Any] = {
    "entities": [
        {"name": "user", "keys": [{"name": "user_id", "type": "int64"}]},
        {"name": "product", "keys": [{"name": "product_id", "type": "int64"}]},
        {
            "name": "user_category",
            "keys": [
                {"name": "user_id", "type": "int64"},
                {"name": "category_id", "type": "string"},
            ],
        },
    ],
    "feature_groups": [
        {
            "name": "profile",
            "entity": "user",
            "features": [{"name": "activity", "type": "float32"}],
        },
        {
            "name": "product_stats",
            "entity": "product",
            "features": [
                {"name": "price", "type": "float32"},
                {"name": "category_id", "type": "string"},
            ],
        },
        {
            "name": "affinity",
            "entity": "user_category",
            "features": [{"name": "clicks", "type": "float32"}],
        },
    ],
    "models": [
        {
            "name": "ranker",
            "description": "test ranker",
            "context": [
                {"name": "user_id", "type": "int64"},
                {"name": "product_ids", "type": "int64", "candidates": True, "max_rows": 50},
            ],
            "fetches": [
                {
                    "name": "user",
                    "entity": "user",
                    "keys": ["context.user_id"],
                    "features": ["profile"],
                },
                {
                    "name": "product",
                    "entity": "product",
                    "keys": ["context.product_ids"],
                    "features": ["product_stats"],
                },
                {
                    "name": "affinity",
                    "entity": "user_category",
                    "keys": ["context.user_id", "product.category_id"],
                    "features": ["affinity.clicks"],
                },
            ],
            "models": [
                {
                    "name": "pctr",
                    "runtime": "onnx",
                    "path": "pctr.onnx",
                    "inputs": ["user.activity", "product.price", "affinity.clicks"],
                    "outputs": ["pctr"],
                },
                {
                    "name": "pcvr",
                    "runtime": "onnx",
                    "path": "pcvr.onnx",
                    "inputs": ["product.price", "pctr"],  # not contiguous: a copy
                    "outputs": ["pcvr"],
                },
            ],
            "expressions": {"score": "pctr * pcvr ** 0.5"},
            "response": {"outputs": ["score", "pctr"], "features": ["product.category_id"]},
        }
    ],
}


def small_registry() -> Registry:
    parsed = DefinitionsFile.model_validate(SPEC)
    return plan(Registry(), parsed.entities, parsed.feature_groups, parsed.models).registry


# ---- requests --------------------------------------------------------------------------------


def _round_trip_request(request: pb.InferRequest) -> pb.InferRequest:
    parsed = pb.InferRequest()
    parsed.ParseFromString(request.SerializeToString())
    return parsed


def test_request_round_trip_keeps_values_types_and_flags() -> None:
    request = request_to_proto(
        "ranker",
        {
            "user_id": 42,  # a bare scalar
            "product_ids": np.array([7, 3, 7], dtype=np.int64),
            "region": "eu",  # a bare string
            "tags": ["a", "b"],
            "shard": np.uint64(2**63 + 5),  # above int64: travels as uint64
            "one": np.array(9),  # a 0-d array is a scalar
        },
        ["product.brand"],
        explain=True,
        request_id="r-1",
    )
    parsed = _round_trip_request(request)
    assert parsed.explain is True
    assert parsed.request_id == "r-1"
    model, context, return_features = request_from_proto(parsed)
    assert model == "ranker"
    assert return_features == ["product.brand"]
    assert np.asarray(context["user_id"]).tolist() == [42]
    assert np.asarray(context["product_ids"]).tolist() == [7, 3, 7]
    assert np.asarray(context["product_ids"]).dtype == np.int64
    assert context["region"] == ["eu"]
    assert context["tags"] == ["a", "b"]
    assert np.asarray(context["shard"]).dtype == np.uint64
    assert np.asarray(context["shard"]).tolist() == [2**63 + 5]
    assert np.asarray(context["one"]).tolist() == [9]


def test_request_defaults_are_no_explain_and_no_id() -> None:
    parsed = _round_trip_request(request_to_proto("ranker", {"user_id": [1]}))
    assert parsed.explain is False
    assert parsed.request_id == ""
    assert list(parsed.return_features) == []


def test_a_context_input_given_twice_is_refused_naming_it() -> None:
    request = request_to_proto("ranker", {"user_id": 1})
    request.context.add(name="user_id", int64_values=[2])
    with pytest.raises(InvalidArgumentError, match="'user_id' is given twice"):
        request_from_proto(request)


# ---- responses -------------------------------------------------------------------------------


def _ref(fetch: str, feature: str, type_text: str) -> FeatureRef:
    return FeatureRef(fetch, feature, f"g.{feature}", "g", FeatureType.parse(type_text))


def sample_result() -> InferResult:
    features: dict[str, Any] = {
        "product.category_id": (
            _ref("product", "category_id", "string"),
            var_column([b"shoes", "tée".encode(), b""]),
        ),
        # A remote feature store hands strings back as str objects.
        "product.brand": (
            _ref("product", "brand", "string"),
            np.array(["acme", "ñandú", "x"], dtype=object),
        ),
        "product.blob": (_ref("product", "blob", "bytes"), var_column([b"\x00\xff", b"", b"z"])),
        "product.embedding": (
            _ref("product", "embedding", "float32[2]"),
            np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32),
        ),
        "product.in_stock": (
            _ref("product", "in_stock", "bool"),
            np.array([True, False, True]),
        ),
        "product.seller": (_ref("product", "seller", "int64"), np.array([-1, 0, 2**40])),
    }
    return InferResult(
        model="ranker",
        version=3,
        count=3,
        outputs={
            "score": np.array([0.5, np.nan, np.inf], dtype=np.float32),
            "pctr": np.array([0.25, 0.75, 0.125], dtype=np.float32),
        },
        features=features,
        timings=[("context", 0.000125), ("fetch 1: user, product", 0.002), ("matrix", 0.0005)],
        defaults={"affinity.clicks": 2, "product.price": 0},
        matrix=np.zeros((3, 4), dtype=np.float32),
        candidates=np.array([10, 11, 12]),
    )


def test_response_round_trip_decodes_outputs_and_features_in_their_types() -> None:
    message = response_to_proto("r-9", sample_result(), explain=False)
    scores = decode_response(pb.InferResponse.FromString(message.SerializeToString()))
    assert (scores.model, scores.version, scores.count, scores.request_id) == (
        "ranker",
        3,
        3,
        "r-9",
    )
    assert list(scores.outputs) == ["score", "pctr"]  # the config's order
    np.testing.assert_array_equal(scores.outputs["score"], [0.5, np.nan, np.inf])
    assert scores.outputs["score"].dtype == np.float32
    assert scores["pctr"].tolist() == [0.25, 0.75, 0.125]
    assert scores["product.category_id"].tolist() == ["shoes", "tée", ""]
    assert scores["product.brand"].tolist() == ["acme", "ñandú", "x"]
    assert scores["product.blob"].tolist() == [b"\x00\xff", b"", b"z"]
    assert scores["product.embedding"].shape == (3, 2)
    assert scores["product.embedding"].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert scores["product.in_stock"].dtype == np.bool_
    assert scores["product.in_stock"].tolist() == [True, False, True]
    assert scores["product.seller"].tolist() == [-1, 0, 2**40]
    assert scores.timings == [] and scores.defaults == {}


def test_outputs_are_views_of_the_response_buffer() -> None:
    message = pb.InferResponse.FromString(
        response_to_proto("r", sample_result()).SerializeToString()
    )
    outputs = decode_response(message).outputs["pctr"]
    assert not outputs.flags.owndata  # np.frombuffer: no copy
    assert not outputs.flags.writeable


def test_explain_is_only_sent_when_asked() -> None:
    assert not response_to_proto("r", sample_result(), explain=False).HasField("explain")
    message = response_to_proto("r", sample_result(), explain=True)
    assert message.HasField("explain")
    assert message.explain.rows == 3
    stages = [(s.name, s.milliseconds) for s in message.explain.stages]
    assert [name for name, _ in stages] == [
        "context",
        "fetch 1: user, product",
        "matrix",
        "encode",
    ]
    assert stages[0][1] == pytest.approx(0.125)
    assert stages[1][1] == pytest.approx(2.0)
    assert stages[3][1] >= 0
    assert {d.feature: d.rows for d in message.explain.defaults} == {
        "affinity.clicks": 2,
        "product.price": 0,
    }


def test_explained_scores_carry_timings_in_ms_and_defaults() -> None:
    message = response_to_proto("r", sample_result(), explain=True)
    scores = decode_response(pb.InferResponse.FromString(message.SerializeToString()))
    assert [name for name, _ in scores.timings] == [
        "context",
        "fetch 1: user, product",
        "matrix",
        "encode",
    ]
    assert [ms for _, ms in scores.timings[:3]] == pytest.approx([0.125, 2.0, 0.5])
    assert scores.defaults == {"affinity.clicks": 2, "product.price": 0}


def test_an_empty_request_answers_empty_columns() -> None:
    result = sample_result()
    result.count = 0
    result.outputs = {"score": np.zeros(0, dtype=np.float32)}
    result.features = {
        "product.category_id": (_ref("product", "category_id", "string"), var_column([]))
    }
    scores = decode_response(response_to_proto("r", result))
    assert scores.count == 0
    assert scores["score"].tolist() == []
    assert scores["product.category_id"].tolist() == []
    assert scores.top(5).tolist() == []


# ---- Scores ----------------------------------------------------------------------------------


def _scores(first: list[float], second: list[float] | None = None) -> Any:
    result = sample_result()
    result.count = len(first)
    result.outputs = {"score": np.array(first, dtype=np.float32)}
    if second is not None:
        result.outputs["other"] = np.array(second, dtype=np.float32)
    result.features = {}
    return decode_response(response_to_proto("r", result))


def test_top_ranks_by_the_first_output_ties_in_candidate_order_nan_last() -> None:
    scores = _scores([0.5, math.nan, 0.9, 0.9, -math.inf, 0.1])
    assert scores.top(3).tolist() == [2, 3, 0]
    assert scores.top(10).tolist() == [2, 3, 0, 5, 4, 1]
    assert scores.top(0).tolist() == []


def test_top_by_another_output() -> None:
    scores = _scores([3, 2, 1], [1, 2, 3])
    assert scores.top(2).tolist() == [0, 1]
    assert scores.top(2, by="other").tolist() == [2, 1]
    with pytest.raises(KeyError, match="no output 'missing'"):
        scores.top(1, by="missing")


def test_to_pandas_has_one_row_per_candidate_and_every_column() -> None:
    scores = decode_response(response_to_proto("r", sample_result()))
    frame = scores.to_pandas()
    assert len(frame) == 3
    assert list(frame.columns) == [
        "score",
        "pctr",
        "product.category_id",
        "product.brand",
        "product.blob",
        "product.embedding",
        "product.in_stock",
        "product.seller",
    ]
    assert frame["product.brand"].tolist() == ["acme", "ñandú", "x"]
    assert frame["product.embedding"].iloc[2].tolist() == [5, 6]


# ---- HTTP gateway ----------------------------------------------------------------------------


def test_http_request_takes_bare_scalars_and_lists() -> None:
    model, context, features, explain, request_id = parse_request(
        {
            "model": "ranker",
            "context": {"user_id": 42, "region": ["eu"], "product_ids": [1, 2]},
            "return_features": ["product.brand"],
            "explain": True,
            "request_id": "abc",
        }
    )
    assert model == "ranker"
    assert context == {"user_id": [42], "region": ["eu"], "product_ids": [1, 2]}
    assert (features, explain, request_id) == (["product.brand"], True, "abc")
    assert parse_request({"model": "m", "context": {"a": 1}})[2:] == ([], False, "")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"context": {}}, "'model'"),
        ({"model": "m", "context": [1]}, "'context'"),
        ({"model": "m", "context": {"ids": [[1], [2]]}}, "context 'ids'"),
        ({"model": "m", "context": {"ids": {"a": 1}}}, "context 'ids'"),
        ({"model": "m", "return_features": "x.y"}, "'return_features'"),
        ({"model": "m", "explain": "yes"}, "'explain'"),
        ({"model": "m", "request_id": 7}, "'request_id'"),
    ],
)
def test_http_request_errors_name_the_field(body: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named):
        parse_request(body)


def test_http_json_uses_the_feature_store_conventions() -> None:
    payload = result_to_json("r-2", sample_result(), explain=True)
    text = json.dumps(payload, allow_nan=False)  # valid JSON: no bare NaN or Infinity
    decoded = json.loads(text)
    assert decoded["model"] == "ranker" and decoded["version"] == 3 and decoded["count"] == 3
    assert decoded["request_id"] == "r-2"
    assert decoded["outputs"]["score"] == [0.5, "NaN", "Infinity"]
    assert decoded["features"]["product.category_id"] == ["shoes", "tée", ""]
    assert decoded["features"]["product.brand"] == ["acme", "ñandú", "x"]
    assert decoded["features"]["product.blob"] == [
        base64.b64encode(v).decode() for v in (b"\x00\xff", b"", b"z")
    ]
    assert decoded["features"]["product.embedding"] == [[1, 2], [3, 4], [5, 6]]
    explain = decoded["explain"]
    assert [s["name"] for s in explain["stages"]] == [
        "context",
        "fetch 1: user, product",
        "matrix",
        "encode",
    ]
    assert explain["stages"][1]["milliseconds"] == pytest.approx(2.0)
    assert explain["defaults"] == {"affinity.clicks": 2, "product.price": 0}
    assert explain["rows"] == 3
    assert "explain" not in result_to_json("r", sample_result())


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_context_arguments() -> None:
    assert parse_context(["user_id=42", "product_ids=1, 2,3", "none="]) == {
        "user_id": ["42"],
        "product_ids": ["1", "2", "3"],
        "none": [],
    }


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["user_id"], "context 'user_id': expected"), (["a=1", "a=2"], "context 'a' is given twice")],
)
def test_cli_context_errors(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    with pytest.raises(typer.Exit) as raised:
        parse_context(arguments)
    assert raised.value.exit_code == 1
    assert message in capsys.readouterr().err


def test_cli_json_lists_top_rows_candidates_and_explain() -> None:
    message = response_to_proto("r", sample_result(), explain=True)
    scores = decode_response(message)
    context = {"user_id": ["7"], "product_ids": ["10", "11", "12"]}
    payload = scores_json(scores, context, scores.top(2), explain=True)
    decoded = json.loads(json.dumps(payload, allow_nan=False))
    assert decoded["top"] == [2, 0]  # by the first output, score: inf, then 0.5
    assert decoded["candidates"] == {"product_ids": ["10", "11", "12"]}
    assert decoded["outputs"]["score"] == [0.5, "NaN", "Infinity"]
    assert decoded["explain"]["defaults"]["affinity.clicks"] == 2


# ---- models show / list ----------------------------------------------------------------------


def test_plan_text_shows_stages_keys_concurrency_and_matrix_access() -> None:
    registry = small_registry()
    stored = registry.models["ranker"]
    text = describe.plan_text(compile_plan(stored.definition, Catalog(registry), stored.version))
    lines = text.splitlines()
    assert lines[0] == "ranker v1: test ranker"
    assert "  product_ids: int64  candidates (one row each, at most 50)" in lines
    assert "  user_id: int64  per request" in lines
    assert "stage 1, 2 fetches concurrently" in lines
    assert "    keys: user_id <- context.user_id (once per request)" in lines
    assert "    keys: product_id <- context.product_ids (per row, de-duplicated)" in lines
    stage_2 = lines.index("stage 2")
    assert lines[stage_2 + 1] == "  fetch affinity: entity user_category"
    assert lines[stage_2 + 2] == (
        "    keys: user_id <- context.user_id, category_id <- product.category_id "
        "(per row, de-duplicated)"
    )
    assert lines[stage_2 + 3] == "    features: affinity.clicks"
    assert "  1. model pctr: onnx pctr.onnx" in lines
    assert "     input: 3 columns, view of matrix columns 0-2" in lines
    assert "  2. model pcvr: onnx pcvr.onnx" in lines
    assert "     input: 2 columns, copy (its columns are not contiguous in the matrix)" in lines
    assert "  3. expression score = pctr * pcvr ** 0.5 -> column 5" in lines
    assert "  outputs: score, pctr" in lines
    assert "  features: product.category_id" in lines


def test_plan_text_names_remote_endpoints_and_float64_copies() -> None:
    config = json.loads(json.dumps(SPEC["models"][0]))
    config["models"][0] |= {"dtype": "float64"}  # contiguous, but converted: a copy
    config["models"][1] = {
        "name": "pcvr",
        "runtime": "kserve",
        "endpoints": [{"address": "10.0.0.1:8081", "weight": 3}, {"address": "10.0.0.2:8081"}],
        "inputs": ["product.price", "pctr"],
        "outputs": ["pcvr"],
    }
    parsed = DefinitionsFile.model_validate({**SPEC, "models": [config]})
    registry = plan(Registry(), parsed.entities, parsed.feature_groups, parsed.models).registry
    lines = describe.plan_text(
        compile_plan(registry.models["ranker"].definition, Catalog(registry))
    ).splitlines()
    assert "     input: 3 columns, float64 copy (the model takes float64)" in lines
    assert "  2. model pcvr: kserve 10.0.0.1:8081 x3, 10.0.0.2:8081 x1" in lines


def test_plan_dot_has_every_node_and_reference_edge() -> None:
    registry = small_registry()
    stored = registry.models["ranker"]
    dot = describe.plan_dot(compile_plan(stored.definition, Catalog(registry), stored.version))
    assert dot.startswith('digraph "ranker" {') and dot.endswith("}")
    declared = {line.split('"')[1] for line in dot.splitlines() if "[shape=" in line}
    assert declared == {
        "context:user_id",
        "context:product_ids",
        "fetch:user",
        "fetch:product",
        "fetch:affinity",
        "model:pctr",
        "model:pcvr",
        "expression:score",
        "response",
    }
    edges = {
        (line.split('"')[1], line.split('"')[3]): line.split('label="')[1].split('"')[0]
        for line in dot.splitlines()
        if " -> " in line
    }
    assert set(node for edge in edges for node in edge) <= declared
    assert edges[("context:user_id", "fetch:affinity")] == "key user_id"
    assert edges[("fetch:product", "fetch:affinity")] == "key category_id"
    assert edges[("fetch:affinity", "model:pctr")] == "clicks"
    assert edges[("model:pctr", "model:pcvr")] == "pctr"
    assert edges[("model:pcvr", "expression:score")] == "pcvr"
    assert edges[("expression:score", "response")] == "score"
    assert edges[("fetch:product", "response")] == "category_id"
    assert ("fetch:user", "model:pcvr") not in edges


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    open_files(tmp_path).registry.save(small_registry(), expected_revision=0)
    return tmp_path


def test_models_show_list_and_json_through_the_cli(data_dir: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(models_cli.app, ["show", "ranker", "--data-dir", str(data_dir)])
    assert shown.exit_code == 0, shown.output
    assert "stage 2" in shown.output and "model pcvr" in shown.output
    dot = runner.invoke(models_cli.app, ["show", "ranker", "--dot", "--data-dir", str(data_dir)])
    assert dot.exit_code == 0 and dot.output.startswith('digraph "ranker"')
    as_json = runner.invoke(
        models_cli.app, ["show", "ranker", "--json", "--data-dir", str(data_dir)]
    )
    described = json.loads(as_json.output)
    assert [[f["fetch"] for f in stage] for stage in described["stages"]] == [
        ["user", "product"],
        ["affinity"],
    ]
    assert [s["name"] for s in described["steps"]] == ["pctr", "pcvr", "score"]
    listed = runner.invoke(models_cli.app, ["list", "--json", "--data-dir", str(data_dir)])
    assert json.loads(listed.output) == [
        {
            "name": "ranker",
            "version": 1,
            "fetches": 3,
            "models": 2,
            "expressions": 1,
            "description": "test ranker",
        }
    ]


def test_models_show_unknown_model_names_it_and_the_known_ones(data_dir: Path) -> None:
    result = CliRunner().invoke(models_cli.app, ["show", "nope", "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    assert "model 'nope' not found (models: ranker)" in result.output


# ---- channel pool: one TCP connection per channel, calls spread over them --------------------


class _PeerEcho(pb_grpc.InferflowServicer):  # type: ignore[misc]
    """Answers with the caller's address, so a test can count the client's connections."""

    async def Infer(  # noqa: N802
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InferResponse:
        return pb.InferResponse(model=request.model, request_id=context.peer())


@pytest.fixture
async def echo_target() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_InferflowServicer_to_server(_PeerEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_async_client_spreads_calls_over_its_connections(echo_target: str) -> None:
    async with AsyncInferflowClient(echo_target, connections=3) as client:
        peers = [(await client.infer("m", {"a": 1})).request_id for _ in range(6)]
    assert len(set(peers)) == 3  # three TCP connections (client ports)
    assert peers[:3] == peers[3:]  # used in turn


async def test_two_clients_to_one_target_do_not_share_a_connection(echo_target: str) -> None:
    first = AsyncChannelPool(echo_target, pb_grpc.InferflowStub, connections=1)
    second = AsyncChannelPool(echo_target, pb_grpc.InferflowStub, connections=1)
    try:
        a = await first.stubs()[0].Infer(pb.InferRequest(model="m"))
        b = await second.stubs()[0].Infer(pb.InferRequest(model="m"))
    finally:
        await first.close()
        await second.close()
    assert a.request_id != b.request_id


async def test_sync_client_spreads_calls_over_its_connections(echo_target: str) -> None:
    import asyncio

    def calls() -> list[str]:
        with InferflowClient(echo_target, connections=2) as client:
            return [client.infer("m", {"a": [1]}).request_id for _ in range(4)]

    peers = await asyncio.to_thread(calls)  # the server runs on this loop
    assert len(set(peers)) == 2
    assert peers[:2] == peers[2:]


def test_a_pool_needs_a_connection() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ChannelPool("127.0.0.1:1", pb_grpc.InferflowStub, connections=0)


# ---- the servicer and the gateway in front of the real engine (no model files needed) --------

EXPRESSION_ONLY = {
    **SPEC["models"][0],
    "models": [],
    "expressions": {"score": "product.price * (1 + affinity.clicks)", "half": "score / 2"},
    "response": {"outputs": ["score", "half"], "features": ["product.category_id"]},
}


@dataclass
class Served:
    grpc_target: str
    http_base: str


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    data_dir = tmp_path_factory.mktemp("inferflow")
    parsed = DefinitionsFile.model_validate({**SPEC, "models": [EXPRESSION_ONLY]})
    registry = plan(Registry(), parsed.entities, parsed.feature_groups, parsed.models).registry
    open_files(data_dir).registry.save(registry, expected_revision=0)
    components = await build(load_settings(None, {"data_dir": str(data_dir)}), watch=False)
    features = components.service
    await features.persist(
        "product_stats",
        {"product_id": [1, 2, 3]},
        {
            "price": np.array([10, 20, 30], dtype=np.float32),
            "category_id": var_column([b"a", b"b", b"a"]),
        },
    )
    await features.persist(
        "affinity",
        {"user_id": [42], "category_id": ["a"]},
        {"clicks": np.array([1], dtype=np.float32)},
    )
    server = grpc.aio.server()
    pipeline = open_pipeline()
    endpoints = inferflow_grpc.endpoints(components.inferflow)
    add_service(server, pipeline, inferflow_grpc.SERVICE, endpoints)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = make_app(pipeline, features, components.inferflow, components.interactions)
    runner = web.AppRunner(app)
    await runner.setup()
    http_port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    yield Served(f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}")
    await runner.cleanup()
    await server.stop(None)
    await components.close()


async def test_infer_over_grpc_scores_in_candidate_order(served: Served) -> None:
    async with AsyncInferflowClient(served.grpc_target) as client:
        scores = await client.infer(
            "ranker",
            {"user_id": 42, "product_ids": [2, 3, 9, 1]},
            ["affinity.clicks"],
            explain=True,
            request_id="req-1",
        )
    assert (scores.model, scores.version, scores.count, scores.request_id) == (
        "ranker",
        1,
        4,
        "req-1",
    )
    # price x (1 + clicks): only category "a" has clicks for user 42; product 9 is absent.
    assert scores["score"].tolist() == [20, 60, 0, 20]
    assert scores["half"].tolist() == [10, 30, 0, 10]
    assert scores["product.category_id"].tolist() == ["b", "a", "", "a"]
    assert scores["affinity.clicks"].tolist() == [0, 1, 0, 1]
    assert scores.top(2).tolist() == [1, 0]
    assert scores.defaults["product.price"] == 1  # product 9
    assert scores.defaults["affinity.clicks"] == 2  # (42, "b") and (42, "")
    stages = [name for name, _ in scores.timings]
    assert stages[0] == "context" and stages[-1] == "encode"
    assert "fetch 2: affinity" in stages


@pytest.mark.parametrize(
    ("model", "context", "features", "status", "message"),
    [
        ("nope", {"user_id": 1}, [], grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
        ("ranker", {"user_id": "x", "product_ids": [1]}, [], grpc.StatusCode.INVALID_ARGUMENT,
         "context input 'user_id'"),
        ("ranker", {"user_id": 1}, [], grpc.StatusCode.INVALID_ARGUMENT, "'product_ids'"),
        ("ranker", {"user_id": 1, "product_ids": list(range(51))}, [],
         grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 50"),
        ("ranker", {"user_id": 1, "product_ids": [1]}, ["product.nope"],
         grpc.StatusCode.NOT_FOUND, "no feature 'nope'"),
    ],
)  # fmt: skip
async def test_bad_requests_get_their_status_and_a_message_naming_the_problem(
    served: Served,
    model: str,
    context: dict[str, Any],
    features: list[str],
    status: grpc.StatusCode,
    message: str,
) -> None:
    async with AsyncInferflowClient(served.grpc_target) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.infer(model, context, features)
    assert raised.value.code() == status
    assert message in (raised.value.details() or "")


async def test_infer_over_http(served: Served) -> None:
    body = {"model": "ranker", "context": {"user_id": [42], "product_ids": [3, 2]}}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{served.http_base}/v1/infer", json=body) as response:
            assert response.status == 200
            answer = await response.json()
        assert answer["outputs"] == {"score": [60.0, 20.0], "half": [30.0, 10.0]}
        assert answer["features"] == {"product.category_id": ["a", "b"]}
        assert "explain" not in answer
        for bad, status, code in [
            ({"model": "nope", "context": {}}, 404, "NOT_FOUND"),
            ({"model": "ranker", "context": {"user_id": 1}}, 400, "INVALID_ARGUMENT"),
            (
                {"model": "ranker", "context": {"user_id": 1, "product_ids": list(range(51))}},
                429,
                "RESOURCE_EXHAUSTED",
            ),
        ]:
            async with session.post(f"{served.http_base}/v1/infer", json=bad) as response:
                assert response.status == status
                assert (await response.json())["error"]["code"] == code
