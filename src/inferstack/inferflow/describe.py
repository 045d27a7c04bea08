"""A compiled plan described for people: as text, as a JSON-ready dict, as a Graphviz graph.

Used by `inferstack models show` (and anything else that wants to draw a model's graph).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inferstack.core.modelconfig import Model
from inferstack.inferflow.graph import (
    ExecutionPlan,
    FetchNode,
    KeyPart,
    ModelStep,
    RecentFeature,
)


def key_recipe(node: FetchNode) -> str:
    """e.g. "user_id <- context.user_id, category_id <- product.category_id (per row, ...)"."""
    parts = ", ".join(f"{part.key} <- {key_source(part)}" for part in node.keys)
    return f"{parts} ({'per row, de-duplicated' if node.per_row else 'once per request'})"


def key_source(part: KeyPart) -> str:
    if part.context is not None:
        return f"context.{part.context}"
    assert part.feature is not None
    return part.feature.name


def runtime_of(model: Model) -> str:
    if model.runtime == "onnx":
        artifact = f" (sha256 {model.artifact[:12]})" if model.artifact else ""
        return f"onnx {model.path or 'artifact'}{artifact}"
    endpoints = ", ".join(
        f"{e.address}" + (f" x{e.weight:g}" if len(model.endpoints) > 1 else "")
        for e in model.endpoints
    )
    return f"kserve {endpoints}"


def matrix_input(step: ModelStep) -> str:
    """How the model gets its columns: a view needs contiguous columns and float32."""
    if step.is_view and step.definition.dtype == "float32":
        assert isinstance(step.columns, slice)
        return f"view of matrix columns {step.columns.start}-{step.columns.stop - 1}"
    if step.is_view:
        return "float64 copy (the model takes float64)"
    return "copy (its columns are not contiguous in the matrix)"


def describe(plan: ExecutionPlan) -> dict[str, Any]:
    """The resolved graph as plain data: what --json prints and the text is made from."""
    steps: list[dict[str, Any]] = []
    for step in plan.steps:
        if isinstance(step, ModelStep):
            model = step.definition
            steps.append(
                {
                    "kind": "model",
                    "name": step.name,
                    "runtime": runtime_of(model),
                    "inputs": list(step.inputs),
                    "width": step.width,
                    "matrix": matrix_input(step),
                    "max_rows": model.max_rows,
                    "timeout": model.timeout,
                    "outputs": {spec.name: column for spec, column in step.outputs},
                }
            )
        else:
            steps.append(
                {
                    "kind": "expression",
                    "name": step.name,
                    "expression": step.expression.text,
                    "column": step.column,
                }
            )
    return {
        "model": plan.model,
        "version": plan.version,
        "description": plan.definition.description,
        "context": [
            {
                "name": c.name,
                "type": str(c.type),
                "candidates": c.candidates,
                **({"max_rows": c.max_rows} if c.candidates else {}),
            }
            for c in plan.definition.context
        ],
        "stages": [
            [
                {
                    "fetch": node.name,
                    "entity": node.entity,
                    "keys": key_recipe(node),
                    "per_row": node.per_row,
                    "after": sorted(node.depends),
                    "features": node.selectors,
                }
                for node in stage
            ]
            for stage in plan.stages
        ],
        "interactions": [
            {
                "name": node.name,
                "type": node.type,
                "user": f"context.{node.user}",
                "window": node.window,
                "last": node.last,
                "features": {f.name: recent_recipe(f) for f in node.features},
            }
            for node in plan.interactions
        ],
        "matrix_columns": plan.width,
        "steps": steps,
        "response": {
            "outputs": list(plan.response_outputs),
            "features": [ref.name for ref in plan.response_features],
        },
    }


def recent_recipe(feature: RecentFeature) -> str:
    if feature.match is None or feature.equals is None:
        return f"{feature.aggregate} of all events"
    equals = feature.equals
    source = (
        f"context.{equals.context}"
        if equals.context
        else (equals.feature.name if equals.feature else "?")
    )
    return f"{feature.aggregate} of events whose {feature.match} = {source} (per candidate)"


def plan_text(plan: ExecutionPlan) -> str:
    graph = describe(plan)
    lines = [f"{plan.model} v{plan.version}" + (f": {d}" if (d := graph["description"]) else "")]
    lines.append("context")
    for c in graph["context"]:
        role = f"candidates (one row each, at most {c['max_rows']})" if c["candidates"] else ""
        lines.append(f"  {c['name']}: {c['type']}" + (f"  {role}" if role else "  per request"))
    for number, stage in enumerate(graph["stages"], start=1):
        together = f", {len(stage)} fetches concurrently" if len(stage) > 1 else ""
        lines.append(f"stage {number}{together}")
        for fetch in stage:
            lines.append(f"  fetch {fetch['fetch']}: entity {fetch['entity']}")
            lines.append(f"    keys: {fetch['keys']}")
            lines.append(f"    features: {', '.join(fetch['features']) or '-'}")
    for recent in graph["interactions"]:
        window = f", last {recent['window']:g}s" if recent["window"] is not None else ""
        lines.append(
            f"interactions {recent['name']}: newest {recent['last']} {recent['type']} events of "
            f"{recent['user']}{window}, after the fetches"
        )
        for name, recipe in recent["features"].items():
            lines.append(f"    {name} = {recipe}")
    lines.append(f"matrix: {graph['matrix_columns']} float32 columns, one row per candidate")
    lines.append("steps, in order")
    for number, step in enumerate(graph["steps"], start=1):
        if step["kind"] == "model":
            outputs = ", ".join(f"{name} -> column {col}" for name, col in step["outputs"].items())
            lines.append(f"  {number}. model {step['name']}: {step['runtime']}")
            lines.append(f"     input: {step['width']} columns, {step['matrix']}")
            lines.append(f"     inputs: {', '.join(step['inputs'])}")
            lines.append(f"     outputs: {outputs}")
        else:
            lines.append(
                f"  {number}. expression {step['name']} = {step['expression']}"
                f" -> column {step['column']}"
            )
    lines.append("response")
    lines.append(f"  outputs: {', '.join(graph['response']['outputs'])}")
    lines.append(f"  features: {', '.join(graph['response']['features']) or '-'}")
    return "\n".join(lines)


@dataclass(frozen=True)
class GraphNode:
    """One box of a plan's graph; `id` is "<kind>:<name>" ("response" for the response)."""

    id: str
    kind: str  # context | fetch | interactions | model | expression | response
    name: str
    lines: tuple[str, ...]  # what the box says, first line first


@dataclass
class GraphEdge:
    """`source` feeds `target`: `labels` say what, `recipes` say it in full (for key edges,
    where the key's value comes from: "product.category_id -> category_id")."""

    source: str
    target: str
    labels: list[str] = field(default_factory=list)
    recipes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        many = f"{len(self.labels)} {'features' if self.source.startswith('fetch:') else 'values'}"
        return ", ".join(self.labels) if len(self.labels) <= 3 else many


@dataclass
class PlanGraph:
    """Context inputs, fetches, interactions, models, expressions and the response, with an
    edge wherever one of them references another; drawn by `plan_dot` and the console."""

    nodes: list[GraphNode]
    edges: list[GraphEdge]


def plan_graph(plan: ExecutionPlan) -> PlanGraph:
    producer: dict[str, str] = {}  # model output or expression -> node id
    for step in plan.steps:
        if isinstance(step, ModelStep):
            for spec, _ in step.outputs:
                producer[spec.name] = f"model:{step.name}"
        else:
            producer[step.name] = f"expression:{step.name}"
    recent = {node.name for node in plan.interactions}
    edges: dict[tuple[str, str], GraphEdge] = {}

    def edge(source: str, target: str, label: str, recipe: str) -> None:
        found = edges.setdefault((source, target), GraphEdge(source, target))
        if label not in found.labels:
            found.labels.append(label)
            found.recipes.append(recipe)

    def fetched(name: str) -> str:
        return f"interactions:{name}" if name in recent else f"fetch:{name}"

    def reference(name: str, target: str) -> None:
        if "." in name:
            edge(fetched(name.partition(".")[0]), target, name.partition(".")[2], name)
        else:
            edge(producer[name], target, name, name)

    nodes = [
        GraphNode(f"context:{c.name}", "context", c.name, (f"context.{c.name}", str(c.type)))
        for c in plan.definition.context
    ]
    for node in plan.fetches.values():
        mode = "per row" if node.per_row else "per request"
        lines: tuple[str, ...] = (
            f"fetch {node.name}",
            f"entity {node.entity}",
            f"stage {node.stage + 1}, {mode}",
        )
        nodes.append(GraphNode(f"fetch:{node.name}", "fetch", node.name, lines))
        for part in node.keys:
            source = f"context:{part.context}" if part.context else f"fetch:{_fetch_of(part)}"
            edge(
                source, f"fetch:{node.name}", f"key {part.key}", f"{key_source(part)} -> {part.key}"
            )
    for recent_node in plan.interactions:
        target = f"interactions:{recent_node.name}"
        lines = (f"interactions {recent_node.name}", f"{recent_node.type} events")
        nodes.append(GraphNode(target, "interactions", recent_node.name, lines))
        edge(f"context:{recent_node.user}", target, "user", f"context.{recent_node.user}")
        for feature in recent_node.features:
            equals = feature.equals
            if equals is not None and equals.context is not None:
                edge(
                    f"context:{equals.context}",
                    target,
                    f"match {feature.match}",
                    f"context.{equals.context} = {feature.match}",
                )
            elif equals is not None and equals.feature is not None:
                edge(
                    f"fetch:{equals.feature.fetch}",
                    target,
                    f"match {feature.match}",
                    f"{equals.feature.name} = {feature.match}",
                )
    for step in plan.steps:
        if isinstance(step, ModelStep):
            target = f"model:{step.name}"
            view = "view" if step.is_view else "copy"
            lines = (f"model {step.name}", f"{step.width} inputs, {view}")
            nodes.append(GraphNode(target, "model", step.name, lines))
            for name in step.inputs:
                reference(name, target)
        else:
            target = f"expression:{step.name}"
            lines = (f"{step.name} = {step.expression.text}",)
            nodes.append(GraphNode(target, "expression", step.name, lines))
            for name in sorted(step.inputs):
                reference(name, target)
    nodes.append(GraphNode("response", "response", "response", ("response",)))
    for name in plan.response_outputs:
        reference(name, "response")
    for ref in plan.response_features:
        reference(ref.name, "response")
    return PlanGraph(nodes, list(edges.values()))


SHAPES = {
    "context": "ellipse",
    "fetch": "box",
    "interactions": "box",
    "model": "component",
    "expression": "note",
    "response": "doubleoctagon",
}


def plan_dot(plan: ExecutionPlan) -> str:
    """The plan's graph for Graphviz."""
    graph = plan_graph(plan)
    lines = [f'digraph "{plan.model}" {{', "  rankdir=LR;"]
    for node in graph.nodes:
        label = "\\n".join(_escape(line) for line in node.lines)
        lines.append(f'  "{node.id}" [shape={SHAPES[node.kind]}, label="{label}"];')
    for edge in graph.edges:
        lines.append(f'  "{edge.source}" -> "{edge.target}" [label="{_escape(edge.label)}"];')
    lines.append("}")
    return "\n".join(lines)


def _fetch_of(part: KeyPart) -> str:
    assert part.feature is not None
    return part.feature.fetch


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
