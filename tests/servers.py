"""Start a real `inferstack serve` process for tests and wait until it answers (with
bench/launch.py, the benchmarks' launcher too); run the CLI and scripts/services.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from bench import launch
from bench.launch import RunningServer
from inferstack.sampledata.generate import GROUP_FILES
from inferstack.server.supervisor import free_port
from tests.conftest import SERVICES_SCRIPT

__all__ = ["RunningServer", "inferstack", "load_sample", "services", "start_server"]


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
    """`inferstack serve` on `data_dir` with `extra` arguments, on free loopback ports, its
    output in `data_dir`/serve-<gRPC port>.log; `env` is added to this process's."""
    port = free_port(launch.HOST)
    return launch.start_server(
        "--data-dir",
        str(data_dir),
        *extra,
        log=data_dir / f"serve-{port}.log",
        port=port,
        workers=workers,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


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
