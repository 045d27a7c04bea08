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

# How a command that calls a server authenticates and checks it (client/channels.py).
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="INFERSTACK_TOKEN",
        help="Caller token, sent as 'authorization: Bearer' [env INFERSTACK_TOKEN].",
        show_default=False,
    ),
]
CaOption = Annotated[
    Path | None, typer.Option("--ca", help="PEM CA file: TLS, verifying the server with it.")
]
CertOption = Annotated[
    Path | None, typer.Option("--cert", help="PEM client certificate (mutual TLS).")
]
KeyOption = Annotated[Path | None, typer.Option("--key", help="PEM private key of --cert.")]


def client_security(
    token: str | None, ca: Path | None, cert: Path | None, key: Path | None
) -> dict[str, Any]:
    """Keyword arguments of every client for these options."""
    return {"token": token, "ca": ca, "cert": cert, "key": key}


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
