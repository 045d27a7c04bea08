"""Options and output helpers shared by the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from inferstack.core.settings import DATA_DIR_ENV, DEFAULT_DATA_DIR

console = Console()
errors = Console(stderr=True)

DataDirOption = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar=DATA_DIR_ENV,
        help="Where the embedded deployment keeps definitions and data.",
        show_default=True,
    ),
]
DEFAULT_DATA_DIR_VALUE = DEFAULT_DATA_DIR
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TargetOption = Annotated[
    str,
    typer.Option("--target", "-t", envvar="INFERSTACK_TARGET", help="gRPC address of a server."),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """One line (or one line per problem) on stderr, then a non-zero exit."""
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
