"""Start `inferstack serve` (or another gRPC server) as a process, wait until it is ready,
stop it: the one launcher of the benchmarks and the tests.

Benchmarks run as `python bench/x.py` and import it as `launch`; tests import it as
`bench.launch` (tests/servers.py). So it imports nothing else from bench/.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferstack.server.supervisor import free_port

HOST = "127.0.0.1"
SERVE = (sys.executable, "-m", "inferstack.cli.main", "serve")
# What the supervisor prints once every worker is up (as text, or in a JSON line at INFO).
READY_LINE = "inferstack serving gRPC"


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    grpc_target: str
    http_base: str  # "" when HTTP is off
    log: Path  # its stdout and stderr
    own_group: bool = False  # in a process group of its own, its workers with it

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (unless it exited already), then its exit code; TimeoutExpired if it has
        not exited within `timeout` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop_or_kill(self, timeout: float = 30.0) -> int:
        """Stop; if it is still running after `timeout` seconds, kill it."""
        try:
            return self.stop(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait(5)

    def kill(self) -> None:
        """SIGKILL: to its whole process group when it has one (the supervisor and its
        workers), else to the process."""
        with contextlib.suppress(ProcessLookupError):
            if self.own_group:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()


def start_server(
    *arguments: str,
    log: Path,
    port: int = 0,
    http: bool = True,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    own_group: bool = False,
    timeout: float = 60.0,
) -> RunningServer:
    """`inferstack serve --port P --http-port H --workers N *arguments` on 127.0.0.1.

    port      the gRPC port; 0: a free one
    http      HTTP on a free port (`http_base`); False: --http-port -1
    log       the file its output goes to (replaced)
    env       its whole environment; None: this process's
    own_group a process group of its own: `kill` then takes its workers along, and a
              signal to this process group (Ctrl-C) does not reach it

    Returns once the supervisor says every worker is up and gRPC health answers SERVING.
    """
    grpc_port = port or free_port(HOST)
    http_port = free_port(HOST) if http else -1
    command = [
        *SERVE,
        *("--port", str(grpc_port), "--http-port", str(http_port), "--workers", str(workers)),
        *arguments,
    ]
    http_base = f"http://{HOST}:{http_port}" if http else ""
    return start(
        command,
        f"{HOST}:{grpc_port}",
        log=log,
        http_base=http_base,
        env=env,
        own_group=own_group,
        timeout=timeout,
        ready=_serving,
    )


def start(
    command: Sequence[str],
    grpc_target: str,
    *,
    log: Path,
    http_base: str = "",
    env: Mapping[str, str] | None = None,
    own_group: bool = False,
    timeout: float = 60.0,
    ready: Callable[[RunningServer, grpc.Channel], bool] | None = None,
) -> RunningServer:
    """Run `command`, a gRPC server at `grpc_target`, and return once `ready` says so
    (default: a gRPC connection to it is made), polled about every 0.2 s. RuntimeError if it
    exits first; TimeoutError after `timeout` seconds, once it is stopped."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:  # the process keeps its own copy of the descriptor
        process = subprocess.Popen(
            list(command),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env=None if env is None else dict(env),
            start_new_session=own_group,
        )
    server = RunningServer(process, grpc_target, http_base, log, own_group)
    check = ready or _connected
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(grpc_target) as channel:
        while True:
            if process.poll() is not None:
                server.kill()  # workers it may have left behind
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            if check(server, channel):
                return server
            if time.monotonic() > deadline:
                server.stop_or_kill()
                raise TimeoutError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.2)


def _connected(server: RunningServer, channel: grpc.Channel) -> bool:
    try:
        grpc.channel_ready_future(channel).result(timeout=1)
    except grpc.FutureTimeoutError:
        return False
    return True


def _serving(server: RunningServer, channel: grpc.Channel) -> bool:
    """Every worker up (the supervisor said so) and gRPC health SERVING."""
    if READY_LINE not in server.log.read_text():
        return False
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
    except grpc.RpcError:
        return False
    return bool(status.status == health_pb2.HealthCheckResponse.SERVING)
