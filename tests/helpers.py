"""Small builders shared by tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy

from inferstack.core.documents import DefinitionsFile
from inferstack.core.registry import Registry, plan
from inferstack.kv.cassandra import parse_contact_point
from inferstack.sampledata.generate import definitions_text
from inferstack.server.admission import Gate
from inferstack.server.auth import Authorizer
from inferstack.server.logs import RequestLog
from inferstack.server.pipeline import Pipeline

#: Every feature of the sample's user x category group, in definition order.
AFFINITY_FEATURES = tuple(
    feature.name
    for group in DefinitionsFile.model_validate(yaml.safe_load(definitions_text())).feature_groups
    if group.name == "user_category_affinity"
    for feature in group.features
)


def open_pipeline() -> Pipeline:
    """A worker's call pipeline with no callers configured and the default admission."""
    return Pipeline(Authorizer(), Gate(), RequestLog())


def registry_from(spec: dict[str, Any], base: Registry | None = None) -> Registry:
    parsed = DefinitionsFile.model_validate(spec)
    return plan(base or Registry(), parsed.entities, parsed.feature_groups).registry


def user_spec(*features: dict[str, Any], ttl: str | None = None) -> dict[str, Any]:
    group: dict[str, Any] = {"name": "profile", "entity": "user", "features": list(features)}
    if ttl is not None:
        group["ttl"] = ttl
    return {
        "entities": [{"name": "user", "keys": [{"name": "user_id", "type": "int64"}]}],
        "feature_groups": [group],
    }


def drop_keyspace(endpoint: str, keyspace: str) -> None:
    """Remove a test keyspace with a plain driver session (blocking; run it in a thread)."""
    host, port = parse_contact_point(endpoint)
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=60.0)
    cluster = Cluster(
        contact_points=[(host, port)], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
    finally:
        cluster.shutdown()


_READER = """
import importlib, pathlib, sys, time
module, name = sys.argv[1].split(":")
adapter = getattr(importlib.import_module(module), name)(pathlib.Path(sys.argv[2]))
env = adapter._env if hasattr(adapter, "_env") else adapter._storage._env
txn = env.begin()  # takes a reader slot and pins the current snapshot
print("ready", flush=True)
time.sleep(300)
"""


@contextmanager
def reading_process(adapter: str, path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that opens the LMDB environment at `path` through `adapter` ("module:Class",
    so with the adapter's own flags) and holds a read transaction open; SIGKILLed (inside the
    transaction, so its reader slot is left behind) on leaving."""
    process = subprocess.Popen(
        [sys.executable, "-c", _READER, adapter, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", "the reading process failed"
        yield process
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)


def kill_mid_read(adapter: str, path: Path) -> int:
    """Leave a stale reader slot in the environment at `path` (see `reading_process`);
    returns the dead process's pid."""
    with reading_process(adapter, path) as process:
        return process.pid
