"""What the Models page says about each node when it is clicked: taken from `describe`
(the same data `inferstack models show --json` prints) plus each fetched feature's type,
default and description from the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inferstack.console.values import default_text, seconds
from inferstack.featurestore.catalog import Catalog


@dataclass(frozen=True)
class NodeDetail:
    title: str
    facts: list[tuple[str, str]]
    features: list[tuple[str, str, str, str]] = field(default_factory=list)
    # name, type, default, description (fetches only)


def node_details(described: dict[str, Any], catalog: Catalog) -> dict[str, NodeDetail]:
    """Node id ("fetch:user", "model:pctr", "response"...) -> what to show for it."""
    details: dict[str, NodeDetail] = {}
    for context in described["context"]:
        role = (
            f"the candidates: one row each, at most {context['max_rows']}"
            if context["candidates"]
            else "one value per request"
        )
        details[f"context:{context['name']}"] = NodeDetail(
            f"context input {context['name']}", [("type", context["type"]), ("role", role)]
        )
    for number, stage in enumerate(described["stages"], start=1):
        for fetch in stage:
            details[f"fetch:{fetch['fetch']}"] = NodeDetail(
                f"fetch {fetch['fetch']}",
                [
                    ("entity", fetch["entity"]),
                    ("keys", fetch["keys"]),
                    ("stage", f"{number} (after {', '.join(fetch['after']) or 'the context'})"),
                ],
                [_feature(catalog, selector) for selector in fetch["features"]],
            )
    for recent in described["interactions"]:
        window = seconds(recent["window"]) if recent["window"] is not None else "all kept"
        facts = [
            ("events", f"newest {recent['last']} {recent['type']} events of {recent['user']}"),
            ("window", window),
            *((name, recipe) for name, recipe in recent["features"].items()),
        ]
        details[f"interactions:{recent['name']}"] = NodeDetail(
            f"interactions {recent['name']}", facts
        )
    for step in described["steps"]:
        if step["kind"] == "model":
            outputs = ", ".join(f"{name} (column {col})" for name, col in step["outputs"].items())
            details[f"model:{step['name']}"] = NodeDetail(
                f"model {step['name']}",
                [
                    ("runtime", step["runtime"]),
                    ("inputs", ", ".join(step["inputs"])),
                    ("input width", f"{step['width']} columns, {step['matrix']}"),
                    ("rows per call", str(step["max_rows"])),
                    ("timeout", f"{step['timeout']:g} s"),
                    ("outputs", outputs),
                ],
            )
        else:
            details[f"expression:{step['name']}"] = NodeDetail(
                f"expression {step['name']}",
                [("expression", step["expression"]), ("matrix column", str(step["column"]))],
            )
    response = described["response"]
    details["response"] = NodeDetail(
        "response",
        [
            ("outputs", ", ".join(response["outputs"])),
            ("features", ", ".join(response["features"]) or "-"),
        ],
    )
    return details


def _feature(catalog: Catalog, selector: str) -> tuple[str, str, str, str]:
    group, _, name = selector.partition(".")
    definition = catalog.codecs[group].definition.feature(name) if group in catalog.codecs else None
    if definition is None:
        return selector, "?", "?", ""
    return (
        selector,
        str(definition.type),
        default_text(definition.type, definition.default),
        definition.description,
    )
