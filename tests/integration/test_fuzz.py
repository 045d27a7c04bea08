"""Random and mutated messages to every method of every service of a real `inferstack serve`
(2 workers, the sample ranker): over gRPC as raw bytes (random bytes, truncated and
bit-flipped valid messages, well-formed messages full of absurd values) and over HTTP (bytes
that are not JSON, broken and absurd JSON, bodies whose Content-Encoding is or is not true,
slow and unfinished bodies, and the console's query strings with absurd values). The server
must answer each with a status that
names the problem: never INTERNAL or UNKNOWN (HTTP 500), never a traceback in its log, no
worker restarted, and valid calls answered afterwards. Bodies and messages over the size
limits get RESOURCE_EXHAUSTED / 413.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from inferstack.client import FeatureStoreClient, Query
from inferstack.client.featurestore import build_batch, build_persist, build_request
from inferstack.client.inferflow import InferflowClient
from inferstack.client.interactions import ingest_request
from inferstack.core.events import EventBatch
from inferstack.proto.featurestore.v1 import featurestore_pb2 as fs_pb
from inferstack.proto.inferflow.v1 import inferflow_pb2 as if_pb
from inferstack.proto.interactions.v1 import interactions_pb2 as ia_pb
from inferstack.sampledata.generate import GROUP_FILES
from inferstack.server.logs import ERROR_LINES_PER_WINDOW, WINDOW
from inferstack.wire.columns import keys_to_proto
from tests.ranker import ranker_sample
from tests.servers import RunningServer, inferstack, start_server

SEED = 10
GRPC_PER_METHOD = 330  # x 8 methods
HTTP_PER_ROUTE = 60  # x 6 routes
MAX_MESSAGE = 1 << 20  # the server's gRPC receive limit in this test (the smallest allowed)
MAX_BODY = 64 << 10  # its HTTP body limit
BODY_TIMEOUT = 1.0  # seconds a body may take to arrive, in this test
LIMITS = {
    "INFERSTACK_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
    "INFERSTACK_MAX_HTTP_BODY_BYTES": str(MAX_BODY),
    "INFERSTACK_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
}
NOT_ALLOWED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Names the sample uses, so random messages often get past the first check and reach deeper.
WORDS = [
    "user", "product", "user_category", "user_id", "product_id", "category_id",
    "user_profile", "product_stats", "user_category_affinity", "user_profile.age",
    "product_stats.*", "ranker", "click", "order", "add_to_cart", "source", "quantity",
    "price", "int64", "float32", "string", "bytes", "float32[16]", "bool", "int32",
    "", "*", ".", "x" * 300, "é\u0000\ud7ff", "user_profile.embedding",
]  # fmt: skip
INTS = [0, 1, -1, 2, 7, 42, 2**31 - 1, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63)]
UINTS = [0, 1, 3, 2**32 - 1, 2**63, 2**64 - 1]
TOKEN = b"fuzz-secret-token-31337"


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    sample = ranker_sample(tmp_path_factory.mktemp("fuzz-sample"), scale=0.01)
    data = tmp_path_factory.mktemp("fuzz-data")
    inferstack("apply", "-f", str(sample), data_dir=data)
    for group, file in GROUP_FILES.items():
        inferstack("ingest", "-g", group, str(sample / file), data_dir=data)
    running = start_server(data, workers=2, env=LIMITS)
    yield running
    assert running.stop() == 0


# -- valid messages, the seeds of mutation -------------------------------------------------


def seeds() -> dict[str, list[Message]]:
    """Valid requests per method path."""
    user = Query("user", {"user_id": [1, 2, 3]}, ["user_profile"])
    pair = Query(
        "user_category",
        {"user_id": [1, 2], "category_id": ["c1", "c2"]},
        ["user_category_affinity"],
    )
    persist = build_persist(
        "user_category_affinity",
        {"user_id": [900_001], "category_id": ["fuzz"]},
        {
            name: np.array([1.5], dtype=np.float32)
            for name in (
                "clicks_7d", "clicks_30d", "orders_30d", "cart_adds_30d", "views_30d", "spend_90d"
            )
        },
    )  # fmt: skip
    infer = if_pb.InferRequest(
        model="ranker",
        context=keys_to_proto({"user_id": [3], "product_ids": [1, 2, 3]}),
        return_features=["product.rating"],
        explain=True,
    )
    click = EventBatch(
        type="click",
        event_ids=["e1", "e2"],
        users=[900_002, 900_002],
        items=[5, 6],
        timestamps=[now_ms() - 2000, now_ms() - 1000],
        attributes={"source": ["app", "web"], "category_id": ["c1", "c2"]},
    )
    user_key = fs_pb.KeyColumn(name="user_id", int64_values=[900_002])
    return {
        "/inferstack.featurestore.v1.FeatureStore/Retrieve": [build_request(user)],
        "/inferstack.featurestore.v1.FeatureStore/RetrieveBatch": [build_batch([user, pair])],
        "/inferstack.featurestore.v1.FeatureStore/Persist": [persist],
        "/inferstack.inferflow.v1.Inferflow/Infer": [infer],
        "/inferstack.interactions.v1.Interactions/Ingest": [ingest_request([click])],
        "/inferstack.interactions.v1.Interactions/Get": [
            ia_pb.GetRequest(user=user_key, types=["click"], limit=5)
        ],
        "/inferstack.interactions.v1.Interactions/Hydrate": [
            ia_pb.HydrateRequest(user=user_key, types=["click", "order"])
        ],
        "/inferstack.interactions.v1.Interactions/Sweep": [ia_pb.SweepRequest(limit=3)],
    }


# -- mutation --------------------------------------------------------------------------------


def random_scalar(field: FieldDescriptor, rng: np.random.Generator) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return WORDS[rng.integers(len(WORDS))]
    if kind == FieldDescriptor.TYPE_BYTES:
        size = int(rng.choice([0, 1, 3, 4, 7, 8, 12, 64, 4096]))
        return rng.bytes(size)
    if kind == FieldDescriptor.TYPE_BOOL:
        return bool(rng.integers(2))
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_UINT32):
        limit = 2**64 - 1 if kind == FieldDescriptor.TYPE_UINT64 else 2**32 - 1
        return min(int(UINTS[rng.integers(len(UINTS))]), limit)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
        value = int(INTS[rng.integers(len(INTS))])
        if kind == FieldDescriptor.TYPE_INT32:
            value = max(-(2**31), min(2**31 - 1, value))
        if rng.random() < 0.3:  # a plausible timestamp, in the past or far in the future
            value = now_ms() + int(rng.integers(-(10**9), 10**9))
        return value
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(rng.choice([0.0, -1.0, 1e300, float("nan"), float("inf")]))
    raise AssertionError(f"no generator for field type {kind}")


def random_message(cls: type[Message], rng: np.random.Generator, depth: int = 0) -> Message:
    """A well-formed message of `cls` whose fields hold random, often absurd, values."""
    message = cls()
    for field in cls.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        repeated = field.is_repeated
        count = int(rng.choice([0, 1, 2, 3, 5, 12_000 if depth == 1 else 4])) if repeated else 1
        target = getattr(message, field.name)
        if field.message_type is not None:
            if depth >= 3:
                continue
            sub = type(target.add() if repeated else target)
            if repeated:
                del target[:]
                for _ in range(min(count, 4)):
                    target.add().CopyFrom(random_message(sub, rng, depth + 1))
            else:
                target.CopyFrom(random_message(sub, rng, depth + 1))
        elif repeated:
            target.extend(random_scalar(field, rng) for _ in range(count))
        else:
            setattr(message, field.name, random_scalar(field, rng))
    return message


def mutate_values(message: Message, rng: np.random.Generator) -> None:
    """Keep the names (so the request reaches the code that reads values), replace values:
    numbers, bytes and flags; lists get other lengths, so columns stop matching each other."""
    for field, value in message.ListFields():
        if field.message_type is not None:
            for sub in value if field.is_repeated else [value]:
                mutate_values(sub, rng)
        elif field.type == FieldDescriptor.TYPE_STRING and rng.random() < 0.8:
            continue
        elif field.is_repeated:
            count = int(rng.choice([0, 1, 2, len(value) + 1, 12_000 if rng.random() < 0.1 else 3]))
            del value[:]
            value.extend(random_scalar(field, rng) for _ in range(count))
        else:
            setattr(message, field.name, random_scalar(field, rng))


def mutate(seed: Message, rng: np.random.Generator) -> bytes:
    raw = seed.SerializeToString()
    choice = rng.integers(8)
    if choice >= 6:  # the valid message with absurd values in its fields
        changed = type(seed)()
        changed.CopyFrom(seed)
        mutate_values(changed, rng)
        return changed.SerializeToString()
    if choice == 0:  # random bytes
        return rng.bytes(int(rng.integers(0, 200)))
    if choice == 1:  # truncated
        return raw[: int(rng.integers(0, max(1, len(raw))))]
    if choice == 2:  # bits flipped
        data = bytearray(raw or b"\x00")
        for _ in range(int(rng.integers(1, 9))):
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if choice == 3:  # random bytes spliced in
        at = int(rng.integers(0, len(raw) + 1))
        return raw[:at] + rng.bytes(int(rng.integers(1, 16))) + raw[at:]
    if choice == 4:  # a well-formed message of absurd values
        return random_message(type(seed), rng).SerializeToString()
    merged = type(seed)()  # the valid message with some fields overwritten or extended
    merged.CopyFrom(seed)
    merged.MergeFrom(random_message(type(seed), rng, depth=1))
    return merged.SerializeToString()


def parses(cls: type[Message], raw: bytes) -> bool:
    try:
        cls.FromString(raw)
    except DecodeError:
        return False
    return True


# -- the tests -------------------------------------------------------------------------------


async def test_fuzzed_grpc_and_http_never_break_the_server(server: RunningServer) -> None:
    rng = np.random.default_rng(SEED)
    started = time.monotonic()
    grpc_outcomes = await fuzz_grpc(server, rng)
    http_outcomes = await fuzz_http(server, rng)
    http_outcomes += await fuzz_encodings_and_slow_bodies(server, rng)
    http_outcomes += await fuzz_console(server, rng)
    await send_garbage(server, rng)
    elapsed = time.monotonic() - started

    bad = [o for o in grpc_outcomes if o[1] in NOT_ALLOWED]
    assert not bad, f"{len(bad)} calls answered INTERNAL/UNKNOWN, e.g. {bad[:5]}"
    malformed = [o for o in grpc_outcomes if not o[3]]
    assert malformed, "the fuzzing sent no malformed message"
    for method, code, details, _ in malformed:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert details.startswith("malformed request: ") and "\n" not in details
    codes = Counter(o[1] for o in grpc_outcomes)
    assert codes[grpc.StatusCode.OK] > 0 and codes[grpc.StatusCode.INVALID_ARGUMENT] > 0
    server_errors = [o for o in http_outcomes if o[1] >= 500 and o[1] not in (503, 504)]
    assert not server_errors, f"HTTP 5xx: {server_errors[:5]}"

    log = server.log.read_text()
    assert "Traceback" not in log
    assert TOKEN.decode() not in log
    assert "restarting" not in log and "exited" not in log
    # Failed requests are logged at most ERROR_LINES_PER_WINDOW per WINDOW per worker (plus
    # one line per window saying how many were left out), far fewer than were sent.
    lines = [line for line in log.splitlines() if " inferstack.requests: " in line]
    windows = int(elapsed // WINDOW) + 2
    assert 0 < len(lines) <= 2 * ERROR_LINES_PER_WINDOW * windows + 2 * windows
    assert not any(" OK [" in line or " 200 [" in line for line in lines)  # access log off
    assert_serves_valid_calls(server)


async def fuzz_grpc(
    server: RunningServer, rng: np.random.Generator
) -> list[tuple[str, grpc.StatusCode, str, bool]]:
    """(method, status, details, whether the bytes parse) of every call sent."""
    work: list[tuple[str, bytes, bool]] = []
    for method, messages in seeds().items():
        cls = type(messages[0])
        for index in range(GRPC_PER_METHOD):
            raw = mutate(messages[index % len(messages)], rng)
            work.append((method, raw, parses(cls, raw)))
    order = rng.permutation(len(work))
    # Separate connections (a local subchannel pool each), so calls reach both workers.
    channels = [
        grpc.aio.insecure_channel(
            server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(4)
    ]
    limit = asyncio.Semaphore(16)

    async def call(number: int) -> tuple[str, grpc.StatusCode, str, bool]:
        method, raw, well_formed = work[number]
        channel = channels[number % len(channels)]
        async with limit:
            try:
                await channel.unary_unary(method)(raw, timeout=20)
            except grpc.aio.AioRpcError as exc:
                return method, exc.code(), exc.details() or "", well_formed
        return method, grpc.StatusCode.OK, "", well_formed

    try:
        return list(await asyncio.gather(*(call(int(n)) for n in order)))
    finally:
        for channel in channels:
            await channel.close()


def random_json(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = rng.integers(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(2))
    if kind == 2:
        return int(rng.choice(INTS)) * int(rng.choice([1, 1, 10**20]))
    if kind == 3:
        return float(rng.choice([0.5, -1.0, 1e308, 1e-308]))
    if kind == 4:
        return WORDS[rng.integers(len(WORDS))]
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    if kind == 6:
        return [int(rng.choice(INTS)) for _ in range(int(rng.choice([1, 3, 12_000])))]
    return {
        WORDS[rng.integers(len(WORDS))]: random_json(rng, depth + 1)
        for _ in range(int(rng.integers(0, 4)))
    }


HTTP_SEEDS: dict[str, dict[str, Any]] = {
    "/v1/retrieve": {"entity": "user", "keys": {"user_id": [1, 2]}, "features": ["user_profile"]},
    "/v1/infer": {"model": "ranker", "context": {"user_id": 3, "product_ids": [1, 2]}},
    "/v1/interactions/ingest": {
        "batches": [
            {
                "type": "click",
                "event_ids": ["h1"],
                "user_id": [900_003],
                "product_id": [7],
                "timestamps": [1_700_000_000_000],
                "attributes": {"source": ["app"]},
            }
        ]
    },
    "/v1/interactions/get": {"user": 900_003, "types": ["click"], "limit": 3},
    "/v1/interactions/hydrate": {"user": 900_003, "types": ["click"]},
    "/v1/interactions/sweep": {"limit": 2},
}


def http_bodies(seed: dict[str, Any], rng: np.random.Generator) -> Iterator[bytes]:
    text = json.dumps(seed)
    yield b"[" * 20_000 + b"]" * 20_000  # nested too deeply for the parser
    yield b"1" * 5000  # more digits than Python converts
    yield b'{"a": NaN, "b": -Infinity}'
    yield '{"é": "\\ud800"}'.encode()
    for _ in range(HTTP_PER_ROUTE):
        choice = rng.integers(4)
        if choice == 0:
            yield rng.bytes(int(rng.integers(0, 100)))
        elif choice == 1:
            yield text[: int(rng.integers(0, len(text)))].encode()
        elif choice == 2:
            body = dict(seed)
            for _ in range(int(rng.integers(1, 3))):
                key = list(body)[rng.integers(len(body))] if rng.random() < 0.7 else "extra"
                body[key] = random_json(rng)
            yield json.dumps(body).encode()
        else:
            yield json.dumps(random_json(rng)).encode()


async def fuzz_http(server: RunningServer, rng: np.random.Generator) -> list[tuple[str, int, str]]:
    """(route, status, body) of every request sent."""
    outcomes: list[tuple[str, int, str]] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for route, seed in HTTP_SEEDS.items():
            for body in http_bodies(seed, rng):
                async with session.post(server.http_base + route, data=body) as response:
                    text = await response.text()
                    outcomes.append((route, response.status, text[:200]))
                    if response.status >= 400:
                        error = json.loads(text)["error"]
                        assert error["code"] and "\n" not in error["message"], (route, text)
        bogus = {"Content-Type": "application/json; charset=no-such-charset"}
        body = json.dumps(HTTP_SEEDS["/v1/retrieve"])
        async with session.post(server.http_base + "/v1/retrieve", data=body, headers=bogus) as r:
            outcomes.append(("/v1/retrieve", r.status, await r.text()))
            assert r.status == 400 and "not JSON" in (await r.json())["error"]["message"]
    return outcomes


ENCODINGS = ["gzip", "deflate", "x-gzip", "identity", "gzip, deflate", "bogus"]


def encoded(body: bytes, encoding: str, rng: np.random.Generator) -> bytes:
    """The body in `encoding` (as its header says), or not: as it is, or cut short."""
    choice = rng.integers(3)
    if choice == 0 and encoding in ("gzip", "x-gzip"):
        return gzip.compress(body)
    if choice == 0 and encoding == "deflate":
        return zlib.compress(body)
    if choice == 1:
        return gzip.compress(body)[: int(rng.integers(1, 20))]  # a broken stream
    return body


async def fuzz_encodings_and_slow_bodies(
    server: RunningServer, rng: np.random.Generator
) -> list[tuple[str, int, str]]:
    """Bodies whose Content-Encoding may or may not be true, then slow and unfinished ones:
    every one answered, none with a 5xx (a slow body: 408 once the body timeout passes)."""
    outcomes: list[tuple[str, int, str]] = []
    # A connection each: after a body it cannot decode the server closes the connection, and
    # a pooled client would send the next request down it.
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for route, seed in HTTP_SEEDS.items():
            for _ in range(12):
                encoding = ENCODINGS[int(rng.integers(len(ENCODINGS)))]
                body = encoded(json.dumps(seed).encode(), encoding, rng)
                headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
                async with session.post(
                    server.http_base + route, data=body, headers=headers
                ) as response:
                    outcomes.append((route, response.status, (await response.text())[:200]))
    port = int(server.http_base.rsplit(":", 1)[1])
    slow = []
    for route in HTTP_SEEDS:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{{".encode())
        await writer.drain()
        slow.append((route, reader, writer))
    for route, reader, writer in slow:
        answer = await asyncio.wait_for(reader.read(4096), timeout=BODY_TIMEOUT * 10)
        writer.close()
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
        assert status == 408, (route, answer[:200])
        outcomes.append((route, status, ""))
    return outcomes


CONSOLE_VALUES = [
    "", "-1", "0", "1", "5", "1000", "1001", "9223372036854775808", "4_2", " +42", "abc",
    "1e9", "٤٢", "%00", "x" * 500, "1,2,3", "-9223372036854775809",
]  # fmt: skip


async def fuzz_console(
    server: RunningServer, rng: np.random.Generator
) -> list[tuple[str, int, str]]:
    """The console's query strings with absurd values: never a 5xx."""

    def value() -> str:
        return CONSOLE_VALUES[int(rng.integers(len(CONSOLE_VALUES)))]

    outcomes: list[tuple[str, int, str]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for _ in range(40):
            queries = [
                f"/ui/try?model=ranker&user_id={value()}&random={value()}&highest={value()}",
                f"/ui/try?model=ranker&user_id={value()}&product_ids={value()}&run=1",
                f"/ui/lookup?entity=user&user_id={value()}",
                f"/ui/models/{value()}",
                f"/ui/catalog?q={value()}",
            ]
            for query in queries:
                async with session.get(server.http_base + query) as response:
                    outcomes.append((query, response.status, (await response.text())[:200]))
    return outcomes


RAW_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/retrieve HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/retrieve HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",  # then hangs up
    b"POST /v1/retrieve HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /\x00\xff HTTP/1.1\r\nHost: \x01\r\n\r\n",
    b"POST /v1/infer HTTP/1.1\r\nX-Request-Id: " + b"a" * 70_000 + b"\r\n\r\n",
    # Headers aiohttp refuses must not carry a token into the log (it quotes what it refuses).
    b"POST /v1/infer HTTP/1.1\r\nAuthorization: Bearer " + TOKEN * 500 + b"\r\n\r\n",
    b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\x01\r\n\r\n",
]


async def send_garbage(server: RunningServer, rng: np.random.Generator) -> None:
    """Bytes that are not HTTP (or not HTTP/2) to both ports, each on its own connection."""
    targets = [
        (
            server.grpc_target.rsplit(":", 1)[1],
            [rng.bytes(64), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.bytes(64)],
        ),
        (server.http_base.rsplit(":", 1)[1], [*RAW_HTTP, rng.bytes(300)]),
    ]
    for port, payloads in targets:
        for payload in payloads:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
            writer.write(payload)
            await writer.drain()
            await asyncio.wait_for(reader.read(4096), timeout=5)  # an answer or a hang-up
            writer.close()


def assert_serves_valid_calls(server: RunningServer) -> None:
    with FeatureStoreClient(server.grpc_target, timeout=10) as features:
        frame = features.retrieve("user", {"user_id": [1, 2]}, ["user_profile"])
        assert frame.count == 2 and frame.found("user_profile").all()
    with InferflowClient(server.grpc_target, timeout=10) as inferflow:
        assert inferflow.infer("ranker", {"user_id": 3, "product_ids": [1, 2, 3]}).count == 3


async def test_a_malformed_message_is_invalid_argument_with_the_request_id(
    server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary("/inferstack.featurestore.v1.FeatureStore/Retrieve")(
            b"\xff\xff\xff\xff", metadata=(("x-request-id", "fuzz-req-1"),), timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == (
            "malformed request: 4 bytes that are not a valid "
            "inferstack.featurestore.v1.RetrieveRequest message"
        )
        assert ("x-request-id", "fuzz-req-1") in tuple(await call.trailing_metadata() or ())
        # A valid call gets a request id made up by the server when it sent none.
        ok = channel.unary_unary("/inferstack.interactions.v1.Interactions/Sweep")(
            ia_pb.SweepRequest(limit=1).SerializeToString(), timeout=10
        )
        await ok
        ids = dict(tuple(await ok.trailing_metadata() or ()))
        assert re.fullmatch(r"[0-9a-f]{16}", str(ids["x-request-id"]))


async def test_messages_and_bodies_over_the_limits(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        huge = fs_pb.RetrieveRequest(entity="user", features=["x" * (MAX_MESSAGE + 10)])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/inferstack.featurestore.v1.FeatureStore/Retrieve")(
                huge.SerializeToString(), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    body = json.dumps({"entity": "user", "keys": {"user_id": list(range(20_000))}}).encode()
    assert len(body) > MAX_BODY
    async with aiohttp.ClientSession() as session:
        for route in ("/v1/retrieve", "/v1/infer", "/v1/interactions/ingest"):
            async with session.post(
                server.http_base + route, data=body, headers={"X-Request-Id": "big-1"}
            ) as response:
                assert response.status == 413
                assert response.headers["X-Request-Id"] == "big-1"
                error = (await response.json())["error"]
                assert error["code"] == "RESOURCE_EXHAUSTED"
                assert f"larger than {MAX_BODY} bytes" in error["message"]
        async with session.post(server.http_base + "/v1/retrieve", data=b"{nope") as response:
            assert response.status == 400
            message = (await response.json())["error"]["message"]
            assert message.startswith("request body is not JSON: ") and "\n" not in message
            assert re.fullmatch(r"[0-9a-f]{16}", response.headers["X-Request-Id"])
