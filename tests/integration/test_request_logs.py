"""`inferstack serve --log-format json --access-log`: every line of the server's output is one
JSON object; each request gets a line with method, status, duration, request id and caller;
the request id is the caller's when given (gRPC metadata, HTTP header) and returned, and no
token a caller sends ever reaches the log."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from tests.conftest import ROOT
from tests.servers import RunningServer, inferstack, start_server

DEFINITIONS = ROOT / "src" / "inferstack" / "sampledata" / "ecommerce.yaml"
TOKEN = "tok-9f8e7d6c5b4a-never-logged"
RETRIEVE = "/inferstack.featurestore.v1.FeatureStore/Retrieve"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("logs-data")
    inferstack("apply", "-f", str(DEFINITIONS), data_dir=data)
    running = start_server(data, "--log-format", "json", "--access-log", workers=1)
    yield running
    assert running.stop() == 0


def entries(log: Path) -> list[dict[str, Any]]:
    """Every line parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_json_lines_with_request_ids_and_no_tokens(server: RunningServer) -> None:
    request = pb.RetrieveRequest(
        entity="user",
        keys=[pb.KeyColumn(name="user_id", int64_values=[1, 2])],
        features=["user_profile"],
    )
    secret = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(server.grpc_target) as channel:
        retrieve = channel.unary_unary(RETRIEVE)
        _, call = retrieve.with_call(
            request.SerializeToString(),
            metadata=(("x-request-id", "logs-grpc-1"), *secret),
            timeout=10,
        )
        assert ("x-request-id", "logs-grpc-1") in tuple(call.trailing_metadata() or ())
        with pytest.raises(grpc.RpcError) as refused:
            retrieve(b"\x0a\xff", metadata=(("x-request-id", "logs-grpc-2"), *secret), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    body = json.dumps({"entity": "user", "keys": {"user_id": [1]}, "features": ["user_profile"]})
    http = urllib.request.Request(
        f"{server.http_base}/v1/retrieve",
        body.encode(),
        headers={"X-Request-Id": "logs-http-1", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(http, timeout=10) as response:
        assert response.headers["X-Request-Id"] == "logs-http-1"
    missing = urllib.request.Request(
        f"{server.http_base}/no/such/path", headers={"X-Request-Id": "logs-http-2"}
    )
    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(missing, timeout=10)
    assert not_found.value.code == 404
    assert not_found.value.headers["X-Request-Id"] == "logs-http-2"
    assert server.stop() == 0  # every line written and flushed

    lines = entries(server.log)
    assert TOKEN not in server.log.read_text()
    assert all({"time", "level", "worker", "logger", "message"} <= set(e) for e in lines)
    assert any("inferstack serving gRPC" in e["message"] for e in lines)
    by_id = {e["request_id"]: e for e in lines if "request_id" in e}
    ok = by_id["logs-grpc-1"]
    assert (ok["method"], ok["status"], ok["level"]) == ("FeatureStore/Retrieve", "OK", "INFO")
    assert ok["duration_ms"] >= 0 and "caller" in ok and isinstance(ok["worker"], int)
    assert ok["logger"] == "inferstack.requests"
    malformed = by_id["logs-grpc-2"]
    assert malformed["status"] == "INVALID_ARGUMENT"
    assert "malformed request" in malformed["message"]
    http_line = by_id["logs-http-1"]
    assert (http_line["method"], http_line["status"]) == ("POST /v1/retrieve", "200")
    assert (by_id["logs-http-2"]["method"], by_id["logs-http-2"]["status"]) == (
        "GET /no/such/path",
        "404",
    )
