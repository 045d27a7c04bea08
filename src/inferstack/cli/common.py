"""Options and output helpers shared by the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from inferstack.core.errors import DefinitionError
from inferstack.server.settings import ServeSettings, load_settings

console = Console()
errors = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Embedded data directory [env INFERSTACK_DATA_DIR; default ./.inferstack].",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="INFERSTACK_DEPLOYMENT",
        help="Deployment file choosing storage, caches and config store (default: embedded).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TargetOption = Annotated[
    str,
    typer.Option("--target", "-t", envvar="INFERSTACK_TARGET", help="gRPC address of a server."),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """One line (or one line per problem) on stderr, then a non-zero exit."""
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_from(config: Path | None, **overrides: Any) -> ServeSettings:
    """Deployment settings, or exit naming the file, line and field that is wrong."""
    if config is not None and not config.is_file():
        fail(f"{config}: no such deployment file")
    try:
        return load_settings(config, overrides)
    except DefinitionError as exc:
        for problem in exc.problems:
            errors.print(f"[red]error:[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
