"""The packaging split: a plain `pip install inferstack` has the clients and the embedded server;
the adapters to external systems come with extras (cassandra, redis, kafka, zookeeper, onnx,
console). The clients must not need them, nor the server's own dependencies."""

import subprocess
import sys

# Modules of the extras, and two of the server's (LMDB, aiohttp) a client has no use for.
NOT_FOR_CLIENTS = (
    "acsylla",
    "kazoo",
    "confluent_kafka",
    "onnxruntime",
    "redis",
    "jinja2",
    "lmdb",
    "aiohttp",
)


def test_importing_the_clients_loads_no_optional_or_server_dependency() -> None:
    # A fresh interpreter: this one has imported much more by now.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import inferstack.client, sys; "
            f"print(sorted(m for m in {NOT_FOR_CLIENTS!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert loaded == "[]"
