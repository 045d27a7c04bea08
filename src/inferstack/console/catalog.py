"""The Catalog page's data: entities, feature groups with their schema versions and the diff
between consecutive versions, every feature, interaction types, and the search over them."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferstack.console.values import default_text, seconds
from inferstack.core.definitions import Feature, FeatureGroup
from inferstack.core.registry import Registry, SchemaVersion


@dataclass(frozen=True)
class FeatureRow:
    group: str
    name: str
    type: str
    default: str
    description: str
    since: int  # the first schema version of the current run of versions that has it

    @property
    def search_text(self) -> str:
        """What the search box matches: group, name, type and description, lowercase."""
        return f"{self.group}.{self.name} {self.type} {self.description}".lower()


@dataclass(frozen=True)
class VersionDiff:
    version: int
    features: int
    added: list[str] = field(default_factory=list)  # "name type"
    removed: list[str] = field(default_factory=list)
    retyped: list[str] = field(default_factory=list)  # "name: old -> new" (a name reused)


@dataclass(frozen=True)
class GroupView:
    name: str
    entity: str
    description: str
    ttl: str
    cache: str
    versions: list[VersionDiff]
    features: list[FeatureRow]


@dataclass(frozen=True)
class EntityView:
    name: str
    keys: list[tuple[str, str]]
    description: str
    groups: list[str]


@dataclass(frozen=True)
class InteractionView:
    name: str
    user: str
    item: str
    attributes: list[FeatureRow]
    hot_cap: int
    retention: str
    inactivity: str
    description: str
    versions: int


@dataclass(frozen=True)
class CatalogView:
    revision: int
    entities: list[EntityView]
    groups: list[GroupView]
    interactions: list[InteractionView]
    models: list[tuple[str, int, str]]  # name, version, description

    @property
    def feature_count(self) -> int:
        return sum(len(group.features) for group in self.groups)


def catalog_view(registry: Registry) -> CatalogView:
    groups = [
        _group_view(name, stored.definition, stored.versions)
        for name, stored in sorted(registry.feature_groups.items())
    ]
    entities = [
        EntityView(
            entity.name,
            [(key.name, str(key.type)) for key in entity.keys],
            entity.description,
            [g.name for g in groups if g.entity == entity.name],
        )
        for entity in sorted(registry.entities.values(), key=lambda e: e.name)
    ]
    interactions = [
        InteractionView(
            name,
            f"{kind.definition.user.name} ({kind.definition.user.type})",
            f"{kind.definition.item.name} ({kind.definition.item.type})",
            [_feature_row(name, f, 1) for f in kind.definition.attributes],
            kind.definition.hot_cap,
            f"newest {kind.definition.retention.count}, at most "
            f"{seconds(kind.definition.retention.age)} old",
            seconds(kind.definition.inactivity),
            kind.definition.description,
            len(kind.versions),
        )
        for name, kind in sorted(registry.interaction_types.items())
    ]
    models = [
        (name, stored.version, stored.definition.description)
        for name, stored in sorted(registry.models.items())
    ]
    return CatalogView(registry.revision, entities, groups, interactions, models)


def search(view: CatalogView, query: str) -> set[str] | None:
    """The features ("group.feature") whose group, name, type or description contain every
    word of `query`, case-insensitive; None for an empty query (everything is shown)."""
    words = query.lower().split()
    if not words:
        return None
    return {
        f"{feature.group}.{feature.name}"
        for group in view.groups
        for feature in group.features
        if all(word in feature.search_text for word in words)
    }


def version_diffs(versions: list[SchemaVersion]) -> list[VersionDiff]:
    """Each version with what it added, removed or retyped relative to the one before."""
    diffs: list[VersionDiff] = []
    previous: dict[str, str] = {}
    for version in versions:
        layout = dict(version.features)
        diffs.append(
            VersionDiff(
                version.version,
                len(layout),
                [f"{n} {t}" for n, t in layout.items() if n not in previous],
                [f"{n} {t}" for n, t in previous.items() if n not in layout],
                [
                    f"{n}: {previous[n]} -> {t}"
                    for n, t in layout.items()
                    if n in previous and previous[n] != t
                ],
            )
        )
        previous = layout
    return diffs


def _group_view(name: str, definition: FeatureGroup, versions: list[SchemaVersion]) -> GroupView:
    since = _first_versions(versions)
    cache = definition.cache
    cache_text = (
        f"cached {seconds(cache.ttl)}, absent rows {seconds(cache.negative_ttl)}"
        if cache.enabled
        else "not cached"
    )
    return GroupView(
        name,
        definition.entity,
        definition.description,
        seconds(definition.ttl),
        cache_text,
        version_diffs(versions),
        [_feature_row(name, f, since.get(f.name, 1)) for f in definition.features],
    )


def _feature_row(group: str, feature: Feature, since: int) -> FeatureRow:
    return FeatureRow(
        group,
        feature.name,
        str(feature.type),
        default_text(feature.type, feature.default),
        feature.description,
        since,
    )


def _first_versions(versions: list[SchemaVersion]) -> dict[str, int]:
    """Feature -> the version from which it has been in every layout up to the current."""
    since: dict[str, int] = {}
    for version in versions:
        names = {name for name, _ in version.features}
        since = {name: since.get(name, version.version) for name in names}
    return since
