"""Key checking and encoding, and feature selection against the catalog."""

from __future__ import annotations

import numpy as np
import pytest

from inferstack.core.definitions import Entity
from inferstack.core.errors import InvalidArgumentError, NotFoundError
from inferstack.core.keys import encode_keys
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
