"""`inferstack serve`: start N worker processes on one port, restart crashed ones,
and stop them all cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from inferstack import metrics
from inferstack.core.errors import InferstackError
from inferstack.server import auth, logs, tls, worker
from inferstack.server.components import (
    check_reachable,
    open_config_store,
    prepare_storage,
    remote_credentials,
)
from inferstack.server.settings import ServeSettings

log = logging.getLogger(__name__)
RESTART_BACKOFF = 1.0


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def with_ports(settings: ServeSettings) -> ServeSettings:
    """Port 0 means "any free port": choose it once so every worker shares it."""
    update: dict[str, Any] = {}
    if settings.grpc_port == 0:
        update["grpc_port"] = free_port(settings.host)
    if settings.http_port == 0:
        update["http_port"] = free_port(settings.host)
    return settings.model_copy(update=update)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies, even by SIGKILL, so no orphan
    keeps serving, holding LMDB or sweeping."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    settings: ServeSettings, ready: Any, level: int, extensions: Sequence[worker.Extension]
) -> None:
    _die_with_parent()
    logs.configure(settings.log_format, level, worker=True)
    try:
        worker.run(settings, on_ready=lambda: ready.put(os.getpid()), extensions=extensions)
    except (OSError, InferstackError) as exc:  # expected start-up failures: one clear line
        log.error("worker could not start: %s", exc)
        sys.exit(1)


def access_problem(settings: ServeSettings) -> str | None:
    """Why these settings must not serve (an open non-loopback bind), or None; TLS files
    are checked here so a bad one is one clear line, not a failure in every worker."""
    if settings.tls is not None:
        tls.http_ssl_context(settings.tls)
    if settings.inferflow.feature_store:
        remote_credentials(settings.inferflow)
    config = open_config_store(settings)
    try:
        callers = config.callers.load()
    finally:
        config.close()
    problem = auth.open_bind_problem(settings.host, callers, settings.insecure_open)
    if problem is None:
        auth.log_access(settings.host, callers, tls=settings.tls is not None)
    return problem


def serve(
    settings: ServeSettings, announce: Any = print, extensions: Sequence[worker.Extension] = ()
) -> int:
    """Run `settings.workers` workers until SIGTERM or SIGINT; each worker's HTTP app also
    serves `extensions` (module-level functions: they are pickled to spawned workers)."""
    with metrics.shared_directory():
        return _serve(settings, announce, tuple(extensions))


def _serve(settings: ServeSettings, announce: Any, extensions: tuple[worker.Extension, ...]) -> int:
    try:
        asyncio.run(check_reachable(settings))
        problem = access_problem(settings)
    except InferstackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return 1
    try:  # tables once, before workers would race to create them
        asyncio.run(prepare_storage(settings))
    except Exception as exc:  # workers create what is missing themselves
        log.warning("could not create tables before starting workers: %s", exc)
    settings = with_ports(settings)
    context = multiprocessing.get_context("spawn")  # no gRPC state may cross a fork
    ready = context.Queue()
    level = logging.getLogger().getEffectiveLevel()
    stopping = False

    def start() -> BaseProcess:
        process = context.Process(
            target=_worker_main, args=(settings, ready, level, extensions), daemon=False
        )
        process.start()
        return process

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    workers = [start() for _ in range(settings.workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = 0
    while started < settings.workers and not stopping:
        if any(not p.is_alive() for p in workers):
            log.error("a worker exited during start-up; stopping")
            on_signal(signal.SIGTERM, None)
            break
        try:
            ready.get(timeout=0.2)
            started += 1
        except queue.Empty:
            continue
    if started == settings.workers:
        http = f", HTTP on {settings.host}:{settings.http_port}" if settings.http_port >= 0 else ""
        announce(
            f"inferstack serving gRPC on {settings.host}:{settings.grpc_port}{http} "
            f"with {settings.workers} worker(s); {settings.description}"
        )

    failed = started < settings.workers
    while workers:
        wait([p.sentinel for p in workers], timeout=1.0)
        for process in [p for p in workers if not p.is_alive()]:
            workers.remove(process)
            process.join()
            if process.pid is not None:
                metrics.worker_exited(process.pid)  # its in-flight gauges would stay summed
            if not stopping:
                log.error("worker %s exited with %s; restarting", process.pid, process.exitcode)
                time.sleep(RESTART_BACKOFF)
                workers.append(start())
    return 1 if failed else 0
