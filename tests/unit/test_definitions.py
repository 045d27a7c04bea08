"""Definition files: validation errors name file, line and reason; plans version schemas."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from inferstack.core.errors import DefinitionError
from inferstack.core.loading import load_definitions
from inferstack.core.registry import Registry, plan
from inferstack.core.types import FeatureType, TypeParseError

VALID = """\
entities:
  - name: user_category
    keys: [{name: user_id, type: int64}, {name: category_id, type: string}]
feature_groups:
  - name: affinity
    entity: user_category
    ttl: 30d
    features:
      - {name: clicks_7d, type: float32, default: 0}
      - {name: emb, type: "float32[16]"}
"""


def write(tmp_path: Path, text: str, name: str = "defs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(paths: list[Path], registry: Registry | None = None) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definitions(paths, registry)
    return caught.value.problems


def test_valid_file_loads(tmp_path: Path) -> None:
    definitions = load_definitions([write(tmp_path, VALID)])
    group = definitions.feature_groups[0]
    assert group.ttl == 30 * 86400
    assert group.features[1].type == FeatureType("float32", 16)
    assert group.features[1].default == [0.0] * 16


def test_bad_type_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("type: float32, default: 0", "type: float33, default: 0"))
    [problem] = problems_of([path])
    assert problem.startswith(f"{path}:9: ")
    assert "feature_groups.0.features.0.type" in problem and "float33" in problem


def test_unknown_entity_and_duplicate_feature(tmp_path: Path) -> None:
    text = VALID.replace("entity: user_category", "entity: shopper")
    text += "      - {name: clicks_7d, type: int64}\n"
    problems = problems_of([write(tmp_path, text)])
    assert any("listed twice" in p and ":8:" in p for p in problems), problems


def test_unknown_entity_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("entity: user_category", "entity: shopper"))
    [problem] = problems_of([path])
    assert problem == f"{path}:5: feature group 'affinity' refers to unknown entity 'shopper'"


def test_invalid_yaml_and_unknown_field(tmp_path: Path) -> None:
    broken = write(tmp_path, "entities: [\n", "broken.yaml")
    extra = write(tmp_path, VALID.replace("ttl: 30d", "ttl: 30d\n    colour: red"), "extra.yaml")
    problems = problems_of([broken, extra])
    assert any(p.startswith(f"{broken}:") and "invalid YAML" in p for p in problems)
    assert any(p.startswith(f"{extra}:8:") and "colour" in p for p in problems)


def test_default_must_fit_the_type(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("type: float32, default: 0", "type: int8, default: 300"))
    [problem] = problems_of([path])
    assert ":9:" in problem and "outside the range of int8" in problem


def test_duplicate_across_files_names_both_places(tmp_path: Path) -> None:
    first = write(tmp_path, VALID, "a.yaml")
    second = write(tmp_path, VALID, "b.yaml")
    problems = problems_of([tmp_path])
    assert any(f"{second}:2" in p and f"{first}:2" in p for p in problems), problems


def test_feature_type_change_is_refused(tmp_path: Path) -> None:
    first = load_definitions([write(tmp_path, VALID)])
    stored = plan(Registry(), first.entities, first.feature_groups).registry
    changed = write(tmp_path, VALID.replace("type: float32, default: 0", "type: int64, default: 0"))
    [problem] = problems_of([changed], stored)
    assert "cannot change type from float32 to int64" in problem


def test_adding_a_feature_makes_a_new_schema_version(tmp_path: Path) -> None:
    first = load_definitions([write(tmp_path, VALID)])
    v1 = plan(Registry(), first.entities, first.feature_groups)
    assert v1.registry.revision == 1
    again = plan(v1.registry, first.entities, first.feature_groups)
    assert again.empty and again.registry is v1.registry
    grown = load_definitions(
        [write(tmp_path, VALID + "      - {name: orders, type: int32, default: 1}\n")],
        v1.registry,
    )
    v2 = plan(v1.registry, grown.entities, grown.feature_groups)
    stored = v2.registry.feature_groups["affinity"]
    assert [v.version for v in stored.versions] == [1, 2]
    assert [str(c) for c in v2.changes] == [
        "~ feature group affinity (schema v1 -> v2; +feature orders)"
    ]


def test_prune_deletes_what_the_files_leave_out(tmp_path: Path) -> None:
    first = load_definitions([write(tmp_path, VALID)])
    stored = plan(Registry(), first.entities, first.feature_groups).registry
    pruned = plan(stored, [], [], prune=True)
    assert {(c.action, c.name) for c in pruned.changes} == {
        ("delete", "affinity"),
        ("delete", "user_category"),
    }
    assert not pruned.registry.feature_groups
    kept = plan(stored, [], [])
    assert kept.empty


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("float32[0]", "vector length"),
        ("string[4]", "vectors of string"),
        ("bool[2]", "vectors of bool"),
        ("complex64", "unknown type"),
        ("float32[", "is not a type"),
    ],
)
def test_bad_type_strings(text: str, message: str) -> None:
    with pytest.raises(TypeParseError, match=message):
        FeatureType.parse(text)
