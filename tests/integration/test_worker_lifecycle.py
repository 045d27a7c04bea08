"""A worker closes what it started, in reverse, whichever way it ends: here its HTTP port is
taken, so the start-up step after the components, the callers' watch, the stale-reader task
and the started gRPC server fails; each of those must be closed when `serve` raises."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferstack.server import auth, worker
from inferstack.server.components import Components
from inferstack.server.components import build as build_components
from inferstack.server.settings import load_settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_worker_whose_http_port_is_taken_closes_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grpc_port = _free_port()
    taken = socket.socket()  # no SO_REUSEPORT: the worker cannot share it
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    settings = load_settings(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "grpc_port": grpc_port,
            "http_port": taken.getsockname()[1],
        },
    )
    built: list[Components] = []

    async def build(*args: Any, **kwargs: Any) -> Components:
        built.append(await build_components(*args, **kwargs))
        return built[-1]

    watches: list[Any] = []
    real_start = auth.start

    def start(config: Any) -> Any:
        watches.append(real_start(config))
        return watches[-1]

    monkeypatch.setattr(worker, "build", build)
    monkeypatch.setattr(auth, "start", start)
    served_health: list[int] = []

    async def probe_grpc() -> None:  # while it starts: was the gRPC server up at all?
        for _ in range(200):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=0.2
                    )
                    served_health.append(reply.status)
                    return
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.01)

    try:
        with pytest.raises(OSError, match="cannot listen for HTTP"):
            await asyncio.gather(worker.serve(settings), probe_grpc())
    finally:
        taken.close()
    (components,) = built
    # 1: the components (storage, tiers, config store) are closed.
    assert components.interactions.hot._shared is None  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"closed"):
        components.service.rows.storage.read_sync("anything", [b"k"])  # type: ignore[attr-defined]
    # 2: the stale-reader task ended; no task of the worker is left running.
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in leftover if "_clear_stale_readers" in repr(t)], leftover
    # 3: the callers' watch is stopped (its polling thread ends).
    assert len(watches) == 1 and watches[0][1]._stopped.is_set()  # (authorizer, watch)
    # 4: the gRPC server that had started is stopped: nothing answers on its port.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
    assert refused.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
