"""`inferstack serve`: serve the feature store over gRPC and HTTP."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from inferstack.cli.common import DEFAULT_DATA_DIR_VALUE, DataDirOption
from inferstack.server import supervisor
from inferstack.server.settings import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, ServeSettings


def serve(
    data_dir: DataDirOption = DEFAULT_DATA_DIR_VALUE,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", "-p", help="gRPC port (0: any free).")
    ] = DEFAULT_GRPC_PORT,
    http_port: Annotated[
        int, typer.Option(help="HTTP/JSON port (0: any free, -1: off).")
    ] = DEFAULT_HTTP_PORT,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Worker processes.")] = 1,
    cache_mb: Annotated[int, typer.Option(help="In-process row cache per worker, MiB.")] = 256,
    max_keys: Annotated[int, typer.Option(help="Most keys one request may ask for.")] = 10_000,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
) -> None:
    """Serve all parts from one process tree on the embedded default; SIGTERM stops cleanly."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ServeSettings(
        data_dir=data_dir,
        host=host,
        grpc_port=port,
        http_port=http_port,
        workers=workers,
        cache_bytes=cache_mb << 20,
        max_keys=max_keys,
    )
    raise typer.Exit(supervisor.serve(settings, announce=lambda line: print(line, flush=True)))
