"""Read definition files, validate them, and report every problem with file and line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from inferstack.core.definitions import Entity, FeatureGroup
from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import DefinitionError
from inferstack.core.interactiontypes import InteractionType
from inferstack.core.modelconfig import ModelConfig
from inferstack.core.registry import Registry
from inferstack.core.yamlsource import Location, YamlDocument, load_yaml

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Definitions:
    """Validated definitions from a set of files, remembering where each one came from."""

    entities: list[Entity] = field(default_factory=list)
    feature_groups: list[FeatureGroup] = field(default_factory=list)
    models: list[ModelConfig] = field(default_factory=list)
    interaction_types: list[InteractionType] = field(default_factory=list)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> file:line
    # Where each model config came from, so checks that need the whole registry (the graph,
    # the model files) can still name the file and line of the field that is wrong.
    model_sources: dict[str, ModelSource] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSource:
    document: YamlDocument
    index: int  # position in the file's `models` list

    def problem(self, location: Location, message: str) -> str:
        """`file:line: models.N.<location>: message` for a field of this model config."""
        full = ("models", self.index, *location)
        path = ".".join(str(part) for part in full)
        return self.document.problem(full, f"{path}: {message}")

    @property
    def directory(self) -> Path:
        return self.document.path.parent


def find_definition_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise DefinitionError([f"{path}: no such file or directory"])
    if not files:
        raise DefinitionError([f"{', '.join(map(str, paths))}: no .yaml or .yml files found"])
    return files


def load_definitions(paths: list[Path], registry: Registry | None = None) -> Definitions:
    """Load and validate; raise DefinitionError listing every problem found."""
    problems: list[str] = []
    result = Definitions()
    for path in find_definition_files(paths):
        try:
            document = load_yaml(path)
        except DefinitionError as exc:
            problems += exc.problems
            continue
        parsed = _parse(document, problems)
        if parsed is None:
            continue
        for index, entity in enumerate(parsed.entities):
            _add(result.entities, entity, "entity", document, ("entities", index), result, problems)
        for index, group in enumerate(parsed.feature_groups):
            location = ("feature_groups", index)
            _add(
                result.feature_groups, group, "feature group", document, location, result, problems
            )
        for index, kind in enumerate(parsed.interaction_types):
            location = ("interaction_types", index)
            _add(
                result.interaction_types, kind, "interaction type", document, location, result,
                problems,
            )  # fmt: skip
        for index, model in enumerate(parsed.models):
            if _add(result.models, model, "model", document, ("models", index), result, problems):
                result.model_sources[model.name] = ModelSource(document, index)
    problems += validate_against(result, registry or Registry())
    if problems:
        raise DefinitionError(problems)
    return result


def validate_against(definitions: Definitions, registry: Registry) -> list[str]:
    """Cross-checks that need all files and what is stored already."""
    problems: list[str] = []
    entities = {**registry.entities, **{e.name: e for e in definitions.entities}}
    for entity in definitions.entities:
        stored = registry.entities.get(entity.name)
        if stored is not None and stored.keys != entity.keys:
            where = definitions.origins[("entity", entity.name)]
            before = ", ".join(f"{k.name}:{k.type}" for k in stored.keys)
            problems.append(
                f"{where}: keys of entity '{entity.name}' cannot change (stored: {before}); "
                "define a new entity instead"
            )
    for group in definitions.feature_groups:
        where = definitions.origins[("feature group", group.name)]
        if group.entity not in entities:
            problems.append(
                f"{where}: feature group '{group.name}' refers to unknown entity '{group.entity}'"
            )
        stored_group = registry.feature_groups.get(group.name)
        if stored_group is None:
            continue
        if stored_group.definition.entity != group.entity:
            problems.append(
                f"{where}: feature group '{group.name}' cannot move from entity "
                f"'{stored_group.definition.entity}' to '{group.entity}'"
            )
        for feature in group.features:
            stored_feature = stored_group.definition.feature(feature.name)
            if stored_feature is not None and stored_feature.type != feature.type:
                problems.append(
                    f"{where}: feature '{group.name}.{feature.name}' cannot change type "
                    f"from {stored_feature.type} to {feature.type}; add it under a new name"
                )
    problems += _interaction_type_problems(definitions, registry)
    return problems


def _interaction_type_problems(definitions: Definitions, registry: Registry) -> list[str]:
    """Stored events must stay readable: keys and attribute types never change."""
    problems: list[str] = []
    for interaction in definitions.interaction_types:
        stored_type = registry.interaction_types.get(interaction.name)
        if stored_type is None:
            continue
        where = definitions.origins[("interaction type", interaction.name)]
        stored = stored_type.definition
        for role in ("user", "item"):
            if getattr(stored, role) != getattr(interaction, role):
                problems.append(
                    f"{where}: the {role} key of interaction type '{interaction.name}' cannot "
                    f"change (stored: {getattr(stored, role).name}:{getattr(stored, role).type}); "
                    "define a new type instead"
                )
        for attribute in interaction.attributes:
            old = next((a for a in stored.attributes if a.name == attribute.name), None)
            if old is not None and old.type != attribute.type:
                problems.append(
                    f"{where}: attribute '{interaction.name}.{attribute.name}' cannot change type "
                    f"from {old.type} to {attribute.type}; add it under a new name"
                )
    return problems


def _parse(document: YamlDocument, problems: list[str]) -> DefinitionsFile | None:
    if document.data is None:
        return DefinitionsFile()
    if not isinstance(document.data, dict):
        problems.append(
            document.problem(
                (), "expected a mapping of entities, feature_groups, models, interaction_types"
            )
        )
        return None
    try:
        return DefinitionsFile.model_validate(document.data)
    except ValidationError as exc:
        for error in exc.errors():
            location: Location = tuple(error["loc"])
            field_path = ".".join(str(part) for part in location) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(document.problem(location, f"{field_path}: {message}"))
        return None


def _add(
    items: list[Entity] | list[FeatureGroup] | list[ModelConfig] | list[InteractionType],
    item: Entity | FeatureGroup | ModelConfig | InteractionType,
    kind: str,
    document: YamlDocument,
    location: Location,
    result: Definitions,
    problems: list[str],
) -> bool:
    here = document.problem(location, "").removesuffix(": ")
    first = result.origins.get((kind, item.name))
    if first is not None:
        problems.append(f"{here}: {kind} '{item.name}' is already defined at {first}")
        return False
    result.origins[(kind, item.name)] = here
    items.append(item)  # type: ignore[arg-type]
    return True
