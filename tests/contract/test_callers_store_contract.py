"""The callers document in every config store (embedded files and a real ZooKeeper): saved
compare-and-set, never holding a token, and watched so a revocation is heard within a second.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferstack.configstore.base import ConfigStore
from inferstack.configstore.files import open_files
from inferstack.configstore.zookeeper import open_zookeeper
from inferstack.core.callers import Callers, CallersConflictError, Grant, new_caller

WATCH_LATENCY = 1.0


@pytest.fixture(params=["files", "zookeeper"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConfigStore]:
    opened: ConfigStore
    if request.param == "files":
        opened = open_files(tmp_path)
    else:
        hosts: str = request.getfixturevalue("zookeeper_endpoint")
        opened = open_zookeeper(hosts, f"/test-callers-{uuid.uuid4().hex}")
    yield opened
    opened.close()


def test_callers_are_saved_compare_and_set(store: ConfigStore) -> None:
    assert not store.callers.load().required
    caller, token = new_caller("app", [Grant.parse("read:model/*")], 1.0)
    store.callers.save(Callers().with_caller(caller), 0)
    with pytest.raises(CallersConflictError, match="changed meanwhile"):
        store.callers.save(Callers().with_caller(caller), 0)
    loaded = store.callers.load()
    assert loaded.revision == 1 and loaded.callers["app"] == caller
    assert loaded.callers["app"].verifies(token)
    assert token not in loaded.encode().decode()


def test_a_revocation_reaches_a_watch_within_a_second(store: ConfigStore) -> None:
    caller, _ = new_caller("app", [Grant.parse("admin:*")], 1.0)
    store.callers.save(Callers().with_caller(caller), 0)
    seen: list[Callers] = []
    changed = threading.Event()

    def on_change(callers: Callers) -> None:
        seen.append(callers)
        changed.set()

    watch = store.callers.watch(on_change)
    try:
        deadline = time.monotonic() + 10  # the first delivery: the current document
        while not any("app" in c.callers for c in seen):
            assert time.monotonic() < deadline
            changed.wait(0.05)
        store.callers.save(store.callers.load().without("app"), 1)
        revoked = time.monotonic()
        while not any(c.revision == 2 and not c.callers for c in seen):
            assert time.monotonic() - revoked < WATCH_LATENCY, "revocation not heard in 1 s"
            changed.wait(0.02)
    finally:
        watch.stop()
