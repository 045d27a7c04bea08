"""`inferstack models`: list the applied model configs and show one's resolved graph.

`show` compiles the config exactly as servers do (`inferflow.graph.compile_plan` against the
stored registry) and prints what a request will run: context inputs, fetch stages with their
key recipes and which fetches run concurrently, models and expressions in order with their
matrix columns, and the response; `--dot` prints the same graph for Graphviz.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from inferstack.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    console,
    fail,
    print_json,
    settings_from,
)
from inferstack.core.errors import InferstackError
from inferstack.core.registry import Registry
from inferstack.featurestore.catalog import Catalog
from inferstack.inferflow.describe import describe, plan_dot, plan_text
from inferstack.inferflow.graph import compile_plan
from inferstack.server.components import open_config_store

app = typer.Typer(help="Model configs applied to the registry.", no_args_is_help=True)


@app.command("list")
def list_models(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """Every applied model config with its version and size."""
    registry = load_registry(config, data_dir)
    rows = [
        {
            "name": name,
            "version": stored.version,
            "fetches": len(stored.definition.fetches),
            "models": len(stored.definition.models),
            "expressions": len(stored.definition.expressions),
            "description": stored.definition.description,
        }
        for name, stored in sorted(registry.models.items())
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print(f"No model configs applied (registry revision {registry.revision}).")
        return
    table = Table(*rows[0], title=f"models @ revision {registry.revision}")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Model config name, e.g. ranker.")],
    dot: Annotated[bool, typer.Option("--dot", help="Print a Graphviz digraph.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the resolved graph of one model config: stages, keys, concurrency, models."""
    registry = load_registry(config, data_dir)
    stored = registry.models.get(name)
    if stored is None:
        known = ", ".join(sorted(registry.models)) or "none applied"
        fail(f"model '{name}' not found (models: {known})")
    try:
        plan = compile_plan(stored.definition, Catalog(registry), stored.version)
    except InferstackError as exc:
        fail(f"model '{name}' v{stored.version}: {exc}")
    if as_json:
        print_json(describe(plan))
    else:  # plain text, so it pipes into `dot -Tsvg` or a file as it is
        typer.echo(plan_dot(plan) if dot else plan_text(plan))


def load_registry(config: Path | None, data_dir: Path | None) -> Registry:
    try:
        store = open_config_store(settings_from(config, data_dir=data_dir))
        try:
            return store.load()
        finally:
            store.close()
    except InferstackError as exc:
        fail(str(exc))
