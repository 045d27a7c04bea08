"""`inferstack serve`: serve the feature store over gRPC and HTTP."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from inferstack.cli.common import ConfigOption, DataDirOption, settings_from
from inferstack.server import logs, supervisor
from inferstack.server.worker import Extension


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
    insecure_open: Annotated[
        bool,
        typer.Option(
            "--insecure-open",
            help="Serve a non-loopback --host with no callers configured (anyone may call).",
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: TLS on both ports.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="Require client certificates signed by this CA (PEM).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    log_format: Annotated[
        str | None, typer.Option(help="text, or json: one object per line [text].")
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="A log line per request [off: only failed requests, rate-limited].",
        ),
    ] = None,
) -> None:
    """Serve from one process tree; embedded (LMDB, files) unless --config says otherwise.

    Flags override the deployment file, which overrides the defaults. SIGTERM stops cleanly.
    """
    settings = settings_from(
        config,
        data_dir=data_dir,
        host=host,
        grpc_port=port,
        http_port=http_port,
        workers=workers,
        max_keys=max_keys,
        insecure_open=insecure_open or None,
        **{"tls.cert": tls_cert, "tls.key": tls_key, "tls.client_ca": tls_client_ca},
        log_format=log_format,
        access_log=access_log,
        **{"cache.local.max_bytes": None if cache_mb is None else cache_mb << 20},
    )
    logs.configure(settings.log_format, log_level.upper())
    if settings.log_format == "json":  # every line a JSON object, the start-up line too
        announce: Callable[[str], None] = logging.getLogger("inferstack.serve").info
    else:
        announce = lambda line: print(line, flush=True)  # noqa: E731
    # Every worker also serves the console under /ui.
    extensions = _console()  # every worker also serves the console under /ui
    raise typer.Exit(supervisor.serve(settings, announce=announce, extensions=extensions))


def _console() -> list[Extension]:
    """The console when its extra is installed (`pip install 'inferstack[console]'`)."""
    try:
        from inferstack.console import add_console
    except ModuleNotFoundError as exc:
        logging.getLogger("inferstack.serve").info(
            "no console under /ui: it needs %s (pip install 'inferstack[console]')", exc.name
        )
        return []
    return [add_console]
