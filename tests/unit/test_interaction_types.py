"""Interaction types in the definitions: parsed, versioned like feature groups, and refused
where stored events would stop being readable."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferstack.core.errors import DefinitionError
from inferstack.core.loading import load_definitions
from inferstack.core.registry import Registry, plan
from inferstack.core.rowformat import GroupCodec

CLICK = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: price, type: float32}
      - {name: source, type: string, default: web}
    hot_cap: 50
    retention: {count: 500, age: 30d}
    inactivity: 45m
"""


def applied(tmp_path: Path, text: str, registry: Registry | None = None) -> Registry:
    path = tmp_path / "types.yaml"
    path.write_text(text)
    registry = registry or Registry()
    definitions = load_definitions([path], registry)
    return plan(registry, [], [], [], definitions.interaction_types).registry


def test_a_type_is_stored_with_its_event_layout(tmp_path: Path) -> None:
    registry = applied(tmp_path, CLICK)
    stored = registry.interaction_types["click"]
    assert stored.definition.hot_cap == 50 and stored.definition.inactivity == 45 * 60
    assert stored.definition.retention.age == 30 * 86_400
    assert stored.versions[0].features == [
        ("event_id", "string"),
        ("ts", "int64"),
        ("product_id", "int64"),
        ("price", "float32"),
        ("source", "string"),
    ]
    codec = GroupCodec(stored.as_stored_group())
    assert codec.defaults["source"] == "web"


def test_adding_an_attribute_makes_a_new_version(tmp_path: Path) -> None:
    first = applied(tmp_path, CLICK)
    more = CLICK.replace("    hot_cap:", "      - {name: quantity, type: int32}\n    hot_cap:")
    second = applied(tmp_path, more, first)
    assert [v.version for v in second.interaction_types["click"].versions] == [1, 2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("{name: product_id, type: string}", "the item key of interaction type 'click'"),
    ],
)
def test_keys_and_attribute_types_cannot_change(tmp_path: Path, change: str, message: str) -> None:
    first = applied(tmp_path, CLICK)
    with pytest.raises(DefinitionError, match=message):
        applied(tmp_path, CLICK.replace("{name: product_id, type: int64}", change), first)
    with pytest.raises(DefinitionError, match="cannot change type from float32 to float64"):
        applied(tmp_path, CLICK.replace("price, type: float32", "price, type: float64"), first)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("{name: price, type: float32}", "{name: ts, type: float32}"), "reserved"),
        (("{name: price, type: float32}", "{name: emb, type: 'float32[4]'}"), "vectors"),
        (("product_id", "user_id"), "listed twice"),
        (("hot_cap: 50", "hot_cap: 0"), "hot_cap"),
    ],
)
def test_bad_types_are_refused_naming_the_line(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    with pytest.raises(DefinitionError, match=message) as caught:
        applied(tmp_path, CLICK.replace(*edit))
    assert "types.yaml:" in str(caught.value)
