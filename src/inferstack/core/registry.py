"""The registry: every applied definition plus the schema versions of each feature group.

Rows are written under a schema version and must stay readable after features are added
or removed, so the registry keeps the layout of every version ever applied. A registry is
immutable once built; `plan` makes the next one and says what changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from inferstack.core.definitions import Entity, FeatureGroup
from inferstack.core.interactiontypes import InteractionType
from inferstack.core.modelconfig import ModelConfig

MAX_SCHEMA_VERSION = 65_535  # stored as uint16 in each row header


class SchemaVersion(BaseModel):
    """The layout of rows written under one version: feature names and types in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    features: list[tuple[str, str]]


class StoredFeatureGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    definition: FeatureGroup
    versions: list[SchemaVersion]

    @property
    def current(self) -> SchemaVersion:
        return self.versions[-1]


class StoredModel(BaseModel):
    """A model config and its version: every change to the config makes a new version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    definition: ModelConfig
    version: int


class StoredInteractionType(BaseModel):
    """An interaction type and the layout of every version of its events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    definition: InteractionType
    versions: list[SchemaVersion]

    def as_stored_group(self) -> StoredFeatureGroup:
        """Events encode and decode exactly like feature rows of this layout."""
        return StoredFeatureGroup(
            definition=self.definition.as_feature_group(), versions=self.versions
        )


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: int = 0
    entities: dict[str, Entity] = {}
    feature_groups: dict[str, StoredFeatureGroup] = {}
    models: dict[str, StoredModel] = {}
    interaction_types: dict[str, StoredInteractionType] = {}


@dataclass
class Change:
    action: str  # "create" | "update" | "delete"
    kind: str  # "entity" | "feature group" | "model" | "interaction type"
    name: str
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        text = f"{sign} {self.kind} {self.name}"
        return f"{text} ({'; '.join(self.details)})" if self.details else text


@dataclass
class Plan:
    registry: Registry
    changes: list[Change]

    @property
    def empty(self) -> bool:
        return not self.changes


def layout_of(group: FeatureGroup) -> list[tuple[str, str]]:
    return [(f.name, str(f.type)) for f in group.features]


def plan(
    current: Registry,
    entities: list[Entity],
    groups: list[FeatureGroup],
    models: Sequence[ModelConfig] = (),
    interaction_types: Sequence[InteractionType] = (),
    *,
    prune: bool = False,
) -> Plan:
    """Compute the registry after applying these definitions on top of `current`.

    Raises ValueError-free: callers validate first (see `loading.validate_against`).
    Without `prune`, definitions missing from the input are kept.
    """
    changes: list[Change] = []
    new_entities = dict(current.entities) if not prune else {}
    for entity in entities:
        old = current.entities.get(entity.name)
        if old is None:
            changes.append(Change("create", "entity", entity.name))
        elif old != entity:
            changes.append(Change("update", "entity", entity.name, ["description"]))
        new_entities[entity.name] = entity

    new_groups = dict(current.feature_groups) if not prune else {}
    for group in groups:
        stored = current.feature_groups.get(group.name)
        if stored is None:
            version = SchemaVersion(version=1, features=layout_of(group))
            new_groups[group.name] = StoredFeatureGroup(definition=group, versions=[version])
            changes.append(Change("create", "feature group", group.name, ["schema v1"]))
            continue
        details = _group_differences(stored.definition, group)
        versions = list(stored.versions)
        if layout_of(group) != stored.current.features:
            number = stored.current.version + 1
            versions.append(SchemaVersion(version=number, features=layout_of(group)))
            details.insert(0, f"schema v{stored.current.version} -> v{number}")
        new_groups[group.name] = StoredFeatureGroup(definition=group, versions=versions)
        if details:
            changes.append(Change("update", "feature group", group.name, details))

    new_models = dict(current.models) if not prune else {}
    for model in models:
        stored_model = current.models.get(model.name)
        if stored_model is None:
            new_models[model.name] = StoredModel(definition=model, version=1)
            changes.append(Change("create", "model", model.name, ["v1"]))
        elif stored_model.definition != model:
            number = stored_model.version + 1
            new_models[model.name] = StoredModel(definition=model, version=number)
            details = [
                f"v{stored_model.version} -> v{number}",
                *_model_differences(stored_model.definition, model),
            ]
            changes.append(Change("update", "model", model.name, details))
        else:
            new_models[model.name] = stored_model

    new_types = dict(current.interaction_types) if not prune else {}
    for kind in interaction_types:
        stored_type = current.interaction_types.get(kind.name)
        layout = layout_of(kind.as_feature_group())
        if stored_type is None:
            version = SchemaVersion(version=1, features=layout)
            new_types[kind.name] = StoredInteractionType(definition=kind, versions=[version])
            changes.append(Change("create", "interaction type", kind.name, ["schema v1"]))
            continue
        type_versions = list(stored_type.versions)
        type_details: list[str] = []
        if layout != stored_type.versions[-1].features:
            number = stored_type.versions[-1].version + 1
            type_versions.append(SchemaVersion(version=number, features=layout))
            type_details.append(f"schema v{number - 1} -> v{number}")
        for attribute in ("hot_cap", "retention", "inactivity", "description"):
            if getattr(stored_type.definition, attribute) != getattr(kind, attribute):
                type_details.append(f"{attribute} changed")
        new_types[kind.name] = StoredInteractionType(definition=kind, versions=type_versions)
        if type_details:
            changes.append(Change("update", "interaction type", kind.name, type_details))

    if prune:
        changes += [
            Change("delete", "interaction type", name)
            for name in current.interaction_types
            if name not in new_types
        ]
        changes += [
            Change("delete", "model", name) for name in current.models if name not in new_models
        ]
        changes += [
            Change("delete", "feature group", name)
            for name in current.feature_groups
            if name not in new_groups
        ]
        changes += [
            Change("delete", "entity", name)
            for name in current.entities
            if name not in new_entities
        ]
    if not changes:
        return Plan(current, [])
    registry = Registry(
        revision=current.revision + 1,
        entities=new_entities,
        feature_groups=new_groups,
        models=new_models,
        interaction_types=new_types,
    )
    return Plan(registry, changes)


def _group_differences(old: FeatureGroup, new: FeatureGroup) -> list[str]:
    details: list[str] = []
    old_features = {f.name: f for f in old.features}
    new_features = {f.name: f for f in new.features}
    details += [f"+feature {name}" for name in new_features if name not in old_features]
    details += [f"-feature {name}" for name in old_features if name not in new_features]
    for name, feature in new_features.items():
        before = old_features.get(name)
        if before is not None and before.default != feature.default:
            details.append(f"feature {name} default {before.default!r} -> {feature.default!r}")
    if [f.name for f in old.features if f.name in new_features] != [
        f.name for f in new.features if f.name in old_features
    ]:
        details.append("features reordered")
    for attribute in ("ttl", "cache", "description"):
        if getattr(old, attribute) != getattr(new, attribute):
            details.append(f"{attribute} changed")
    return details


def _model_differences(old: ModelConfig, new: ModelConfig) -> list[str]:
    """What changed in a model config, by section; model steps by name."""
    details: list[str] = []
    old_steps = {m.name: m for m in old.models}
    new_steps = {m.name: m for m in new.models}
    details += [f"+model {name}" for name in new_steps if name not in old_steps]
    details += [f"-model {name}" for name in old_steps if name not in new_steps]
    for name, step in new_steps.items():
        before = old_steps.get(name)
        if before is None or before == step:
            continue
        if before.artifact != step.artifact:
            details.append(f"model {name}: new file")
        if before.model_copy(update={"artifact": step.artifact, "path": step.path}) != step:
            details.append(f"model {name} changed")
    for section in ("context", "fetches", "expressions", "response", "logging", "description"):
        if getattr(old, section) != getattr(new, section):
            details.append(f"{section} changed")
    return details
