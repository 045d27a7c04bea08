"""`inferstack doctor`: check a deployment end to end (the checks: server/doctor.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from rich.table import Table

from inferstack.cli.common import (
    CaOption,
    CertOption,
    ConfigOption,
    DataDirOption,
    JsonOption,
    KeyOption,
    TokenOption,
    console,
    print_json,
    settings_from,
)
from inferstack.server.doctor import DEFAULT_TIMEOUT, ServerTargets, diagnose, server_targets_from

STYLES = {"ok": "green", "warn": "yellow", "fail": "red"}


def doctor(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            help="gRPC host:port of a running server to health-check "
            "[default: the deployment's ports, if it sets them].",
            show_default=False,
        ),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option("--http", help="HTTP host:port of a running server to check /healthz."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each check may take at most.")
    ] = DEFAULT_TIMEOUT,
    token: TokenOption = None,
    ca: CaOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check the config store, storage and its tables, caches, model endpoints, the
    server's ports, clock skew and free disk; one line each, with what to do on failure.

    Exits 1 if any check failed (warnings do not).
    """
    settings = settings_from(config, data_dir=data_dir)
    grpc_target, http_target = server_targets_from(settings, server, http)
    targets = ServerTargets(
        grpc=grpc_target,
        http=http_target,
        tls=settings.tls is not None,
        ca=ca,
        cert=cert,
        key=key,
        token=token,
    )
    # Drivers log reconnect attempts and tracebacks; every failure is in a result instead.
    logging.disable(logging.ERROR)
    results = asyncio.run(diagnose(settings, targets, timeout))
    if as_json:
        print_json([result.as_dict() for result in results])
    else:
        table = Table("check", "state", "detail", box=None, show_edge=False, pad_edge=False)
        for result in results:
            style = STYLES[result.state]
            detail = result.detail
            if result.fix:
                detail += f"\n[{style}]fix:[/] {result.fix}"
            table.add_row(result.check, f"[{style}]{result.state}[/]", detail)
        console.print(table, highlight=False)
    if any(result.state == "fail" for result in results):
        raise typer.Exit(1)
