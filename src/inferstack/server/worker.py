"""One serving process: gRPC (with health and reflection) and HTTP on one event loop.

Several workers share one port through SO_REUSEPORT; the kernel spreads connections.
Each worker builds one call pipeline (server/pipeline.py: its authorizer, admission gate and
request log) and hands it to both transports; health checks, reflection and /metrics bypass
it. What else the HTTP app serves (the console) comes in as extensions, so this layer never
imports what sits above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from inferstack.interactions.service import run_sweeper
from inferstack.server import admission, auth, logs, tls
from inferstack.server.components import Components, build
from inferstack.server.grpc import featurestore as featurestore_grpc
from inferstack.server.grpc import inferflow as inferflow_grpc
from inferstack.server.grpc import interactions as interactions_grpc
from inferstack.server.grpc.registration import add_service
from inferstack.server.http.app import make_app
from inferstack.server.pipeline import Pipeline
from inferstack.server.settings import ServeSettings

if TYPE_CHECKING:
    from inferstack.interactions.kafka import InteractionConsumer

log = logging.getLogger(__name__)
STALE_READERS_EVERY = 5.0  # seconds between two checks for LMDB readers of dead processes
SERVICES = (featurestore_grpc.SERVICE, inferflow_grpc.SERVICE, interactions_grpc.SERVICE)
# Something more to serve on the worker's HTTP app (the console: cli/serve.py passes it),
# added before the app starts. Module-level functions: workers are spawned, so they pickle.
Extension = Callable[[web.Application, Pipeline, Components, ServeSettings], None]


async def serve(
    settings: ServeSettings,
    on_ready: Callable[[], None] | None = None,
    extensions: Sequence[Extension] = (),
) -> None:
    """Serve until SIGTERM or SIGINT, then drain calls in flight and stop.

    Every resource is registered on one exit stack as it starts, so whatever way this ends
    (a stop, or a start-up step that fails) closes exactly what was started, newest first."""
    async with contextlib.AsyncExitStack() as started:
        components = await build(settings)
        started.push_async_callback(components.close)
        # First at once, so a worker replacing a killed one frees the slots it left.
        readers = asyncio.create_task(_clear_stale_readers(components, STALE_READERS_EVERY))
        started.push_async_callback(_cancel, readers)
        authorizer, callers_watch = auth.start(components.config.callers)  # revocations follow
        started.callback(callers_watch.stop)
        limits = settings.admission
        gate = admission.Gate(limits.max_in_flight, limits.max_queue, limits.max_queue_wait)
        request_log = logs.RequestLog(settings.access_log)
        logs.filter_bad_http(request_log)
        pipeline = Pipeline(authorizer, gate, request_log)  # every call of this worker
        server, health, address = _grpc_server(settings, components, pipeline)
        await server.start()
        started.push_async_callback(server.stop, settings.shutdown_grace)
        for name in ("", *(service.full_name for service in SERVICES)):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)

        if settings.http_port >= 0:
            runner = await _http_runner(settings, components, pipeline, extensions)
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
    settings: ServeSettings, components: Components, pipeline: Pipeline
) -> tuple[grpc.aio.Server, HealthServicer, str]:
    """The gRPC server with every service registered and its port bound (not started)."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
    )
    # Our own registration (server/grpc/registration.py): malformed messages are answered
    # INVALID_ARGUMENT, and every call gets a request id and, when it fails, a log line.
    add_service(
        server,
        pipeline,
        featurestore_grpc.SERVICE,
        featurestore_grpc.endpoints(components.service),
    )
    add_service(
        server, pipeline, inferflow_grpc.SERVICE, inferflow_grpc.endpoints(components.inferflow)
    )
    add_service(
        server,
        pipeline,
        interactions_grpc.SERVICE,
        interactions_grpc.endpoints(components.interactions),
        label_prefix=interactions_grpc.LABEL_PREFIX,
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            *(service.full_name for service in SERVICES),
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


async def _http_runner(
    settings: ServeSettings,
    components: Components,
    pipeline: Pipeline,
    extensions: Sequence[Extension],
) -> web.AppRunner:
    app = make_app(
        pipeline,
        components.service,
        components.inferflow,
        components.interactions,
        settings.max_http_body_bytes,
        settings.http_body_timeout,
    )
    for extend in extensions:
        extend(app, pipeline, components, settings)
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


async def _start_consumer(
    settings: ServeSettings, components: Components
) -> InteractionConsumer | None:
    """Each worker joins the consumer group: Kafka spreads the partitions over them."""
    kafka = settings.interactions.kafka
    if kafka is None:
        return None
    from inferstack.interactions.kafka import InteractionConsumer
    from inferstack.interactions.kafkamessages import topics_for

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


def run(
    settings: ServeSettings,
    on_ready: Callable[[], None] | None = None,
    extensions: Sequence[Extension] = (),
) -> None:
    """Entry point of a worker process: uvloop when available, one loop per process."""
    import uvloop

    uvloop.run(serve(settings, on_ready, extensions))
