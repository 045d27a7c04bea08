"""Compile a model config into an execution plan: stages, key recipes, matrix layout, steps.

Nobody writes edges: a fetch depends on the fetches whose features its keys use; a model or
expression depends on whatever its inputs name. Compiling checks every reference against the
feature store's catalog (entity, key arity and type, feature exists, numeric where a model
needs numbers) and rejects cycles. The result is immutable and built once per registry
revision, off the request path; requests only follow it.

Longer than most modules (~680 lines) on purpose: the plan's node types and the compiler
passes that build them share one builder and read top to bottom as one algorithm; split,
each half would only make sense beside the other.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from inferstack.core.errors import InferstackError
from inferstack.core.modelconfig import ContextInput, Model, ModelConfig, Output
from inferstack.core.types import FeatureType
from inferstack.featurestore.catalog import Catalog
from inferstack.inferflow.expressions import Expression, ExpressionError, parse

Location = tuple[str | int, ...]
INTEGER_BASES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


class GraphError(InferstackError):
    """A model config that cannot be compiled; `location` is the field inside the config."""

    status = "INVALID_ARGUMENT"

    def __init__(self, location: Location, message: str) -> None:
        self.location = location
        self.message = message
        path = ".".join(str(part) for part in location)
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class FeatureRef:
    """One feature of one fetch: `fetch.feature`, read from `group.feature` of the entity."""

    fetch: str
    feature: str
    selector: str  # "group.feature", the column name the feature store returns
    group: str
    type: FeatureType

    @property
    def name(self) -> str:
        return f"{self.fetch}.{self.feature}"

    @property
    def width(self) -> int:
        return self.type.length or 1


@dataclass(frozen=True)
class KeyPart:
    """Where one key column of a fetch comes from."""

    key: str  # the entity's key column name
    source: Literal["context", "feature"]
    context: str | None = None  # the context input's name
    feature: FeatureRef | None = None
    per_row: bool = False


@dataclass(frozen=True)
class FetchNode:
    name: str
    entity: str
    keys: tuple[KeyPart, ...]
    features: Mapping[str, FeatureRef]  # every feature the plan uses, by feature name
    per_row: bool  # one lookup per candidate (de-duplicated) or one for the whole request
    stage: int
    depends: frozenset[str]

    @property
    def selectors(self) -> list[str]:
        return [ref.selector for ref in self.features.values()]


@dataclass(frozen=True)
class FeatureColumns:
    """Where a feature lands in the matrix: columns [start, start + width)."""

    ref: FeatureRef
    start: int


@dataclass(frozen=True)
class ModelStep:
    name: str
    definition: Model
    inputs: tuple[str, ...]
    columns: slice | npt.NDArray[np.intp]  # a slice hands the model a view of the matrix
    width: int
    outputs: tuple[tuple[Output, int], ...]  # each output and its matrix column

    @property
    def is_view(self) -> bool:
        return isinstance(self.columns, slice)


@dataclass(frozen=True)
class ExpressionStep:
    name: str
    expression: Expression
    inputs: Mapping[str, int]  # reference -> matrix column
    column: int


Step = ModelStep | ExpressionStep


@dataclass(frozen=True)
class Equals:
    """Where a per-candidate match value comes from: a context input or a fetched feature."""

    context: str | None = None
    feature: FeatureRef | None = None


@dataclass(frozen=True)
class RecentFeature:
    name: str
    aggregate: str  # count | recency
    match: str | None  # the event field compared
    equals: Equals | None


@dataclass(frozen=True)
class InteractionNode:
    """The user's recent events of one type, read after the fetches, summarised per row."""

    name: str
    type: str
    user: str  # the context input holding the user
    window: float | None  # seconds
    last: int
    features: tuple[RecentFeature, ...]

    @property
    def never(self) -> float:
        """Recency when nothing matched: the window, or a year without one."""
        return self.window if self.window is not None else 365 * 86_400.0


@dataclass(frozen=True)
class ExecutionPlan:
    model: str
    version: int
    definition: ModelConfig
    scalars: tuple[ContextInput, ...]
    candidates: ContextInput
    stages: tuple[tuple[FetchNode, ...], ...]
    fetches: Mapping[str, FetchNode]
    matrix_columns: tuple[str, ...]  # the name of every matrix column, for logs and explain
    feature_columns: tuple[FeatureColumns, ...]
    steps: tuple[Step, ...]
    outputs: Mapping[str, int]  # model outputs and expressions by name -> matrix column
    response_outputs: tuple[str, ...]
    response_features: tuple[FeatureRef, ...]
    available: Mapping[str, Mapping[str, FeatureRef]]  # what `return_features` may name
    interactions: tuple[InteractionNode, ...] = ()

    @property
    def width(self) -> int:
        return len(self.matrix_columns)

    @functools.cached_property
    def reported(self) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """(fetch, feature group, feature names) for every feature the matrix or the response
        uses: whose rows fell back to defaults is counted per group, reported per feature."""
        return group_refs(
            [*(placed.ref for placed in self.feature_columns), *self.response_features]
        )

    def feature(self, reference: str) -> FeatureRef | None:
        fetch, _, name = reference.partition(".")
        node = self.fetches.get(fetch)
        return node.features.get(name) if node is not None else None


@dataclass
class _Builder:
    config: ModelConfig
    catalog: Catalog
    context: dict[str, ContextInput] = field(default_factory=dict)
    fetch_index: dict[str, int] = field(default_factory=dict)
    # every feature each fetch offers (name -> (selector, group, type)), from its selectors
    offered: dict[str, dict[str, tuple[str, str, FeatureType]]] = field(default_factory=dict)
    used: dict[str, dict[str, FeatureRef]] = field(default_factory=dict)
    values: dict[str, Location] = field(default_factory=dict)  # model output/expression -> where
    interaction_names: set[str] = field(default_factory=set)
    model_locations: dict[str, Location] = field(default_factory=dict)


def compile_plan(config: ModelConfig, catalog: Catalog, version: int = 0) -> ExecutionPlan:
    """Compile or raise GraphError naming the field that is wrong."""
    builder = _Builder(config, catalog)
    builder.context = {c.name: c for c in config.context}
    _check_unique_names(config)
    _collect_fetches(builder)
    interaction_nodes = _collect_interactions(builder)
    fetch_nodes = _resolve_fetches(builder)
    order = _order_steps(builder)
    expressions = _parse_expressions(config)
    for name, expression in expressions.items():
        for reference in sorted(expression.references):
            _value_source(builder, reference, ("expressions", name))
    for index, model in enumerate(config.models):
        for position, reference in enumerate(model.inputs):
            _value_source(builder, reference, ("models", index, "inputs", position))
    response_features = tuple(
        _feature_ref(builder, reference, ("response", "features", i), numeric=False)
        for i, reference in enumerate(config.response.features)
    )
    for i, reference in enumerate(config.response.outputs):
        if reference not in builder.values:
            raise GraphError(
                ("response", "outputs", i),
                f"'{reference}' is not a model output or expression of this config",
            )
    # Features used by keys or returned must be fetched even when no model reads them.
    fetches = {
        name: FetchNode(
            node.name,
            node.entity,
            node.keys,
            dict(builder.used.get(name, {})),
            node.per_row,
            node.stage,
            node.depends,
        )
        for name, node in ((f.name, fetch_nodes[f.name]) for f in config.fetches)
    }
    layout = _Layout()
    steps: list[Step] = []
    for kind, name in order:
        if kind == "model":
            index = next(i for i, m in enumerate(config.models) if m.name == name)
            steps.append(_model_step(builder, layout, index))
        else:
            steps.append(_expression_step(builder, layout, name, expressions[name]))
    stage_count = 1 + max((node.stage for node in fetches.values()), default=-1)
    stages = tuple(
        tuple(node for node in fetches.values() if node.stage == stage)
        for stage in range(stage_count)
    )
    return ExecutionPlan(
        model=config.name,
        version=version,
        definition=config,
        scalars=tuple(c for c in config.context if not c.candidates),
        candidates=config.candidates,
        stages=stages,
        fetches=fetches,
        matrix_columns=tuple(layout.names),
        feature_columns=tuple(layout.features.values()),
        steps=tuple(steps),
        outputs=dict(layout.produced),
        response_outputs=tuple(config.response.outputs),
        response_features=response_features,
        available={
            fetch: {
                name: FeatureRef(fetch, name, selector, group, feature_type)
                for name, (selector, group, feature_type) in offered.items()
            }
            for fetch, offered in builder.offered.items()
        },
        interactions=tuple(interaction_nodes),
    )


def _collect_interactions(builder: _Builder) -> list[InteractionNode]:
    """Offer each interaction fetch's features like a fetch's (`recent.clicked`); the values
    they are matched against come from the context or from fetched features."""
    kinds = builder.catalog.registry.interaction_types
    nodes: list[InteractionNode] = []
    for index, fetch in enumerate(builder.config.interactions):
        where: Location = ("interactions", index)
        if fetch.name in builder.offered or fetch.name == "context":
            raise GraphError((*where, "name"), f"'{fetch.name}' is already a fetch name")
        stored = kinds.get(fetch.type)
        if stored is None:
            known = ", ".join(sorted(kinds)) or "none defined"
            raise GraphError((*where, "type"), f"unknown interaction type '{fetch.type}' ({known})")
        kind = stored.definition
        head, _, user = fetch.user.partition(".")
        context = builder.context.get(user) if head == "context" else None
        if context is None or context.candidates:
            raise GraphError(
                (*where, "user"), f"'{fetch.user}' must be a single context input (the user)"
            )
        _check_key_type(
            (*where, "user"), fetch.user, context.type, kind.user.type, kind.name, "user"
        )
        fields = {kind.item.name: kind.item.type, **{a.name: a.type for a in kind.attributes}}
        offered: dict[str, tuple[str, str, FeatureType]] = {}
        features: list[RecentFeature] = []
        for position, feature in enumerate(fetch.features):
            at: Location = (*where, "features", position)
            if feature.name in offered:
                raise GraphError(at, f"'{feature.name}' is listed twice")
            equals = None
            if feature.match is not None and feature.equals is not None:
                field_type = fields.get(feature.match)
                if field_type is None:
                    raise GraphError(
                        (*at, "match"),
                        f"interaction type '{kind.name}' has no field '{feature.match}' "
                        f"(fields: {', '.join(fields)})",
                    )
                equals = _equals(builder, feature.equals, (*at, "equals"), field_type)
            offered[feature.name] = (
                f"{fetch.name}.{feature.name}",
                fetch.name,
                FeatureType("float32"),
            )
            features.append(RecentFeature(feature.name, feature.aggregate, feature.match, equals))
        builder.offered[fetch.name] = offered
        builder.used[fetch.name] = {}
        builder.interaction_names.add(fetch.name)
        nodes.append(
            InteractionNode(fetch.name, fetch.type, user, fetch.window, fetch.last, tuple(features))
        )
    return nodes


def _equals(builder: _Builder, reference: str, where: Location, field: FeatureType) -> Equals:
    head, _, name = reference.partition(".")
    if head == "context":
        context = builder.context.get(name)
        if context is None:
            raise GraphError(where, f"no context input named '{name}'")
        _check_same_kind(where, reference, context.type, field)
        return Equals(context=name)
    if head in builder.interaction_names:
        raise GraphError(where, f"'{reference}' is an interaction feature; compare a fetched one")
    ref = _feature_ref(builder, reference, where, numeric=False)
    _check_same_kind(where, reference, ref.type, field)
    return Equals(feature=ref)


def _check_same_kind(
    where: Location, reference: str, given: FeatureType, field: FeatureType
) -> None:
    def kind(t: FeatureType) -> str:
        return "text" if t.is_variable else "integer" if t.base in INTEGER_BASES else t.base

    if given.length or kind(given) != kind(field):
        raise GraphError(where, f"'{reference}' is {given}; the event field is {field}")


def group_refs(refs: list[FeatureRef]) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    groups: dict[tuple[str, str], dict[str, None]] = {}
    for ref in refs:
        groups.setdefault((ref.fetch, ref.group), {})[ref.name] = None
    return tuple((fetch, group, tuple(names)) for (fetch, group), names in groups.items())


def _check_unique_names(config: ModelConfig) -> None:
    seen: dict[str, Location] = {}
    for index, fetch in enumerate(config.fetches):
        if fetch.name == "context":
            raise GraphError(("fetches", index, "name"), "'context' is reserved for inputs")
        if fetch.name in seen:
            raise GraphError(("fetches", index, "name"), f"fetch '{fetch.name}' is listed twice")
        seen[fetch.name] = ("fetches", index)
    produced: dict[str, Location] = {}
    for index, model in enumerate(config.models):
        if model.name in {m.name for m in config.models[:index]}:
            raise GraphError(("models", index, "name"), f"model '{model.name}' is listed twice")
        for position, output in enumerate(model.output_specs):
            where: Location = ("models", index, "outputs", position)
            if output.name in produced:
                raise GraphError(where, f"'{output.name}' is already an output of another model")
            produced[output.name] = where
    for name in config.expressions:
        if name in produced:
            raise GraphError(("expressions", name), f"'{name}' is already a model output")


def _collect_fetches(builder: _Builder) -> None:
    catalog = builder.catalog
    for index, fetch in enumerate(builder.config.fetches):
        where: Location = ("fetches", index)
        if fetch.entity not in catalog.entities:
            raise GraphError((*where, "entity"), f"unknown entity '{fetch.entity}'")
        try:
            selections = catalog.select(fetch.entity, fetch.features)
        except InferstackError as exc:
            raise GraphError((*where, "features"), str(exc)) from exc
        offered: dict[str, tuple[str, str, FeatureType]] = {}
        for selection in selections:
            codec = catalog.codecs[selection.group]
            for feature in selection.features:
                if feature in offered and offered[feature][1] != selection.group:
                    raise GraphError(
                        (*where, "features"),
                        f"feature name '{feature}' comes from both '{offered[feature][1]}' and "
                        f"'{selection.group}'; fetch them in two fetches so each has one meaning",
                    )
                offered[feature] = (
                    f"{selection.group}.{feature}",
                    selection.group,
                    codec.types[feature],
                )
        builder.fetch_index[fetch.name] = index
        builder.offered[fetch.name] = offered
        builder.used[fetch.name] = {}


def _feature_ref(
    builder: _Builder, reference: str, where: Location, *, numeric: bool
) -> FeatureRef:
    fetch, _, name = reference.partition(".")
    offered = builder.offered.get(fetch)
    if offered is None or not name or "." in name:
        raise GraphError(where, f"'{reference}' is not a fetched feature (use fetch.feature)")
    found = offered.get(name)
    if found is None:
        raise GraphError(where, f"fetch '{fetch}' has no feature '{name}' among its features")
    selector, group, feature_type = found
    if numeric and feature_type.is_variable:
        raise GraphError(
            where, f"'{reference}' is {feature_type}; models and expressions take numbers"
        )
    ref = FeatureRef(fetch, name, selector, group, feature_type)
    builder.used[fetch].setdefault(name, ref)
    return ref


def _resolve_fetches(builder: _Builder) -> dict[str, FetchNode]:
    """Key recipes, per-row-ness and stages; a key that needs a fetch makes a dependency."""
    config = builder.config
    recipes: dict[str, list[KeyPart]] = {}
    depends: dict[str, set[str]] = {}
    for index, fetch in enumerate(config.fetches):
        entity = builder.catalog.entities[fetch.entity]
        if len(fetch.keys) != len(entity.keys):
            raise GraphError(
                ("fetches", index, "keys"),
                f"entity '{entity.name}' has {len(entity.keys)} key(s) "
                f"({', '.join(entity.key_names)}); {len(fetch.keys)} given",
            )
        parts: list[KeyPart] = []
        depends[fetch.name] = set()
        for position, (reference, key) in enumerate(zip(fetch.keys, entity.keys, strict=True)):
            where: Location = ("fetches", index, "keys", position)
            head, _, rest = reference.partition(".")
            if head == "context":
                context = builder.context.get(rest)
                if context is None:
                    raise GraphError(where, f"no context input named '{rest}'")
                _check_key_type(where, reference, context.type, key.type, entity.name, key.name)
                parts.append(KeyPart(key.name, "context", context=rest, per_row=context.candidates))
                continue
            if head not in builder.offered:
                raise GraphError(
                    where,
                    f"'{reference}' is neither context.<input> nor <fetch>.<feature>",
                )
            if head == fetch.name:
                raise GraphError(where, f"fetch '{fetch.name}' cannot key itself: a cycle")
            if head in builder.interaction_names:
                raise GraphError(where, f"'{reference}' is an interaction feature, not a key")
            ref = _feature_ref(builder, reference, where, numeric=False)
            _check_key_type(where, reference, ref.type, key.type, entity.name, key.name)
            parts.append(KeyPart(key.name, "feature", feature=ref))
            depends[fetch.name].add(head)
        recipes[fetch.name] = parts

    _reject_cycles({name: sorted(deps) for name, deps in depends.items()}, "fetches", builder)
    nodes: dict[str, FetchNode] = {}

    def resolve(name: str) -> FetchNode:
        if name in nodes:
            return nodes[name]
        stage = 0
        per_row = False
        parts = []
        for part in recipes[name]:
            if part.feature is not None:
                parent = resolve(part.feature.fetch)
                stage = max(stage, parent.stage + 1)
                part = KeyPart(part.key, "feature", feature=part.feature, per_row=parent.per_row)
            per_row |= part.per_row
            parts.append(part)
        fetch = config.fetches[builder.fetch_index[name]]
        node = FetchNode(
            name, fetch.entity, tuple(parts), {}, per_row, stage, frozenset(depends[name])
        )
        nodes[name] = node
        return node

    for fetch in config.fetches:
        resolve(fetch.name)
    return nodes


def _check_key_type(
    where: Location, reference: str, given: FeatureType, key: FeatureType, entity: str, name: str
) -> None:
    if given.length:
        raise GraphError(where, f"'{reference}' is a vector ({given}); a key must be a scalar")
    if key.base == "string" and given.base != "string":
        raise GraphError(where, f"key '{entity}.{name}' is a string; '{reference}' is {given}")
    if key.base != "string" and given.base not in INTEGER_BASES:
        raise GraphError(where, f"key '{entity}.{name}' is {key}; '{reference}' is {given}")


def _reject_cycles(edges: Mapping[str, list[str]], section: str, builder: _Builder) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in edges.get(name, []):
            if state.get(child) == 1:
                cycle = [*path[path.index(child) :], child] if child in path else [name, child]
                where = _location_of(builder, section, name)
                raise GraphError(where, f"cycle: {' -> '.join(cycle)}")
            if child not in state:
                visit(child, [*path, child])
        state[name] = 2

    for name in edges:
        if name not in state:
            visit(name, [name])


def _location_of(builder: _Builder, section: str, name: str) -> Location:
    if section == "fetches":
        return ("fetches", builder.fetch_index[name])
    if name.startswith("="):
        return ("expressions", name[1:])
    return builder.model_locations[name]


def _parse_expressions(config: ModelConfig) -> dict[str, Expression]:
    parsed = {}
    for name, text in config.expressions.items():
        try:
            parsed[name] = parse(text)
        except ExpressionError as exc:
            raise GraphError(("expressions", name), str(exc)) from exc
    return parsed


def _order_steps(builder: _Builder) -> list[tuple[str, str]]:
    """Models and expressions in an order where each runs after everything it reads."""
    config = builder.config
    owner: dict[str, str] = {}  # produced value -> producing node
    nodes: dict[str, tuple[str, list[str]]] = {}  # node -> (kind, references)
    for index, model in enumerate(config.models):
        builder.model_locations[model.name] = ("models", index)
        for position, output in enumerate(model.output_specs):
            owner[output.name] = model.name
            builder.values[output.name] = ("models", index, "outputs", position)
        nodes[model.name] = ("model", list(model.inputs))
    for name, expression in _parse_expressions(config).items():
        node = f"={name}"  # a model and an expression may share a name; their nodes may not
        owner[name] = node
        builder.values[name] = ("expressions", name)
        nodes[node] = ("expression", sorted(expression.references))
    edges = {
        node: [owner[ref] for ref in references if ref in owner]
        for node, (_, references) in nodes.items()
    }
    _reject_cycles(edges, "models", builder)
    order: list[tuple[str, str]] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        done.add(node)
        for child in edges[node]:
            visit(child)
        kind, _ = nodes[node]
        order.append((kind, node.removeprefix("=")))

    for node in nodes:
        visit(node)
    return order


def _value_source(builder: _Builder, reference: str, where: Location) -> None:
    """Check what a model input or expression reference reads: a feature or a produced value."""
    if "." not in reference:
        if reference in builder.values:
            return
        if reference in builder.model_locations:
            outputs = ", ".join(_outputs_of(builder.config, reference))
            raise GraphError(
                where, f"'{reference}' is a model; name one of its outputs ({outputs})"
            )
        raise GraphError(where, f"'{reference}' is not a model output or expression")
    if reference.startswith("context."):
        raise GraphError(
            where, f"'{reference}': context inputs are keys; feed models fetched features"
        )
    _feature_ref(builder, reference, where, numeric=True)


def _outputs_of(config: ModelConfig, model: str) -> list[str]:
    return [o.name for m in config.models if m.name == model for o in m.output_specs]


class _Layout:
    """Matrix columns, placed so each model's inputs are contiguous where that is possible."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.features: dict[str, FeatureColumns] = {}
        self.produced: dict[str, int] = {}

    def place_feature(self, ref: FeatureRef) -> range:
        placed = self.features.get(ref.name)
        if placed is None:
            placed = FeatureColumns(ref, len(self.names))
            self.features[ref.name] = placed
            if ref.type.length:
                self.names += [f"{ref.name}[{i}]" for i in range(ref.type.length)]
            else:
                self.names.append(ref.name)
        return range(placed.start, placed.start + ref.width)

    def place_value(self, name: str) -> int:
        if name not in self.produced:
            self.produced[name] = len(self.names)
            self.names.append(name)
        return self.produced[name]

    def columns_of(self, builder: _Builder, reference: str) -> range:
        if "." in reference:
            fetch, _, feature = reference.partition(".")
            return self.place_feature(builder.used[fetch][feature])
        column = self.place_value(reference)
        return range(column, column + 1)


def _model_step(builder: _Builder, layout: _Layout, index: int) -> ModelStep:
    model = builder.config.models[index]
    indices: list[int] = []
    for reference in model.inputs:
        indices += list(layout.columns_of(builder, reference))
    contiguous = all(b == a + 1 for a, b in itertools.pairwise(indices))
    columns: slice | npt.NDArray[np.intp] = (
        slice(indices[0], indices[-1] + 1) if contiguous else np.asarray(indices, dtype=np.intp)
    )
    outputs = tuple((spec, layout.place_value(spec.name)) for spec in model.output_specs)
    return ModelStep(model.name, model, tuple(model.inputs), columns, len(indices), outputs)


def _expression_step(
    builder: _Builder, layout: _Layout, name: str, expression: Expression
) -> ExpressionStep:
    inputs: dict[str, int] = {}
    for reference in sorted(expression.references):
        if "." in reference:
            fetch, _, feature = reference.partition(".")
            ref = builder.used[fetch][feature]
            if ref.type.length:
                raise GraphError(
                    ("expressions", name), f"'{reference}' is a vector; expressions take scalars"
                )
            inputs[reference] = layout.place_feature(ref).start
        else:
            inputs[reference] = layout.place_value(reference)
    return ExpressionStep(name, expression, inputs, layout.place_value(name))
