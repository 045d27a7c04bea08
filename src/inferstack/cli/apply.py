"""`inferstack apply`: validate definitions, show the difference, store them.

The flow itself is `server/apply.py`; this module parses options and prints.
"""

from __future__ import annotations

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
from inferstack.core.errors import DefinitionError, InferstackError
from inferstack.server.apply import ApplyResult, apply_definitions

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
        result = apply_definitions(settings, files, dry_run=dry_run, prune=prune)
    except DefinitionError as exc:
        for problem in exc.problems:
            errors.print(f"[red]error:[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    except InferstackError as exc:
        fail(str(exc))
    if as_json:
        print_json(result_json(result))
    else:
        print_result(result)


def result_json(result: ApplyResult) -> dict[str, object]:
    return {
        "changes": [
            {"action": c.action, "kind": c.kind, "name": c.name, "details": c.details}
            for c in result.changes
        ],
        "revision": result.revision,
        "applied": result.applied,
    }


def print_result(result: ApplyResult) -> None:
    for change in result.changes:
        console.print(f"[{COLOURS[change.action]}]{change}[/]", highlight=False)
    if result.empty:
        console.print("No changes.")
    elif result.dry_run:
        console.print(f"Dry run: {len(result.changes)} change(s) not applied.")
    else:
        console.print(f"Applied revision {result.revision}.")
