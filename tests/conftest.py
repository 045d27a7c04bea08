"""Shared fixtures. Real services come from scripts/services.py, started once per run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT = ROOT / "scripts" / "services.py"
ENV_NAMES = {
    "cassandra": "INFERSTACK_TEST_CASSANDRA",
    "redis": "INFERSTACK_TEST_REDIS",
    "zookeeper": "INFERSTACK_TEST_ZOOKEEPER",
    "kafka": "INFERSTACK_TEST_KAFKA",
    "mlserver": "INFERSTACK_TEST_MLSERVER",
}


def service_endpoint(name: str) -> str:
    """host:port of a running test service; starts it (once) if `make test` did not."""
    from_env = os.environ.get(ENV_NAMES[name])
    if from_env:
        return from_env
    endpoints_file = (
        Path(os.environ.get("INFERSTACK_SERVICES_DIR", ROOT / ".services")) / "endpoints.json"
    )
    subprocess.run([sys.executable, str(SERVICES_SCRIPT), "up", name], check=True)
    endpoint: str = json.loads(endpoints_file.read_text())[name]
    os.environ[ENV_NAMES[name]] = endpoint
    return endpoint


@pytest.fixture(scope="session")
def cassandra_endpoint() -> str:
    return service_endpoint("cassandra")


@pytest.fixture(scope="session")
def redis_endpoint() -> str:
    return service_endpoint("redis")


@pytest.fixture(scope="session")
def zookeeper_endpoint() -> str:
    return service_endpoint("zookeeper")


@pytest.fixture(scope="session")
def kafka_endpoint() -> str:
    return service_endpoint("kafka")


@pytest.fixture(scope="session")
def mlserver_endpoint() -> str:
    """gRPC host:port of MLServer serving the `pcvr-test` scikit-learn model."""
    return service_endpoint("mlserver")
