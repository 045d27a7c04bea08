"""Key checking and encoding, and feature selection against the catalog."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferstack.core.definitions import Entity
from inferstack.core.errors import InvalidArgumentError, NotFoundError
from inferstack.core.keys import KeyValues, coerce_values, encode_keys
from inferstack.core.types import FeatureType
from inferstack.featurestore.catalog import Catalog, Selection
from tests.helpers import registry_from

PAIR = Entity.model_validate(
    {
        "name": "uc",
        "keys": [{"name": "user_id", "type": "int64"}, {"name": "cat", "type": "string"}],
    }
)
SMALL = Entity.model_validate({"name": "s", "keys": [{"name": "id", "type": "int16"}]})


def test_keys_encode_by_value_whatever_the_input_form() -> None:
    from_lists = encode_keys(PAIR, {"user_id": [1, -2], "cat": ["a", "é"]})
    from_numpy = encode_keys(PAIR, {"user_id": np.array([1, -2]), "cat": np.array(["a", "é"])})
    from_text = encode_keys(PAIR, {"user_id": ["1", "-2"], "cat": ["a", "é"]})
    assert from_lists == from_numpy == from_text
    assert len(set(from_lists)) == 2
    # Signed integers keep numeric order in byte order.
    assert sorted(encode_keys(SMALL, {"id": [5, -3, 0]})) == encode_keys(SMALL, {"id": [-3, 0, 5]})


def test_composite_keys_cannot_collide_through_concatenation() -> None:
    e = Entity.model_validate(
        {"name": "p", "keys": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}]}
    )
    assert encode_keys(e, {"a": ["ab"], "b": ["c"]}) != encode_keys(e, {"a": ["a"], "b": ["bc"]})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"user_id": [1]}, "needs key 'cat'"),
        ({"user_id": [1], "cat": ["a"], "x": [1]}, "has no key 'x'"),
        ({"user_id": ["abc"], "cat": ["a"]}, "key 'uc.user_id' is an integer, got 'abc'"),
        ({"user_id": [1.5], "cat": ["a"]}, "key 'uc.user_id' is an integer"),
        ({"user_id": [1], "cat": [3]}, "key 'uc.cat' is a string"),
        ({"user_id": [1, 2], "cat": ["a"]}, "different lengths"),
    ],
)
def test_bad_keys_name_the_key(keys: dict[str, list[object]], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        encode_keys(PAIR, keys)  # type: ignore[arg-type]


def test_out_of_range_key() -> None:
    with pytest.raises(InvalidArgumentError, match="outside the range of int16"):
        encode_keys(SMALL, {"id": [70_000]})


CATALOG = Catalog(
    registry_from(
        {
            "entities": [
                {"name": "user", "keys": [{"name": "user_id", "type": "int64"}]},
                {"name": "item", "keys": [{"name": "item_id", "type": "int64"}]},
            ],
            "feature_groups": [
                {
                    "name": "a",
                    "entity": "user",
                    "features": [{"name": "x", "type": "int8"}, {"name": "y", "type": "string"}],
                },
                {"name": "b", "entity": "user", "features": [{"name": "z", "type": "float64"}]},
                {"name": "c", "entity": "item", "features": [{"name": "w", "type": "float64"}]},
            ],
        }
    )
)


def test_selection_forms() -> None:
    assert CATALOG.select("user", []) == [Selection("a", ("x", "y")), Selection("b", ("z",))]
    assert CATALOG.select("user", ["a.y", "b", "a.*"]) == [
        Selection("a", ("y", "x")),
        Selection("b", ("z",)),
    ]


def test_only_short_selections_are_remembered() -> None:
    """The memo is keyed by what callers send: a request of 200k selectors used to stay in
    it (~16 MB each) for as long as the catalog lived."""
    catalog = Catalog(CATALOG.registry)
    short = ["a.y", "b"]
    assert catalog.select("user", short) is catalog.select("user", short)  # remembered
    long = ["a.x", "a.y"] * 100_000
    first = catalog.select("user", long)
    assert first == [Selection("a", ("x", "y"))]
    assert catalog.select("user", long) is not first  # worked out again, not kept


@pytest.mark.parametrize(
    ("entity", "selectors", "error", "message"),
    [
        ("nobody", [], NotFoundError, "entity 'nobody' not found"),
        ("user", ["q"], NotFoundError, "feature group 'q' not found"),
        ("user", ["a.q"], NotFoundError, "feature 'a.q' not found"),
        ("user", ["c.w"], InvalidArgumentError, "belongs to entity 'item'"),
    ],
)
def test_selection_errors(
    entity: str, selectors: list[str], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        CATALOG.select(entity, selectors)


def test_empty_string_keys_still_encode_to_non_empty_keys() -> None:
    single = Entity.model_validate({"name": "t", "keys": [{"name": "tag", "type": "string"}]})
    assert all(encode_keys(single, {"tag": [""]}))
    assert all(encode_keys(PAIR, {"user_id": [0], "cat": [""]}))
    assert encode_keys(PAIR, {"user_id": [1], "cat": ["ab"]}) != encode_keys(
        PAIR, {"user_id": [1], "cat": ["a"]}
    )


KEY_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "string"]


def _key_values(key_type: str, count: int) -> st.SearchStrategy[list[Any]]:
    if key_type == "string":
        element: st.SearchStrategy[Any] = st.text()
    else:
        info = np.iinfo(key_type)
        element = st.integers(int(info.min), int(info.max))
    return st.lists(element, min_size=count, max_size=count)


@st.composite
def keyed_batches(draw: st.DrawFn) -> tuple[Entity, dict[str, list[Any]]]:
    types = draw(st.lists(st.sampled_from(KEY_TYPES), min_size=1, max_size=4))
    count = draw(st.integers(0, 12))
    entity = Entity.model_validate(
        {"name": "e", "keys": [{"name": f"k{i}", "type": t} for i, t in enumerate(types)]}
    )
    return entity, {f"k{i}": draw(_key_values(t, count)) for i, t in enumerate(types)}


def _parse_key(entity: Entity, key: bytes) -> list[Any]:
    """The documented format read back, independently of the encoder."""
    values: list[Any] = []
    at = 0
    for position, part in enumerate(entity.keys):
        if part.type.base != "string":
            (raw,) = struct.unpack_from(">Q", key, at)
            values.append(raw - 2**63 if part.type.base.startswith("int") else raw)
            at += 8
        elif len(entity.keys) > 1 and position == len(entity.keys) - 1:
            values.append(key[at:].decode("utf-8"))
            at = len(key)
        else:
            (length,) = struct.unpack_from(">I", key, at)
            values.append(key[at + 4 : at + 4 + length].decode("utf-8"))
            at += 4 + length
    assert at == len(key), "bytes left over after the last part"
    return values


@settings(max_examples=200, deadline=None)
@given(keyed_batches())
def test_keys_round_trip_through_the_documented_format(
    batch: tuple[Entity, dict[str, list[Any]]],
) -> None:
    entity, columns = batch
    encoded = encode_keys(entity, dict(columns))
    rows = [list(row) for row in zip(*columns.values(), strict=True)]
    assert [_parse_key(entity, key) for key in encoded] == rows
    # Same values as numpy arrays of the key's own type: the same bytes.
    as_arrays: dict[str, KeyValues] = {
        key.name: values if key.type.base == "string" else np.array(values, key.type.scalar_dtype)
        for key, values in zip(entity.keys, columns.values(), strict=True)
    }
    assert encode_keys(entity, as_arrays) == encoded


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20))
def test_signed_keys_sort_in_numeric_order(values: list[int]) -> None:
    entity = Entity.model_validate({"name": "n", "keys": [{"name": "id", "type": "int64"}]})
    encoded = encode_keys(entity, {"id": values})
    assert [encoded[i] for i in np.argsort(values, kind="stable")] == sorted(encoded)


def test_integer_keys_at_the_edges_of_their_types() -> None:
    big = Entity.model_validate({"name": "b", "keys": [{"name": "id", "type": "uint64"}]})
    assert encode_keys(big, {"id": [2**64 - 1, 2**63 + 1, 0]}) == [
        b"\xff" * 8,
        b"\x80" + b"\x00" * 6 + b"\x01",
        b"\x00" * 8,
    ]
    from_proto = np.array([2**63 + 1], dtype=np.uint64)  # how uint64_values arrive
    assert encode_keys(big, {"id": from_proto}) == [b"\x80" + b"\x00" * 6 + b"\x01"]
    signed = Entity.model_validate({"name": "s", "keys": [{"name": "id", "type": "int64"}]})
    assert encode_keys(signed, {"id": [-(2**63), -1, 0, 2**63 - 1]}) == [
        b"\x00" * 8,
        b"\x7f" + b"\xff" * 7,
        b"\x80" + b"\x00" * 7,
        b"\xff" * 8,
    ]
    assert encode_keys(SMALL, {"id": np.array([-1], np.int16)}) == [b"\x7f" + b"\xff" * 7]
    with pytest.raises(InvalidArgumentError, match="outside the range of uint64"):
        encode_keys(big, {"id": [-1]})
    with pytest.raises(InvalidArgumentError, match="outside the range of every integer key type"):
        encode_keys(big, {"id": [-1, 2**63]})


def test_composite_keys_of_three_parts_with_empty_strings() -> None:
    triple = Entity.model_validate(
        {
            "name": "t",
            "keys": [
                {"name": "a", "type": "string"},
                {"name": "n", "type": "int32"},
                {"name": "z", "type": "string"},
            ],
        }
    )
    keys = encode_keys(triple, {"a": ["", "é"], "n": [-1, 7], "z": ["", "end"]})
    assert keys == [
        b"\x00\x00\x00\x00" + b"\x7f" + b"\xff" * 7,
        b"\x00\x00\x00\x02\xc3\xa9" + b"\x80" + b"\x00" * 6 + b"\x07" + b"end",
    ]


@pytest.mark.parametrize("text", ["4_2", " +42\n", "+42", "٤٢", "42 ", "0x2a", "", "-", "4" * 21])
def test_integer_keys_sent_as_text_are_ascii_digits_only(text: str) -> None:
    # Python's int() reads each of these but the last four as 42 (or a number).
    with pytest.raises(InvalidArgumentError, match="ASCII digits"):
        coerce_values("key 'user.user_id'", FeatureType("int64"), [text])


def test_integer_keys_sent_as_text_keep_their_sign_and_digits() -> None:
    parsed = coerce_values("key 'user.user_id'", FeatureType("int64"), ["42", "-7", "007"])
    assert np.asarray(parsed).tolist() == [42, -7, 7]
