"""One call path for both transports: over a real gRPC server and a real HTTP server, a call
is authenticated, then decoded, then authorized, then admitted, then run, in that order. With
the only admission slot taken, a call without a valid token is refused UNAUTHENTICATED (even
when its message or body does not decode) and one outside its grants PERMISSION_DENIED (not
RESOURCE_EXHAUSTED: admission comes after both), and only a permitted call meets the full
gate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from inferstack.core import limits
from inferstack.core.callers import Callers, Grant, Need, new_caller, reads
from inferstack.featurestore.service import RetrieveResult
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.proto.featurestore.v1 import featurestore_pb2_grpc as pb_grpc
from inferstack.server.admission import Gate
from inferstack.server.auth import Authorizer
from inferstack.server.grpc import featurestore as featurestore_grpc
from inferstack.server.grpc.registration import add_service
from inferstack.server.http import featurestore as featurestore_http
from inferstack.server.http import middleware
from inferstack.server.http.routes import add_json_routes
from inferstack.server.logs import RequestLog
from inferstack.server.pipeline import Pipeline

BODY_TIMEOUT = 1.0  # seconds a body may take to arrive here


class OneGroupService:
    """Stands in for the FeatureService: every Retrieve reads `user_profile` and finds
    nothing (what is under test is the path around it)."""

    def __init__(self) -> None:
        self.ran = 0

    def retrieve_needs(self, entity: str, features: Sequence[str]) -> list[Need]:
        return [reads("feature_group", ["user_profile"])]

    async def retrieve(self, entity: str, keys: Any, features: Sequence[str] = ()) -> Any:
        self.ran += 1
        return RetrieveResult(entity, 0, [], {"user_profile": np.zeros(0, np.uint8)})


@dataclass
class Served:
    grpc_target: str
    http_base: str
    gate: Gate
    service: OneGroupService
    allowed: str  # a token that may read user_profile
    denied: str  # a token that may read only a model


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    reader, allowed = new_caller("reader", [Grant.parse("read:feature_group/*")], 0.0)
    ranker, denied = new_caller("ranker", [Grant.parse("read:model/ranker")], 0.0)
    authorizer = Authorizer(Callers(1, {"reader": reader, "ranker": ranker}))
    gate = Gate(max_in_flight=1, max_queue=0)
    pipeline = Pipeline(authorizer, gate, RequestLog())
    service = OneGroupService()
    server = grpc.aio.server()
    endpoints = featurestore_grpc.endpoints(service)  # type: ignore[arg-type]  # stands in
    add_service(server, pipeline, featurestore_grpc.SERVICE, endpoints)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = web.Application()
    routes = featurestore_http.routes(service)  # type: ignore[arg-type]  # stands in
    add_json_routes(app, pipeline, routes, body_timeout=BODY_TIMEOUT)
    middleware.install(app, pipeline.request_log)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = runner.addresses[0][1]
    try:
        yield Served(
            f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", gate, service, allowed, denied
        )
    finally:
        await runner.cleanup()
        await server.stop(None)


async def _grpc_status(served: Served, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(served.grpc_target) as channel:
        stub = pb_grpc.FeatureStoreStub(channel)
        try:
            await stub.Retrieve(pb.RetrieveRequest(entity="user"), metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def _http_status(served: Served, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"entity": "user", "keys": {"user_id": []}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.http_base}/v1/retrieve", json=body, headers=headers) as response,
    ):
        assert response.headers["Server"] == "inferstack"  # no versions to probe
        return response.status


async def _grpc_raw_status(served: Served, payload: bytes, token: str | None) -> grpc.StatusCode:
    """A Retrieve whose message is `payload` as it is (it need not parse)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(served.grpc_target) as channel:
        retrieve = channel.unary_unary(
            "/inferstack.featurestore.v1.FeatureStore/Retrieve",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        try:
            await retrieve(payload, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def _http_raw_status(served: Served, body: bytes, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.http_base}/v1/retrieve", data=body, headers=headers) as response,
    ):
        return response.status


async def test_a_caller_without_a_token_learns_nothing_of_how_its_request_reads(
    served: Served,
) -> None:
    garbage = b"\xff\xff\xff\xff"  # not a RetrieveRequest, not JSON
    assert await _grpc_raw_status(served, garbage, None) == grpc.StatusCode.UNAUTHENTICATED
    assert await _http_raw_status(served, garbage, None) == 401
    assert await _grpc_raw_status(served, garbage, served.denied) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await _http_raw_status(served, garbage, served.denied) == 400


async def test_both_transports_authenticate_then_authorize_then_admit(served: Served) -> None:
    assert served.gate.try_enter()  # the only slot is taken; the queue holds nobody
    try:
        assert await _grpc_status(served, None) == grpc.StatusCode.UNAUTHENTICATED
        assert await _http_status(served, None) == 401
        assert await _grpc_status(served, "isk_0123456789abcdef_" + "x" * 30) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert await _grpc_status(served, served.denied) == grpc.StatusCode.PERMISSION_DENIED
        assert await _http_status(served, served.denied) == 403
        assert await _grpc_status(served, served.allowed) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _http_status(served, served.allowed) == 429
        assert served.service.ran == 0
    finally:
        served.gate.leave("test", 0.0)
    assert await _grpc_status(served, served.allowed) == grpc.StatusCode.OK
    assert await _http_status(served, served.allowed) == 200
    assert served.service.ran == 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_not_in_its_content_encoding_is_a_clear_400(
    served: Served, encoding: str
) -> None:
    # It used to be a 500 with a traceback: the decompression error escaped the route.
    body = b'{"entity": "user", "keys": {"user_id": [1]}}'
    headers = {
        "Authorization": f"Bearer {served.allowed}",
        "Content-Type": "application/json",
        "Content-Encoding": encoding,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.http_base}/v1/retrieve", data=body, headers=headers) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert f"not {encoding}-encoded" in error["message"]
    assert served.service.ran == 0


async def test_slow_bodies_hold_no_admission_slot_and_time_out(served: Served) -> None:
    """40 connections that send a header and part of a body (with a valid token) used to
    take every admission slot until they closed: now the body is read before admission, so
    calls of other callers go on, and each slow body is refused 408 once the timeout passes."""
    port = int(served.http_base.rsplit(":", 1)[1])
    head = (
        "POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {served.allowed}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    slow = []
    for _ in range(40):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b'{"entity": "user", ')
        await writer.drain()
        slow.append((reader, writer))
    try:
        await asyncio.sleep(0.2)
        assert served.gate.running == 0  # no slow body took a slot
        assert await _http_status(served, served.allowed) == 200
        assert await _grpc_status(served, served.allowed) == grpc.StatusCode.OK
        answers = await asyncio.gather(
            *(asyncio.wait_for(reader.read(200), BODY_TIMEOUT * 5) for reader, _ in slow)
        )
    finally:
        for _, writer in slow:
            writer.close()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[0]
    refused = REGISTRY.get_sample_value(
        "inferstack_http_slow_bodies_total", {"method": "http_retrieve"}
    )
    assert refused is not None and refused >= 40


async def test_a_request_over_a_limit_is_refused_naming_it_on_both_transports(
    served: Served,
) -> None:
    metadata = (("authorization", f"Bearer {served.allowed}"),)
    batch = pb.RetrieveBatchRequest(
        requests=[pb.RetrieveRequest(entity="user")] * (limits.MAX_QUERIES_PER_BATCH + 1)
    )
    async with grpc.aio.insecure_channel(served.grpc_target) as channel:
        stub = pb_grpc.FeatureStoreStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RetrieveBatch(batch, metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "101 queries in one request" in (refused.value.details() or "")
        many_keys = pb.RetrieveRequest(
            entity="user", keys=[pb.KeyColumn(name=f"k{i}") for i in range(300_000)]
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Retrieve(many_keys, metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "300000 key columns" in (refused.value.details() or "")
    body = {"entity": "user", "keys": {"user_id": [1]}, "features": ["a"] * 1001}
    headers = {"Authorization": f"Bearer {served.allowed}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.http_base}/v1/retrieve", json=body, headers=headers) as response,
    ):
        assert response.status == 429
        assert "1001 feature selectors" in (await response.json())["error"]["message"]
    assert served.service.ran == 0
