"""Reader slots of dead processes are freed in each LMDB environment a server opens.

A process SIGKILLed inside a read transaction leaves its slot pinning the snapshot it read
(LMDB then reuses no page freed since); `clear_stale_readers` frees exactly those slots,
counts them, and leaves live readers alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from inferstack.interactions.cold.lmdb import LmdbColdStore
from inferstack.interactions.hot.lmdb import LmdbHotTier
from inferstack.kv.lmdb import LmdbStorage
from tests.helpers import kill_mid_read, reading_process

ADAPTERS: dict[str, Callable[[Path], Any]] = {
    "inferstack.kv.lmdb:LmdbStorage": LmdbStorage,
    "inferstack.interactions.hot.lmdb:LmdbHotTier": LmdbHotTier,
    "inferstack.interactions.cold.lmdb:LmdbColdStore": LmdbColdStore,
}


@pytest.fixture(params=sorted(ADAPTERS))
async def opened(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    adapter = ADAPTERS[request.param](tmp_path)
    yield request.param, adapter
    await adapter.close()


def reader_pids(adapter: Any) -> set[int]:
    """Processes holding a slot with a snapshot, from LMDB's own reader table."""
    env = adapter._env if hasattr(adapter, "_env") else adapter._storage._env
    lines = env.readers().splitlines()[1:]  # a header, then pid / thread / txnid
    return {int(line.split()[0]) for line in lines if line.split()[:1] != ["(no"]}


def cleared_count(path: Path) -> float:
    value = REGISTRY.get_sample_value(
        "inferstack_lmdb_stale_readers_cleared_total", {"path": str(path)}
    )
    return value or 0.0


async def test_a_dead_readers_slot_is_freed_and_counted(
    opened: tuple[str, Any], tmp_path: Path
) -> None:
    name, adapter = opened
    before = cleared_count(tmp_path)
    dead = kill_mid_read(name, tmp_path)
    assert dead in reader_pids(adapter)  # the slot outlives its process

    assert adapter.clear_stale_readers() == 1
    assert dead not in reader_pids(adapter)
    assert cleared_count(tmp_path) == before + 1
    assert adapter.clear_stale_readers() == 0  # nothing left to free


async def test_a_live_reader_is_left_alone(opened: tuple[str, Any], tmp_path: Path) -> None:
    name, adapter = opened
    with reading_process(name, tmp_path) as live:
        assert adapter.clear_stale_readers() == 0
        assert live.pid in reader_pids(adapter)
    assert adapter.clear_stale_readers() == 1  # killed on leaving: now it is stale
