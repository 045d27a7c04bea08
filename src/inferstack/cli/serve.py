"""`inferstack serve`: serve the feature store over gRPC and HTTP."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from inferstack.cli.common import ConfigOption, DataDirOption, settings_from
from inferstack.server import supervisor


def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="gRPC port, 0 = any free [6566].")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP/JSON port, 0 = any free, -1 = off [6567].")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", help="Worker processes [1].")
    ] = None,
    cache_mb: Annotated[
        int | None,
        typer.Option(help="In-process row cache per worker, MiB [256; off on LMDB]."),
    ] = None,
    max_keys: Annotated[
        int | None, typer.Option(help="Most keys one request may ask for [10000].")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Serve from one process tree; embedded (LMDB, files) unless --config says otherwise.

    Flags override the deployment file, which overrides the defaults. SIGTERM stops cleanly.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from(
        config,
        data_dir=data_dir,
        host=host,
        grpc_port=port,
        http_port=http_port,
        workers=workers,
        max_keys=max_keys,
        **{"cache.local.max_bytes": None if cache_mb is None else cache_mb << 20},
    )
    raise typer.Exit(supervisor.serve(settings, announce=lambda line: print(line, flush=True)))
