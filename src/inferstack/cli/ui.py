"""`inferstack ui`: the console on its own, for a laptop.

It opens the same systems a server would (the embedded data directory by default, or those
of a deployment file) and serves only the console. Its Health page shows this process's
own calls, or a running server's with --metrics-url.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from aiohttp import ClientSession, ClientTimeout, web

from inferstack.cli.common import ConfigOption, DataDirOption, fail, settings_from
from inferstack.core.errors import InvalidArgumentError
from inferstack.server import auth, tls
from inferstack.server.admission import Gate
from inferstack.server.components import build
from inferstack.server.logs import RequestLog
from inferstack.server.pipeline import Pipeline
from inferstack.server.settings import ServeSettings

if TYPE_CHECKING:
    from inferstack.console.app import MetricsText

DEFAULT_PORT = 6568


def ui(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="HTTP port, 0 = any free.")] = (
        DEFAULT_PORT
    ),
    metrics_url: Annotated[
        str | None,
        typer.Option(
            help="A server's metrics for the Health page, e.g. http://127.0.0.1:6567/metrics "
            "(default: this process's own)."
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain: HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="Require client certificates signed by this CA (PEM).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "WARNING",
) -> None:
    """Serve the console (catalog, look up, models, try it, health) at http://HOST:PORT/ui
    (https with --tls-cert and --tls-key, or `tls:` in the deployment file)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from(
        config,
        data_dir=data_dir,
        **{"tls.cert": tls_cert, "tls.key": tls_key, "tls.client_ca": tls_client_ca},
    )
    try:
        asyncio.run(_serve(settings, host, port, metrics_url))
    except InvalidArgumentError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot serve the console on {host}:{port}: {exc.strerror or exc}")


async def _serve(settings: ServeSettings, host: str, port: int, metrics_url: str | None) -> None:
    try:  # an extra: `pip install 'inferstack[console]'`
        from inferstack.console.app import add_console, local_metrics
    except ModuleNotFoundError as exc:
        raise InvalidArgumentError(
            f"the console needs {exc.name}: pip install 'inferstack[console]'"
        ) from exc
    components = await build(settings)
    # The console asks for tokens as serve does, and admits its calls the same way.
    authorizer, callers_watch = auth.start(components.config.callers)
    problem = auth.open_bind_problem(host, authorizer.callers, settings.insecure_open)
    if problem is not None:
        callers_watch.stop()
        await components.close()
        raise InvalidArgumentError(problem)
    if authorizer.callers.required:  # tokens off loopback without TLS: a warning
        auth.log_access(host, authorizer.callers, tls=settings.tls is not None)
    ssl_context = tls.http_ssl_context(settings.tls) if settings.tls is not None else None
    limits = settings.admission
    gate = Gate(limits.max_in_flight, limits.max_queue, limits.max_queue_wait)
    pipeline = Pipeline(authorizer, gate, RequestLog(settings.access_log))
    app = web.Application()
    session = ClientSession(timeout=ClientTimeout(total=2)) if metrics_url else None
    add_console(
        app,
        pipeline,
        components,
        settings,
        _remote(session, metrics_url) if session else local_metrics,
    )
    app.router.add_get("/", _to_console)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        scheme = "https" if ssl_context is not None else "http"
        print(f"inferstack console at {scheme}://{host}:{bound}/ui (Ctrl-C stops)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        if session is not None:
            await session.close()
        callers_watch.stop()
        await components.close()


def _remote(session: ClientSession, url: str | None) -> MetricsText:
    async def read() -> str:
        async with session.get(str(url)) as response:
            response.raise_for_status()
            return await response.text()

    return read


async def _to_console(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/catalog")
