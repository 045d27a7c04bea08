"""Start a real `inferstack serve` process for tests and wait until it answers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferstack.sampledata.generate import GROUP_FILES
from inferstack.server.supervisor import free_port
from tests.conftest import SERVICES_SCRIPT


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    grpc_target: str
    http_base: str
    log: Path

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def inferstack(
    *args: str, data_dir: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERSTACK_DATA_DIR": str(data_dir), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "inferstack.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


def load_sample(
    sample: Path, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`inferstack apply` the sample definitions and ingest every sample file."""
    applied = inferstack("apply", "-f", str(sample / "ecommerce.yaml"), data_dir=data_dir, env=env)
    for group, file in GROUP_FILES.items():
        inferstack("ingest", "-g", group, str(sample / file), data_dir=data_dir, env=env)
    return applied


def start_server(
    data_dir: Path,
    *extra: str,
    workers: int = 2,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> RunningServer:
    grpc_port, http_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    log = data_dir / f"serve-{grpc_port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = log.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inferstack.cli.main",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--workers",
            str(workers),
            *extra,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    server = RunningServer(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", log)
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if (
                    status == health_pb2.HealthCheckResponse.SERVING
                    and "inferstack serving gRPC" in log.read_text()  # all workers up
                ):
                    return server
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.2)


async def services(*args: str) -> str:
    """Run scripts/services.py without blocking the event loop, so a read load goes on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVICES_SCRIPT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"services.py {' '.join(args)} failed:\n{text}"
    return text
