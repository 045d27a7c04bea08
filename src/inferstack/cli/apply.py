"""`inferstack apply`: validate definitions, show the difference, store them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from inferstack.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    console,
    errors,
    fail,
    print_json,
    settings_from,
)
from inferstack.configstore.base import ConfigConflictError
from inferstack.core.errors import DefinitionError, InferstackError
from inferstack.core.loading import load_definitions
from inferstack.core.registry import plan
from inferstack.inferflow.validation import check_models, read_artifacts
from inferstack.server.components import open_config_store, prepare_storage

COLOURS = {"create": "green", "update": "yellow", "delete": "red"}


def apply(
    files: Annotated[
        list[Path], typer.Option("--file", "-f", help="A YAML file or a directory of them.")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and diff only.")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete stored definitions missing from the files.")
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate definitions and model configs, print what changes, and store them."""
    settings = settings_from(config, data_dir=data_dir)
    try:
        store = open_config_store(settings)
        current = store.load()
    except InferstackError as exc:
        fail(str(exc))
    try:
        definitions = load_definitions(files, current)
    except DefinitionError as exc:
        for problem in exc.problems:
            errors.print(f"[red]error:[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    models, artifacts, problems = read_artifacts(definitions)
    result = plan(
        current,
        definitions.entities,
        definitions.feature_groups,
        models,
        definitions.interaction_types,
        prune=prune,
    )
    problems += check_models(result.registry, definitions.model_sources, artifacts)
    if problems:
        for problem in problems:
            errors.print(f"[red]error:[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if not result.empty and not dry_run:
        try:
            # Model files and tables first: a registry never names a file servers cannot
            # fetch, and servers never race each other to create a table it needs.
            for data in artifacts.values():
                store.put_blob(data)
            asyncio.run(prepare_storage(settings, result.registry))
            store.save(result.registry, expected_revision=current.revision)
        except ConfigConflictError as exc:
            fail(str(exc))
        except InferstackError as exc:
            fail(str(exc))
    store.close()
    if as_json:
        print_json(
            {
                "changes": [
                    {"action": c.action, "kind": c.kind, "name": c.name, "details": c.details}
                    for c in result.changes
                ],
                "revision": result.registry.revision,
                "applied": bool(result.changes) and not dry_run,
            }
        )
        return
    for change in result.changes:
        console.print(f"[{COLOURS[change.action]}]{change}[/]", highlight=False)
    if result.empty:
        console.print("No changes.")
    elif dry_run:
        console.print(f"Dry run: {len(result.changes)} change(s) not applied.")
    else:
        console.print(f"Applied revision {result.registry.revision}.")
