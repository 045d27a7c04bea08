"""`inferstack infer`: score candidates with a model config on a running server."""

from __future__ import annotations

from typing import Annotated, Any

import grpc
import numpy as np
import typer
from rich.table import Table

from inferstack.cli.common import (
    CaOption,
    CertOption,
    JsonOption,
    KeyOption,
    TargetOption,
    TokenOption,
    client_security,
    console,
    fail,
    print_json,
)
from inferstack.client.channels import DEFAULT_TARGET
from inferstack.client.inferflow import InferflowClient, Scores
from inferstack.wire.json import json_values


def infer(
    model: Annotated[str, typer.Argument(help="Model config name, e.g. ranker.")],
    context: Annotated[
        list[str],
        typer.Argument(
            help="One context input per argument: NAME=VALUE[,VALUE...] "
            "(e.g. user_id=42 product_ids=1334,7732)."
        ),
    ],
    target: TargetOption = DEFAULT_TARGET,
    token: TokenOption = None,
    ca: CaOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    top: Annotated[int, typer.Option("--top", "-n", min=0, help="Rows to print, best first.")] = 10,
    features: Annotated[
        str | None,
        typer.Option("--features", "-f", help="More features to return: fetch.feature,..."),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Also print the time of each stage and defaults.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Score the candidates and print the best ones with every output."""
    inputs = parse_context(context)
    wanted = [f.strip() for f in (features or "").split(",") if f.strip()]
    try:
        with InferflowClient(
            target, connections=1, **client_security(token, ca, cert, key)
        ) as client:
            scores = client.infer(model, inputs, wanted, explain=explain)
    except grpc.RpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    best = scores.top(top)
    if as_json:
        print_json(scores_json(scores, inputs, best, explain))
        return
    console.print(scores_table(scores, inputs, best, target))
    if explain:
        console.print(stages_table(scores))
        console.print(defaults_text(scores), highlight=False)


def parse_context(arguments: list[str]) -> dict[str, list[str]]:
    """`product_ids=1,2,3` per argument -> {"product_ids": ["1", "2", "3"]}; the server
    parses each value by the input's declared type."""
    context: dict[str, list[str]] = {}
    for text in arguments:
        name, separator, values = text.partition("=")
        name = name.strip()
        if not separator or not name:
            fail(f"context '{text}': expected NAME=VALUE[,VALUE...]")
        if name in context:
            fail(f"context '{name}' is given twice")
        context[name] = [v.strip() for v in values.split(",")] if values.strip() else []
    return context


def candidate_columns(scores: Scores, context: dict[str, list[str]]) -> dict[str, list[str]]:
    """The context inputs with one value per row: the candidate ids to show next to scores."""
    return {name: values for name, values in context.items() if len(values) == scores.count}


def scores_table(
    scores: Scores, context: dict[str, list[str]], best: np.ndarray[Any, Any], target: str
) -> Table:
    ranked_by = next(iter(scores.outputs), "")
    title = (
        f"{scores.model} v{scores.version} @ {target}: top {len(best)} of {scores.count} "
        f"by {ranked_by}"
    )
    ids = candidate_columns(scores, context)
    table = Table("#", *ids, *scores.outputs, *scores.features, title=title)
    for rank, row in enumerate(best.tolist(), start=1):
        cells = [str(rank), *(values[row] for values in ids.values())]
        cells += [cell(values[row]) for values in scores.outputs.values()]
        cells += [cell(values[row]) for values in scores.features.values()]
        table.add_row(*cells)
    return table


def stages_table(scores: Scores) -> Table:
    table = Table("stage", "ms", title=f"request {scores.request_id}")
    for stage, milliseconds in scores.timings:
        table.add_row(stage, f"{milliseconds:.3f}")
    table.add_row("total", f"{sum(ms for _, ms in scores.timings):.3f}", style="bold")
    return table


def defaults_text(scores: Scores) -> str:
    used = [(name, rows) for name, rows in scores.defaults.items() if rows]
    if not used:
        return f"Defaults: none of {len(scores.defaults)} features read a default."
    lines = [f"Defaults (rows of {scores.count} without a stored value):"]
    lines += [f"  {name}: {rows}" for name, rows in used]
    return "\n".join(lines)


def scores_json(
    scores: Scores, context: dict[str, list[str]], best: np.ndarray[Any, Any], explain: bool
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": scores.model,
        "version": scores.version,
        "request_id": scores.request_id,
        "count": scores.count,
        "top": best.tolist(),
        "candidates": candidate_columns(scores, context),
        "outputs": {name: json_values(v.tolist()) for name, v in scores.outputs.items()},
        "features": {name: json_values(v.tolist()) for name, v in scores.features.items()},
    }
    if explain:
        payload["explain"] = {
            "stages": [{"name": name, "milliseconds": ms} for name, ms in scores.timings],
            "defaults": scores.defaults,
            "rows": scores.count,
        }
    return payload


def cell(value: Any) -> str:
    if isinstance(value, np.ndarray):
        shown = ", ".join(cell(v) for v in value[:3].tolist())
        return f"[{shown}{', …' if len(value) > 3 else ''}] ({len(value)})"
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 8 else f"{value[:8].hex()}… ({len(value)} B)"
    return str(value)
