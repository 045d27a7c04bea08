"""The interaction store's surfaces without a server: wire round trips (client -> servicer
conversions -> the engine's checks), the HTTP gateway's parsing and JSON, the client's
decoding to numpy, event files and the CLI's argument parsing."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from inferstack.cli import interactions as cli
from inferstack.client.interactions import decode_histories, ingest_request
from inferstack.configstore.files import open_files
from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import InvalidArgumentError, NotFoundError
from inferstack.core.events import EventBatch, History
from inferstack.core.registry import Registry, plan
from inferstack.core.rowformat import VarColumn, var_column
from inferstack.interactions.eventfiles import BadEventError, EventFile, to_batch
from inferstack.interactions.events import InteractionCatalog, decode_rows, encode_batch
from inferstack.interactions.ingest import rejection
from inferstack.interactions.service import SweepResult
from inferstack.proto.interactions.v1 import interactions_pb2 as pb
from inferstack.server.http import interactions as http_gateway
from inferstack.server.http.routes import add_json_routes
from inferstack.server.supervisor import free_port
from inferstack.wire.interactions import (
    batches_from_proto,
    get_from_proto,
    get_to_proto,
    histories_to_proto,
    hydrate_from_proto,
    hydrate_to_proto,
    since_ms,
    sweep_limit,
)
from tests.helpers import open_pipeline

TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: price, type: float32}
      - {name: quantity, type: int16, default: 1}
      - {name: source, type: string, default: web}
      - {name: promoted, type: bool}
  - name: search
    user: {name: visitor, type: string}
    item: {name: query, type: string}
"""
NOW = 1_800_000_000_000
MAY_1_2024 = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def make_registry() -> Registry:
    parsed = DefinitionsFile.model_validate(yaml.safe_load(TYPES))
    return plan(Registry(), [], [], [], parsed.interaction_types).registry


@pytest.fixture(scope="module")
def catalog() -> InteractionCatalog:
    return InteractionCatalog(make_registry())


def clicks(**changes: Any) -> EventBatch:
    fields: dict[str, Any] = {
        "type": "click",
        "event_ids": ["e1", "e2", "e3"],
        "users": [42, 42, 7],
        "items": [1334, 7732, 18],
        "timestamps": [NOW - 3000, NOW - 2000, NOW - 1000],
        "attributes": {
            "price": [1.5, 2.25, 9.0],
            "quantity": [1, 2, 300],
            "source": ["a", "", "ç"],
        },
    }
    fields.update(changes)
    return EventBatch(**fields)


def array(column: Any) -> npt.NDArray[Any]:
    assert isinstance(column, np.ndarray), type(column)
    return column


def texts(column: Any) -> list[bytes]:
    assert isinstance(column, VarColumn), type(column)
    return column.to_list()


def over_the_wire(batches: Sequence[EventBatch], catalog: InteractionCatalog) -> list[EventBatch]:
    """What the servicer hands the engine for what the client sends."""
    sent = pb.IngestRequest.FromString(ingest_request(batches).SerializeToString())
    return batches_from_proto(sent.batches, catalog)


def stored_events(catalog: InteractionCatalog, batch: EventBatch) -> History:
    encoded = encode_batch(catalog, batch, "batch 0", NOW)
    return decode_rows(catalog, batch.type, encoded.rows)


# ---- Ingest over the wire ---------------------------------------------------------------------


def test_client_batches_reach_the_engine_as_the_same_events(catalog: InteractionCatalog) -> None:
    (received,) = over_the_wire([clicks()], catalog)
    assert received.type == "click" and list(received.event_ids) == ["e1", "e2", "e3"]
    assert list(received.timestamps) == [NOW - 3000, NOW - 2000, NOW - 1000]
    encoded = encode_batch(catalog, received, "batch 0", NOW)
    assert encoded.users == catalog.encode_users("click", [42, 42, 7])
    history = decode_rows(catalog, "click", encoded.rows)
    columns = history.columns
    assert array(columns["product_id"]).tolist() == [1334, 7732, 18]
    # Python floats and ints travel as float64/int64 and land in the declared float32/int16.
    assert array(columns["price"]).dtype == np.float32
    assert array(columns["price"]).tolist() == [1.5, 2.25, 9.0]
    assert array(columns["quantity"]).tolist() == [1, 2, 300]
    assert texts(columns["source"]) == [b"a", b"", "ç".encode()]
    assert array(columns["promoted"]).tolist() == [False, False, False]


def test_string_users_and_several_batches_keep_their_order(catalog: InteractionCatalog) -> None:
    search = EventBatch("search", ["s1"], ["v-9"], ["red shoes"], [NOW], {})
    first, second = over_the_wire([search, clicks()], catalog)
    assert (first.type, list(first.users), list(first.items)) == ("search", ["v-9"], ["red shoes"])
    assert second.type == "click" and array(second.users).tolist() == [42, 42, 7]


def test_numpy_attributes_keep_their_dtype_and_bools_stay_bools(
    catalog: InteractionCatalog,
) -> None:
    attributes = {
        "price": np.array([1.0, 2.0, 3.0], np.float32),
        "promoted": np.array([True, False, True]),
    }
    (received,) = over_the_wire([clicks(attributes=attributes)], catalog)
    assert array(received.attributes["price"]).dtype == np.float32
    history = stored_events(catalog, received)
    assert array(history.columns["promoted"]).tolist() == [True, False, True]


def test_encoded_text_sent_as_bytes_is_read_as_the_declared_string(
    catalog: InteractionCatalog,
) -> None:
    sources = var_column([b"app", b"web", b"x"])
    (received,) = over_the_wire([clicks(attributes={"source": sources})], catalog)
    history = stored_events(catalog, received)
    assert texts(history.columns["source"]) == [b"app", b"web", b"x"]
    broken = var_column([b"app", b"\xff", b"x"])
    with pytest.raises(InvalidArgumentError, match=r"batch 0: column 'source'.*UTF-8"):
        over_the_wire([clicks(attributes={"source": broken})], catalog)


def test_a_wrong_value_is_named_by_field_and_event(catalog: InteractionCatalog) -> None:
    (received,) = over_the_wire([clicks(attributes={"quantity": [1, 70_000, 2]})], catalog)
    with pytest.raises(InvalidArgumentError, match=r"batch 0, event 1: field 'quantity'.*int16"):
        encode_batch(catalog, received, "batch 0", NOW)
    (received,) = over_the_wire([clicks(attributes={"price": ["1", "2", "3"]})], catalog)
    with pytest.raises(InvalidArgumentError, match=r"field 'price' is float32, got strings"):
        encode_batch(catalog, received, "batch 0", NOW)


def test_key_columns_must_be_unnamed_or_named_after_the_types_keys(
    catalog: InteractionCatalog,
) -> None:
    request = ingest_request([clicks(), clicks()])
    request.batches[0].user.name = "user_id"
    request.batches[0].item.name = "product_id"
    assert len(batches_from_proto(request.batches, catalog)) == 2
    request.batches[1].user.name = "uid"
    with pytest.raises(
        InvalidArgumentError, match=r"batch 1: user column is named 'uid'.*'user_id'"
    ):
        batches_from_proto(request.batches, catalog)


def test_malformed_batches_are_refused_naming_the_batch(catalog: InteractionCatalog) -> None:
    request = ingest_request([clicks()])
    request.batches[0].attributes.add(name="price", type="float64", values=b"\0" * 24)
    with pytest.raises(InvalidArgumentError, match=r"batch 0: field 'price' is given twice"):
        batches_from_proto(request.batches, catalog)
    request = ingest_request([clicks(attributes={})])
    request.batches[0].attributes.add(name="price", type="float32[2]", values=b"\0" * 24)
    with pytest.raises(InvalidArgumentError, match=r"batch 0: field 'price': vectors"):
        batches_from_proto(request.batches, catalog)
    request = ingest_request([clicks(attributes={})])
    request.batches[0].user.string_values.append("x")
    with pytest.raises(InvalidArgumentError, match=r"batch 0: users: .*mixes value lists"):
        batches_from_proto(request.batches, catalog)


def test_an_unknown_type_is_left_for_the_engine_to_name(catalog: InteractionCatalog) -> None:
    (received,) = over_the_wire([clicks(type="like")], catalog)
    with pytest.raises(InvalidArgumentError, match=r"batch 0: unknown interaction type 'like'"):
        encode_batch(catalog, received, "batch 0", NOW)


# ---- Get, Hydrate, Sweep requests ----------------------------------------------------------------


def test_get_requests_round_trip(catalog: InteractionCatalog) -> None:
    assert get_from_proto(get_to_proto(42, ["click"], limit=10), catalog) == (
        42,
        ["click"],
        10,
        None,
    )
    request = get_to_proto("v-9", ["search"], since=MAY_1_2024)
    assert get_from_proto(request, catalog) == ("v-9", ["search"], None, MAY_1_2024)
    assert get_from_proto(get_to_proto(np.int64(7)), catalog) == (7, [], None, None)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: r.user.int64_values.append(8), "give exactly one value, got 2"),
        (lambda r: r.types.extend(["click", "click"]), "'click' is asked for twice"),
        (lambda r: setattr(r.user, "name", "uid"), "user column is named 'uid'"),
        (lambda r: setattr(r, "since", -5), "since must be unix milliseconds"),
    ],
)
def test_bad_get_requests_name_the_field(
    catalog: InteractionCatalog, change: Any, named: str
) -> None:
    request = get_to_proto(42)
    change(request)
    with pytest.raises(InvalidArgumentError, match=named):
        get_from_proto(request, catalog)


def test_a_named_user_must_be_every_asked_types_user_key(catalog: InteractionCatalog) -> None:
    request = get_to_proto(42, ["click"])
    request.user.name = "user_id"
    assert get_from_proto(request, catalog)[0] == 42
    request.ClearField("types")  # every type: "search" keys users by "visitor"
    with pytest.raises(InvalidArgumentError, match="user key is 'visitor'"):
        get_from_proto(request, catalog)


def test_hydrate_requests_round_trip_and_one_user_only(catalog: InteractionCatalog) -> None:
    assert hydrate_from_proto(hydrate_to_proto(42, ["click"]), catalog) == (42, ["click"])
    with pytest.raises(TypeError, match="one user"):
        hydrate_to_proto([42, 43])


def test_sweep_limits() -> None:
    assert sweep_limit(0) is None and sweep_limit(250) == 250
    with pytest.raises(InvalidArgumentError, match=r"limit must be 1\.\.100000"):
        sweep_limit(100_001)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-05-01", MAY_1_2024),
        ("2024-05-01T00:00:00Z", MAY_1_2024),
        ("2024-05-01T02:00:00+02:00", MAY_1_2024),
        ("2024-05-01 00:00:01.5", MAY_1_2024 + 1500),
        (str(MAY_1_2024), MAY_1_2024),
        (MAY_1_2024, MAY_1_2024),
    ],
)
def test_since_takes_unix_ms_or_iso_8601(given: str | int, expected: int) -> None:
    assert since_ms(given) == expected


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("1714521600", "not unix milliseconds \\(seconds\\?"),
        ("yesterday", "neither unix milliseconds nor an ISO 8601"),
        ("2024-13-01", "neither unix milliseconds nor an ISO 8601"),
        ("9" * 5000, "ASCII digits, got 5000 characters"),  # int() of it raises ValueError
        ("9" * 20, "beyond any time we store"),
        ("١٧١٤٥٢١٦٠٠٠٠٠", "ASCII digits"),  # Arabic-Indic digits
    ],
)
def test_since_refuses_what_it_cannot_read(given: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named):
        since_ms(given)


# ---- Histories: engine -> proto -> client numpy ------------------------------------------------


def test_histories_decode_to_numpy_columns_in_layout_order(catalog: InteractionCatalog) -> None:
    history = stored_events(catalog, clicks())
    empty = decode_rows(catalog, "search", [])
    sent = histories_to_proto([history, empty]).SerializeToString()
    decoded = decode_histories(pb.GetResponse.FromString(sent))
    assert list(decoded) == ["click", "search"]
    got = decoded["click"]
    assert got.count == 3 and len(got) == 3
    assert list(got.columns) == [
        "event_id",
        "ts",
        "product_id",
        "price",
        "quantity",
        "source",
        "promoted",
    ]
    assert got.event_ids.dtype == object and got.event_ids.tolist() == ["e1", "e2", "e3"]
    assert got.timestamps.dtype == np.int64
    assert got["price"].dtype == np.float32 and got["quantity"].dtype == np.int16
    assert got["source"].tolist() == ["a", "", "ç"] and got["promoted"].dtype == np.bool_
    frame = got.to_pandas()
    assert isinstance(frame["ts"].dtype, pd.DatetimeTZDtype) and str(frame["ts"].dt.tz) == "UTC"
    assert frame["ts"].iloc[0] == pd.Timestamp(NOW - 3000, unit="ms", tz="UTC")
    assert frame["event_id"].tolist() == ["e1", "e2", "e3"]
    assert decoded["search"].count == 0 and decoded["search"]["query"].tolist() == []


# ---- HTTP gateway --------------------------------------------------------------------------------


def test_http_batches_take_plain_or_key_names(catalog: InteractionCatalog) -> None:
    body = {
        "batches": [
            {
                "type": "click",
                "event_ids": ["e1"],
                "user_id": [42],
                "items": [1334],
                "timestamps": [NOW],
                "attributes": {"price": [1.5]},
            },
            {
                "type": "search",
                "event_ids": ["s1"],
                "users": ["v-9"],
                "query": ["shoes"],
                "timestamps": [NOW],
            },
        ]
    }
    click, search = http_gateway.parse_batches(body, catalog)
    assert (click.users, click.items, click.attributes) == ([42], [1334], {"price": [1.5]})
    assert (search.users, search.items, search.attributes) == (["v-9"], ["shoes"], {})
    history = stored_events(catalog, click)
    assert array(history.columns["price"]).tolist() == [1.5]


@pytest.mark.parametrize(
    ("batch", "named"),
    [
        ({"type": "click", "users": [1], "user_id": [1]}, "batch 0: give 'users' or 'user_id'"),
        ({"type": "click", "userid": [1]}, "batch 0: unknown field 'userid'"),
        ({"type": 3}, "batch 0: 'type' must be a string"),
        ({"type": "click", "event_ids": "e1"}, "batch 0: 'event_ids' must be a list"),
        ({"type": "click", "attributes": []}, "batch 0: 'attributes' must map"),
        ({"type": "click", "timestamps": [[1]]}, "batch 0: 'timestamps' must be a list of values"),
        ({"type": "click", "users": None}, r"batch 0: 'users' \(or 'user_id'\) is missing"),
        ({"type": "click", "event_ids": None}, "batch 0: 'event_ids' is missing"),
    ],
)
def test_http_batch_errors_name_the_batch_and_field(
    catalog: InteractionCatalog, batch: dict[str, Any], named: str
) -> None:
    full: dict[str, Any] = {"event_ids": [], "users": [], "items": [], "timestamps": []}
    full.update(batch)
    full = {key: value for key, value in full.items() if value is not None}
    with pytest.raises(InvalidArgumentError, match=named):
        http_gateway.parse_batches({"batches": [full]}, catalog)


def test_http_body_without_batches_is_refused(catalog: InteractionCatalog) -> None:
    with pytest.raises(InvalidArgumentError, match="'batches' must be a list"):
        http_gateway.parse_batches({"batches": {}}, catalog)
    with pytest.raises(InvalidArgumentError, match="unknown field 'events'"):
        http_gateway.parse_batches({"events": []}, catalog)


def test_http_histories_json_keeps_layout_order_and_nan(catalog: InteractionCatalog) -> None:
    attributes = {"price": [math.nan, 1.0, math.inf]}
    payload = http_gateway.histories_to_json(
        [stored_events(catalog, clicks(attributes=attributes))]
    )
    columns = payload["histories"]["click"]["columns"]
    assert payload["histories"]["click"]["count"] == 3
    assert list(columns)[:3] == ["event_id", "ts", "product_id"]
    assert columns["price"] == ["NaN", 1.0, "Infinity"]
    assert columns["quantity"] == [1, 1, 1] and columns["source"] == ["web"] * 3
    json.dumps(payload, allow_nan=False)  # valid strict JSON


@dataclass
class RecordingService:
    """Stands in for InteractionService: records what the gateway asked for."""

    catalog: InteractionCatalog
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    async def ingest(self, batches: list[EventBatch]) -> int:
        self.calls.append(("ingest", (batches,)))
        return sum(len(b.event_ids) for b in batches)

    async def get(self, user: Any, types: list[str], limit: Any, since: Any) -> list[History]:
        self.calls.append(("get", (user, types, limit, since)))
        if user == "boom":
            raise RuntimeError("tier down")
        if user == "ghost":
            raise NotFoundError("unknown interaction type 'x'")
        return [decode_rows(self.catalog, name, []) for name in types]

    async def hydrate(self, user: Any, types: list[str]) -> dict[str, int]:
        self.calls.append(("hydrate", (user, types)))
        return {"click": 3}

    async def sweep(self, limit: int = 500) -> SweepResult:
        self.calls.append(("sweep", (limit,)))
        return SweepResult(users=2, events=9, lost_claims=1)


@pytest.fixture
async def http(catalog: InteractionCatalog) -> AsyncIterator[tuple[TestClient[Any, Any], Any]]:
    service = RecordingService(catalog)
    app = web.Application()
    routes = http_gateway.routes(service)  # type: ignore[arg-type]  # stands in
    add_json_routes(app, open_pipeline(), routes)
    async with TestClient(TestServer(app)) as client:
        yield client, service


async def test_http_routes_parse_and_answer(http: tuple[TestClient[Any, Any], Any]) -> None:
    client, service = http
    response = await client.post(
        "/v1/interactions/get",
        json={"user_id": 42, "types": ["click"], "since": "2024-05-01", "limit": 5},
    )
    assert response.status == 200
    assert (await response.json())["histories"]["click"]["count"] == 0
    assert service.calls[-1] == ("get", (42, ["click"], 5, MAY_1_2024))
    response = await client.post("/v1/interactions/hydrate", json={"user": "42"})
    assert await response.json() == {"loaded": {"click": 3}}
    assert service.calls[-1] == ("hydrate", ("42", []))
    response = await client.post("/v1/interactions/sweep", json={"limit": 7})
    assert await response.json() == {"users": 2, "events": 9, "lost_claims": 1}
    await client.post("/v1/interactions/sweep", json={})
    assert service.calls[-2:] == [("sweep", (7,)), ("sweep", (500,))]
    body = {"batches": [{"type": "click", "event_ids": ["a"], "users": [1], "items": [2],
                         "timestamps": [NOW]}]}  # fmt: skip
    response = await client.post("/v1/interactions/ingest", json=body)
    assert await response.json() == {"stored": 1}


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "named"),
    [
        ("get", {"user": 42, "visitor": "v"}, 400, "INVALID_ARGUMENT", "give the user once"),
        ("get", {"visitor": "v", "types": ["click"]}, 400, "INVALID_ARGUMENT", "('user_id')"),
        ("get", {"user": 42, "limit": "5"}, 400, "INVALID_ARGUMENT", "'limit' must be"),
        ("get", {"user": 42, "since": "soon"}, 400, "INVALID_ARGUMENT", "since 'soon'"),
        ("get", {"user": [1]}, 400, "INVALID_ARGUMENT", "one user id"),
        ("get", {"user": "ghost"}, 404, "NOT_FOUND", "unknown interaction type"),
        ("get", {"user": "boom"}, 500, "INTERNAL", "see the server log"),
        ("sweep", {"limit": True}, 400, "INVALID_ARGUMENT", "'limit' must be"),
        ("hydrate", {"user": 1, "types": "click"}, 400, "INVALID_ARGUMENT", "'types' must be"),
    ],
)
async def test_http_errors_look_like_the_other_gateways(
    http: tuple[TestClient[Any, Any], Any],
    path: str,
    body: dict[str, Any],
    status: int,
    code: str,
    named: str,
) -> None:
    client, _ = http
    response = await client.post(f"/v1/interactions/{path}", json=body)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["code"] == code and named in error["message"]


async def test_http_body_must_be_a_json_object(http: tuple[TestClient[Any, Any], Any]) -> None:
    client, _ = http
    response = await client.post("/v1/interactions/get", data=b"[1]")
    assert response.status == 400
    assert "JSON object" in (await response.json())["error"]["message"]


# ---- event files ---------------------------------------------------------------------------------


def test_event_files_of_every_format_read_in_batches(
    tmp_path: Path, catalog: InteractionCatalog
) -> None:
    kind = catalog.type("click")
    count = 7
    table = pa.table(
        {
            "event_id": [f"e{i}" for i in range(count)],
            "user_id": [42] * count,
            "product_id": list(range(count)),
            "ts": [NOW - i for i in range(count)],
            "price": [0.5 * i for i in range(count)],
            "note": ["ignored"] * count,
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    frame = table.to_pandas()
    frame.to_csv(tmp_path / "events.csv", index=False)
    frame.to_json(tmp_path / "events.jsonl", orient="records", lines=True)
    for name in ("events.parquet", "events.csv", "events.jsonl"):
        opened = EventFile(tmp_path / name, kind)
        assert opened.ignored == ["note"], name
        parts = list(opened.tables(3))
        assert [(first, t.num_rows) for first, t in parts] == [(0, 3), (3, 3), (6, 1)], name
        batch = to_batch(kind, parts[1][1])
        assert list(batch.event_ids) == ["e3", "e4", "e5"], name
        assert array(batch.items).tolist() == [3, 4, 5]
        assert array(batch.attributes["price"]).tolist() == [1.5, 2.0, 2.5], name
        stored = stored_events(catalog, batch).columns["source"]
        assert texts(stored) == [b"web"] * 3, name  # the default
    assert EventFile(tmp_path / "events.parquet", kind).events == count
    assert EventFile(tmp_path / "events.csv", kind).events is None


def test_event_file_values_convert_to_the_declared_types(catalog: InteractionCatalog) -> None:
    kind = catalog.type("click")
    table = pa.table(
        {
            "event_id": pa.array([1, 2], pa.int64()),  # ids that look like numbers
            "user_id": [42, 43],
            "product_id": [1.0, 2.0],  # whole floats are fine
            "ts": pa.array([NOW * 1000, (NOW + 1) * 1000], pa.timestamp("us", tz="UTC")),
            "quantity": pa.array([3, None], pa.int64()),  # null: the default (1)
            "promoted": [True, False],
        }
    )
    batch = to_batch(kind, table)
    assert list(batch.event_ids) == ["1", "2"]
    assert array(batch.timestamps).tolist() == [NOW, NOW + 1]
    assert array(batch.attributes["quantity"]).dtype == np.int16
    assert array(batch.attributes["quantity"]).tolist() == [3, 1]
    assert array(batch.attributes["promoted"]).dtype == np.bool_
    assert stored_events(catalog, batch).count == 2


@pytest.mark.parametrize(
    ("column", "values", "index", "named"),
    [
        ("product_id", [1.0, 2.5, 3.0], 1, "field 'product_id' is int64, got 2.5"),
        ("quantity", [1, 2, 40_000], 2, "field 'quantity' is int16, got 40000"),
        ("user_id", [1, None, 3], 1, "field 'user_id' is missing"),
        ("event_id", ["a", "b", None], 2, "field 'event_id' is missing"),
    ],
)
def test_event_file_bad_values_name_the_event(
    catalog: InteractionCatalog, column: str, values: list[Any], index: int, named: str
) -> None:
    data: dict[str, Any] = {
        "event_id": ["a", "b", "c"],
        "user_id": [1, 2, 3],
        "product_id": [1, 2, 3],
        "ts": [NOW, NOW, NOW],
    }
    data[column] = values
    with pytest.raises(BadEventError) as caught:
        to_batch(catalog.type("click"), pa.table(data))
    assert caught.value.index == index and caught.value.reason == named


def test_event_files_are_checked_before_anything_is_read(
    tmp_path: Path, catalog: InteractionCatalog
) -> None:
    kind = catalog.type("click")
    (tmp_path / "events.csv").write_text("event_id,user_id,ts\ne1,42,1\n")
    with pytest.raises(InvalidArgumentError, match=r"missing column\(s\) product_id"):
        EventFile(tmp_path / "events.csv", kind)
    with pytest.raises(InvalidArgumentError, match="unsupported file type"):
        EventFile(tmp_path / "events.xlsx", kind)
    with pytest.raises(InvalidArgumentError, match="no such file"):
        EventFile(tmp_path / "absent.parquet", kind)


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_window_defaults_to_the_last_events_and_reads_since() -> None:
    assert cli.window(None, None) == (cli.DEFAULT_LAST, None)
    assert cli.window(5, None) == (5, None)
    assert cli.window(None, "2024-05-01T00:00:00Z") == (None, MAY_1_2024)
    assert cli.window(3, str(MAY_1_2024 + 7)) == (3, MAY_1_2024 + 7)
    with pytest.raises(typer.Exit):
        cli.window(None, "last tuesday")


def test_ingest_server_rejections_become_event_indices() -> None:
    bad = rejection("batch 0, event 17: field 'price' is float32, got 'x'")
    assert (bad.index, bad.reason) == (17, "field 'price' is float32, got 'x'")
    whole = rejection("batch 0: field 'price' has 2 values for 3 events")
    assert (whole.index, whole.reason) == (-1, "field 'price' has 2 values for 3 events")
    other = rejection("something else")
    assert (other.index, other.reason) == (-1, "something else")


def test_cli_get_errors_are_one_line_and_exit_1() -> None:
    runner = CliRunner()
    since = runner.invoke(cli.app, ["get", "42", "--since", "soon"])
    assert since.exit_code == 1
    assert since.stderr.strip().splitlines() == [
        "error: since 'soon' is neither unix milliseconds nor an ISO 8601 date or time"
    ]
    unreachable = runner.invoke(
        cli.app, ["get", "42", "-t", "click", "--target", f"127.0.0.1:{free_port('127.0.0.1')}"]
    )
    assert unreachable.exit_code == 1
    assert len(unreachable.stderr.strip().splitlines()) == 1
    assert unreachable.stderr.startswith("error: UNAVAILABLE")
    assert runner.invoke(cli.app, ["get", "42", "--last", "0"]).exit_code == 2  # usage error


def test_cli_ingest_checks_the_type_and_files_first(tmp_path: Path) -> None:
    store = open_files(tmp_path).registry
    store.save(make_registry(), store.load().revision)
    (tmp_path / "events.csv").write_text("event_id,user_id,product_id\ne1,42,1\n")
    runner = CliRunner()
    base = ["ingest", "--data-dir", str(tmp_path), str(tmp_path / "events.csv")]
    unknown = runner.invoke(cli.app, [*base, "-t", "like"])
    assert unknown.exit_code == 1
    assert "unknown interaction type 'like' (types: click, search)" in unknown.stderr
    missing = runner.invoke(cli.app, [*base, "-t", "click"])
    assert missing.exit_code == 1 and "missing column(s) ts" in missing.stderr
