"""Event batches: checked field by field (errors name the field and the event), encoded as
rows of the type's layout and decoded back exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import yaml

from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.events import EventBatch
from inferstack.core.registry import Registry, plan
from inferstack.interactions.events import InteractionCatalog, decode_rows, encode_batch

TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: price, type: float32}
      - {name: quantity, type: int16, default: 1}
      - {name: source, type: string, default: web}
  - name: search
    user: {name: user_id, type: int64}
    item: {name: query, type: string}
"""
NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def catalog() -> InteractionCatalog:
    parsed = DefinitionsFile.model_validate(yaml.safe_load(TYPES))
    registry = plan(Registry(), [], [], [], parsed.interaction_types).registry
    return InteractionCatalog(registry)


def batch(**changes: Any) -> EventBatch:
    fields: dict[str, Any] = {
        "type": "click",
        "event_ids": ["e1", "e2", "e3"],
        "users": [7, 7, 8],
        "items": [100, 101, 100],
        "timestamps": [NOW - 3000, NOW - 2000, NOW - 1000],
        "attributes": {"price": np.array([1.5, 2.5, 3.5], np.float32), "source": ["a", "b", "c"]},
    }
    fields.update(changes)
    return EventBatch(**fields)


def test_events_round_trip_with_defaults_for_missing_attributes(
    catalog: InteractionCatalog,
) -> None:
    encoded = encode_batch(catalog, batch(), "batch 0", NOW)
    assert encoded.users[0] == encoded.users[1] != encoded.users[2]
    history = decode_rows(catalog, "click", encoded.rows)
    assert history.count == 3
    assert [v.decode() for v in history.columns["event_id"].to_list()] == ["e1", "e2", "e3"]
    assert history.columns["product_id"].tolist() == [100, 101, 100]
    assert history.columns["price"].tolist() == [1.5, 2.5, 3.5]
    assert history.columns["quantity"].tolist() == [1, 1, 1]  # its default
    assert [v.decode() for v in history.columns["source"].to_list()] == ["a", "b", "c"]
    assert history.columns["ts"].tolist() == [NOW - 3000, NOW - 2000, NOW - 1000]


def test_string_items(catalog: InteractionCatalog) -> None:
    encoded = encode_batch(
        catalog,
        EventBatch("search", ["s1"], [7], ["red shoes"], [NOW]),
        "batch 0",
        NOW,
    )
    history = decode_rows(catalog, "search", encoded.rows)
    assert history.columns["query"].to_list() == [b"red shoes"]


def test_text_of_any_script_and_sequences_of_any_kind(catalog: InteractionCatalog) -> None:
    ids = ("e1", "é" * 128, "日本")  # 256 bytes of UTF-8 is the most an id may have
    encoded = encode_batch(
        catalog,
        batch(
            event_ids=np.array(ids),
            users=(7, 7, 8),
            timestamps=np.array([NOW - 3000, NOW - 2000, NOW - 1000]),
            attributes={"source": np.array(["ü", "", "\U0001f600"], dtype=object)},
        ),
        "batch 0",
        NOW,
    )
    history = decode_rows(catalog, "click", encoded.rows)
    assert [v.decode() for v in history.columns["event_id"].to_list()] == list(ids)
    assert [v.decode() for v in history.columns["source"].to_list()] == ["ü", "", "\U0001f600"]
    assert history.columns["price"].tolist() == [0.0, 0.0, 0.0]  # its default


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "like"}, "batch 0: unknown interaction type 'like'"),
        ({"event_ids": ["e1", "", "e3"]}, "batch 0, event 1: event_id is missing"),
        ({"event_ids": ["e1", "e2", None]}, "batch 0, event 2: event_id is missing"),
        ({"event_ids": ["e1", "é" * 129, "e3"]}, "event 1: event_id is longer than 256 bytes"),
        ({"event_ids": ["x" * 257, "", 5]}, "event 0: event_id is longer than 256 bytes"),
        ({"event_ids": ["é", 5, ""]}, "batch 0, event 1: event_id is missing"),
        ({"timestamps": [NOW, True, NOW]}, "event 1: field 'ts' is int64, got True"),
        ({"users": [7, "x", 8]}, "batch 0, event 1: field 'user_id' is int64, got 'x'"),
        ({"items": [100, 101]}, "field 'product_id' has 2 values for 3 events"),
        ({"timestamps": [NOW, NOW + 6 * 60_000, NOW]}, "event 1: ts .* 5 minutes in the future"),
        ({"timestamps": [NOW, -5, NOW]}, "event 1: ts must not be negative"),
        ({"attributes": {"colour": [1, 2, 3]}}, "has no field 'colour'"),
        ({"attributes": {"price": ["a", "b", "c"]}}, "event 0: field 'price' is float32"),
        ({"attributes": {"quantity": [1, 70_000, 2]}}, "event 1: field 'quantity' value 70000"),
        ({"attributes": {"source": ["a", 5, "c"]}}, "event 1: field 'source' is string"),
        ({"attributes": {"source": ["é", "b", b"c"]}}, "event 2: field 'source' is string"),
    ],
)
def test_bad_events_name_the_field_and_the_event(
    catalog: InteractionCatalog, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        encode_batch(catalog, batch(**changes), "batch 0", NOW)
