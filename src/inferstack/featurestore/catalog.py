"""The compiled, immutable view of a registry that the read and write paths use.

Built once per applied registry; servers swap the whole object when definitions change,
so a request sees one complete version of the definitions from start to finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from inferstack.core.definitions import Entity, FeatureGroup
from inferstack.core.errors import InvalidArgumentError, NotFoundError
from inferstack.core.registry import Registry
from inferstack.core.rowformat import GroupCodec
from inferstack.core.types import FeatureType

MEMO_LIMIT = 4096
# Only selections named in at most this many characters are remembered: the memo is keyed by
# what callers send, so without a bound per entry one request of 200k selectors would keep
# ~16 MB for as long as the catalog lives (4,096 such entries: tens of GB). Longer ones are
# worked out per request, as any request's keys are.
MEMO_MAX_KEY_CHARS = 2048


@dataclass(frozen=True)
class SelectedColumn:
    feature: str
    name: str  # "group.feature", as results name it
    type: FeatureType
    type_name: str  # str(type), as responses carry it


@dataclass(frozen=True)
class Selection:
    """Features asked of one feature group, with what each result column needs worked out
    once (selections are memoised per catalog), not per request."""

    group: str
    features: tuple[str, ...]
    columns: tuple[SelectedColumn, ...] = field(default=(), compare=False, repr=False)


class Catalog:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.entities: dict[str, Entity] = dict(registry.entities)
        self.codecs = {name: GroupCodec(stored) for name, stored in registry.feature_groups.items()}
        self.groups_by_entity: dict[str, list[str]] = {name: [] for name in self.entities}
        for name, stored in registry.feature_groups.items():
            self.groups_by_entity.setdefault(stored.definition.entity, []).append(name)
        self._everything = {  # what an empty selector list means, per entity
            entity: [
                self._selection(name, [f.name for f in self.codecs[name].definition.features])
                for name in groups
            ]
            for entity, groups in self.groups_by_entity.items()
        }
        # The catalog is immutable, so a selection worked out once holds until the next one.
        self._selected: dict[tuple[str, tuple[str, ...]], list[Selection]] = {}

    @property
    def revision(self) -> int:
        return self.registry.revision

    def entity(self, name: str) -> Entity:
        entity = self.entities.get(name)
        if entity is None:
            raise NotFoundError(f"entity '{name}' not found")
        return entity

    def group(self, name: str) -> FeatureGroup:
        codec = self.codecs.get(name)
        if codec is None:
            raise NotFoundError(f"feature group '{name}' not found")
        return codec.definition

    def select(self, entity: str, selectors: Sequence[str]) -> list[Selection]:
        """Turn `group`, `group.*` and `group.feature` selectors into per-group selections.

        No selectors means every feature of every feature group of the entity.
        """
        self.entity(entity)
        if not selectors:
            return self._everything[entity]
        key = (entity, tuple(selectors))
        known = self._selected.get(key)
        if known is not None:
            return known
        chosen = self._select(entity, selectors)
        # Callers repeat a few selections; the memo is bounded in entries and entry size.
        if len(self._selected) < MEMO_LIMIT and sum(map(len, selectors)) <= MEMO_MAX_KEY_CHARS:
            self._selected[key] = chosen
        return chosen

    def _select(self, entity: str, selectors: Sequence[str]) -> list[Selection]:
        chosen: dict[str, dict[str, None]] = {}
        for selector in selectors:
            group_name, _, feature_name = selector.partition(".")
            group = self.group(group_name)
            if group.entity != entity:
                raise InvalidArgumentError(
                    f"feature group '{group_name}' belongs to entity '{group.entity}', "
                    f"not '{entity}'"
                )
            features = chosen.setdefault(group_name, {})
            if feature_name in ("", "*"):
                features.update((f.name, None) for f in group.features)
            elif group.feature(feature_name) is None:
                raise NotFoundError(f"feature '{group_name}.{feature_name}' not found")
            else:
                features[feature_name] = None
        return [self._selection(group, list(features)) for group, features in chosen.items()]

    def _selection(self, group: str, features: list[str]) -> Selection:
        codec = self.codecs[group]
        columns = tuple(
            SelectedColumn(name, f"{group}.{name}", codec.types[name], codec.type_names[name])
            for name in features
        )
        return Selection(group, tuple(features), columns)
