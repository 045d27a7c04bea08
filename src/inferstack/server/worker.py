"""One serving process: gRPC (with health and reflection) and HTTP on one event loop.

Several workers share one port through SO_REUSEPORT; the kernel spreads connections.
Each worker admits calls through one admission gate (server/admission.py) built from
`settings.admission`; health checks, reflection and /metrics bypass it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from inferstack.console import add_console
from inferstack.featurestore.grpc_service import FeatureStoreServicer
from inferstack.featurestore.http_gateway import make_app
from inferstack.inferflow import http_gateway as inferflow_http
from inferstack.inferflow.grpc_service import INFERFLOW_SERVICE, InferflowServicer
from inferstack.interactions import http_gateway as interactions_http
from inferstack.interactions.grpc_service import INTERACTIONS_SERVICE, InteractionsServicer
from inferstack.interactions.service import run_sweeper
from inferstack.proto.featurestore.v1 import featurestore_pb2
from inferstack.proto.inferflow.v1 import inferflow_pb2
from inferstack.proto.interactions.v1 import interactions_pb2
from inferstack.server import admission, auth, http_middleware, logs, tls
from inferstack.server.components import Components, build
from inferstack.server.grpc_handlers import add_service
from inferstack.server.settings import ServeSettings

if TYPE_CHECKING:
    from inferstack.interactions.kafka import InteractionConsumer

log = logging.getLogger(__name__)
STALE_READERS_EVERY = 5.0  # seconds between two checks for LMDB readers of dead processes
FEATURE_STORE_SERVICE = featurestore_pb2.DESCRIPTOR.services_by_name["FeatureStore"].full_name


async def serve(settings: ServeSettings, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain calls in flight and stop.

    Every resource is registered on one exit stack as it starts, so whatever way this ends
    (a stop, or a start-up step that fails) closes exactly what was started, newest first."""
    async with contextlib.AsyncExitStack() as started:
        components = await build(settings)
        started.push_async_callback(components.close)
        # First at once, so a worker replacing a killed one frees the slots it left.
        readers = asyncio.create_task(_clear_stale_readers(components, STALE_READERS_EVERY))
        started.push_async_callback(_cancel, readers)
        callers_watch = auth.start(components.config)  # who may call; revocations follow
        started.callback(callers_watch.stop)
        limits = settings.admission
        gate = admission.Gate(limits.max_in_flight, limits.max_queue, limits.max_queue_wait)
        admission.install(gate)  # every gRPC method and JSON route of this worker passes it
        server, health, address = _grpc_server(settings, components)
        await server.start()
        started.push_async_callback(server.stop, settings.shutdown_grace)
        for name in ("", FEATURE_STORE_SERVICE, INFERFLOW_SERVICE, INTERACTIONS_SERVICE):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)

        if settings.http_port >= 0:
            runner = await _http_runner(settings, components)
            started.push_async_callback(runner.cleanup)
            context = tls.http_ssl_context(settings.tls) if settings.tls is not None else None
            site = web.TCPSite(
                runner, settings.host, settings.http_port, reuse_port=True, ssl_context=context
            )
            try:
                await site.start()
            except OSError as exc:
                raise OSError(
                    f"cannot listen for HTTP on {settings.host}:{settings.http_port}: "
                    f"{exc.strerror}"
                ) from exc

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        consumer = await _start_consumer(settings, components)
        if consumer is not None:
            started.push_async_callback(consumer.stop)  # commits what it ingested
        sweeping = settings.interactions.sweeper
        if sweeping.enabled:
            sweeper = asyncio.create_task(
                run_sweeper(components.interactions, stop, sweeping.interval, sweeping.batch)
            )
            started.push_async_callback(_finish, sweeper)  # the sweep it is in, then it returns
            started.callback(stop.set)  # (runs first: an exit stack unwinds newest first)
        publisher = asyncio.create_task(gate.publish_every())
        started.push_async_callback(_cancel, publisher)
        # Start-up objects (modules, definitions, codecs) live for the whole process: move
        # them out of the collector's way so full collections stay short on the request path.
        gc.collect()
        gc.freeze()
        log.info("worker serving gRPC on %s", address)
        if on_ready is not None:
            on_ready()
        await stop.wait()
        log.info("worker stopping")
        await health.enter_graceful_shutdown()


def _grpc_server(
    settings: ServeSettings, components: Components
) -> tuple[grpc.aio.Server, HealthServicer, str]:
    """The gRPC server with every service registered and its port bound (not started)."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
    )
    # Our own registration (server/grpc_handlers.py): malformed messages are answered
    # INVALID_ARGUMENT, and every call gets a request id and, when it fails, a log line.
    logs.install(settings.access_log)
    add_service(
        server, _service(featurestore_pb2, "FeatureStore"), FeatureStoreServicer(components.service)
    )
    add_service(
        server, _service(inferflow_pb2, "Inferflow"), InferflowServicer(components.inferflow)
    )
    add_service(
        server,
        _service(interactions_pb2, "Interactions"),
        InteractionsServicer(components.interactions),
        metric_prefix="Interactions/",
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            FEATURE_STORE_SERVICE,
            INFERFLOW_SERVICE,
            INTERACTIONS_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        if settings.tls is not None:
            server.add_secure_port(address, tls.grpc_server_credentials(settings.tls))
        else:
            server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc reports a failed bind this way
        raise OSError(f"cannot listen for gRPC on {address} (in use or not allowed)") from exc
    return server, health, address


async def _http_runner(settings: ServeSettings, components: Components) -> web.AppRunner:
    app = make_app(components.service, settings.max_http_body_bytes)
    http_middleware.install(app)  # request ids, request log lines, 413 as JSON
    inferflow_http.add_routes(app, components.inferflow)
    interactions_http.add_routes(app, components.interactions)
    add_console(app, components, settings)  # the read-only web console, /ui
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _finish(task: asyncio.Task[Any]) -> None:
    await task


async def _clear_stale_readers(components: Components, every: float) -> None:
    """Free LMDB reader slots left by processes that died mid-read, now and every `every`
    seconds: each such slot pins the snapshot it read, so until it is freed LMDB reuses no
    page freed since and the data files grow with every write."""
    while True:
        try:
            components.clear_stale_readers()
        except Exception as exc:  # an LMDB error: try again next time
            log.warning("could not check LMDB for stale readers: %s", exc)
        await asyncio.sleep(every)


def _service(module: ModuleType, name: str) -> Any:
    """The protobuf descriptor of service `name` of a generated module."""
    return module.DESCRIPTOR.services_by_name[name]


async def _start_consumer(
    settings: ServeSettings, components: Components
) -> InteractionConsumer | None:
    """Each worker joins the consumer group: Kafka spreads the partitions over them."""
    kafka = settings.interactions.kafka
    if kafka is None:
        return None
    from inferstack.interactions.kafka import InteractionConsumer, topics_for

    service = components.interactions
    types = kafka.types if kafka.types is not None else sorted(service.catalog.types)
    if not types:
        log.warning("interactions.kafka is set but no interaction type is defined: not consuming")
        return None
    consumer = InteractionConsumer(
        kafka.bootstrap,
        kafka.group,
        topics_for(types, kafka.topic_prefix),
        service.ingest,
        lambda name: service.catalog.type(name),
        batch_size=kafka.batch_size,
        consumer_config=dict(kafka.consumer),
    )
    await consumer.start()
    return consumer


def run(settings: ServeSettings, on_ready: Callable[[], None] | None = None) -> None:
    """Entry point of a worker process: uvloop when available, one loop per process."""
    import uvloop

    uvloop.run(serve(settings, on_ready))
