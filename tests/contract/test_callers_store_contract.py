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
from inferstack.configstore.files import FileConfigStore
from inferstack.configstore.zookeeper import ZooKeeperConfigStore
from inferstack.core.callers import Callers, CallersConflictError, Grant, new_caller

WATCH_LATENCY = 1.0


@pytest.fixture(params=["files", "zookeeper"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConfigStore]:
    opened: ConfigStore
    if request.param == "files":
        opened = FileConfigStore(tmp_path)
    else:
        hosts: str = request.getfixturevalue("zookeeper_endpoint")
        opened = ZooKeeperConfigStore(hosts, f"/test-callers-{uuid.uuid4().hex}")
    yield opened
    opened.close()


def test_callers_are_saved_compare_and_set(store: ConfigStore) -> None:
    assert not store.load_callers().required
    caller, token = new_caller("app", [Grant.parse("read:model/*")], 1.0)
    store.save_callers(Callers().with_caller(caller), 0)
    with pytest.raises(CallersConflictError, match="changed meanwhile"):
        store.save_callers(Callers().with_caller(caller), 0)
    loaded = store.load_callers()
    assert loaded.revision == 1 and loaded.callers["app"] == caller
    assert loaded.callers["app"].verifies(token)
    assert token not in loaded.encode().decode()


def test_a_revocation_reaches_a_watch_within_a_second(store: ConfigStore) -> None:
    caller, _ = new_caller("app", [Grant.parse("admin:*")], 1.0)
    store.save_callers(Callers().with_caller(caller), 0)
    seen: list[Callers] = []
    changed = threading.Event()

    def on_change(callers: Callers) -> None:
        seen.append(callers)
        changed.set()

    watch = store.watch_callers(on_change)
    try:
        deadline = time.monotonic() + 10  # the first delivery: the current document
        while not any("app" in c.callers for c in seen):
            assert time.monotonic() < deadline
            changed.wait(0.05)
        store.save_callers(store.load_callers().without("app"), 1)
        revoked = time.monotonic()
        while not any(c.revision == 2 and not c.callers for c in seen):
            assert time.monotonic() - revoked < WATCH_LATENCY, "revocation not heard in 1 s"
            changed.wait(0.02)
    finally:
        watch.stop()
