"""The Look up page: keys typed by a person -> Retrieve through the feature service (the
same call, limits and checks as any client's) -> each group's values and row status."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from inferstack.console.values import Shown, column_values
from inferstack.core.definitions import Entity
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.rowformat import RowStatus
from inferstack.featurestore.service import FeatureService

STATUS_NAMES = {int(status): status.name.lower() for status in RowStatus}
_INTEGER_SEPARATORS = re.compile(r"[\s,;]+")


@dataclass(frozen=True)
class FeatureValues:
    name: str
    type: str
    values: list[Shown]  # one per key


@dataclass(frozen=True)
class GroupValues:
    name: str
    statuses: list[str]  # one per key: found, missing, expired, corrupt
    features: list[FeatureValues]


@dataclass(frozen=True)
class LookupView:
    entity: str
    keys: list[str]  # each key as shown: "42", or "42 · c17" for a composite key
    groups: list[GroupValues]


def parse_keys(entity: Entity, texts: Mapping[str, str]) -> dict[str, list[str]]:
    """One list of values per key column: one value per line (integers may also be separated
    by commas or spaces). Every column needs the same number of values."""
    columns: dict[str, list[str]] = {}
    for key in entity.keys:
        text = texts.get(key.name, "")
        if key.type.base == "string":
            values = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            values = [v for v in _INTEGER_SEPARATORS.split(text) if v]
        columns[key.name] = values
    counts = {len(values) for values in columns.values()}
    if counts == {0}:
        raise InvalidArgumentError(f"type at least one key of entity '{entity.name}'")
    if len(counts) > 1:
        given = ", ".join(f"{name}: {len(values)}" for name, values in columns.items())
        raise InvalidArgumentError(f"each key column needs the same number of values ({given})")
    return columns


async def look_up(
    service: FeatureService, entity: Entity, keys: dict[str, list[str]]
) -> LookupView:
    result = await service.retrieve(entity.name, dict(keys), [])
    labels = [" · ".join(parts) for parts in zip(*keys.values(), strict=True)]
    by_group: dict[str, list[FeatureValues]] = {group: [] for group in result.status}
    for column in result.columns:
        group, _, name = column.name.partition(".")
        by_group[group].append(
            FeatureValues(name, column.type_name, column_values(column.type, column.values))
        )
    groups = [
        GroupValues(group, [STATUS_NAMES[int(code)] for code in status], by_group[group])
        for group, status in result.status.items()
    ]
    return LookupView(entity.name, labels, groups)
