"""The interaction store's logic on the embedded tiers (real LMDB): ingest, get, sweep, hydrate,
and what survives a sweeper that stops half way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.events import EventBatch, History
from inferstack.core.registry import Registry, plan
from inferstack.interactions.cold.lmdb import LmdbColdStore
from inferstack.interactions.events import InteractionCatalog
from inferstack.interactions.hot.lmdb import LmdbHotTier
from inferstack.interactions.service import InteractionService

TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes: [{name: price, type: float32}]
    hot_cap: 5
    retention: {count: 8, age: 30d}
    inactivity: 45m
  - name: order
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    inactivity: 45m
"""
START = 1_800_000_000.0  # seconds
MINUTE = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def registry() -> Registry:
    parsed = DefinitionsFile.model_validate(yaml.safe_load(TYPES))
    return plan(Registry(), [], [], [], parsed.interaction_types).registry


async def open_service(
    path: Path, clock: Clock, cold: LmdbColdStore | None = None
) -> InteractionService:
    stored = registry()
    cold = cold or LmdbColdStore(path / "cold")  # one environment per path in a process
    await cold.prepare(stored)
    return InteractionService(
        LmdbHotTier(path / "hot"), cold, InteractionCatalog(stored), clock=clock, lease=30.0
    )


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def service(tmp_path: Path, clock: Clock) -> AsyncIterator[InteractionService]:
    opened = await open_service(tmp_path, clock)
    yield opened
    await opened.close()


def clicks(user: int, first: int, count: int, clock: Clock, step_ms: int = 1000) -> EventBatch:
    now_ms = int(clock.now * 1000)
    numbers = range(first, first + count)
    return EventBatch(
        "click",
        [f"c{user}-{n}" for n in numbers],
        [user] * count,
        [1000 + n for n in numbers],
        [now_ms - (first + count - n) * step_ms for n in numbers],
        {"price": np.array([float(n) for n in numbers], np.float32)},
    )


def ids(history: History) -> list[str]:
    return [v.decode() for v in history.columns["event_id"].to_list()]  # type: ignore[union-attr]


async def test_get_returns_the_newest_first_and_duplicates_once(
    service: InteractionService, clock: Clock
) -> None:
    assert await service.ingest([clicks(7, 0, 4, clock)]) == 4
    await service.ingest([clicks(7, 2, 2, clock)])  # e2, e3 delivered again
    (history,) = await service.get(7, ["click"], limit=10)
    assert ids(history) == ["c7-3", "c7-2", "c7-1", "c7-0"]
    (last_two,) = await service.get(7, ["click"], limit=2)
    assert ids(last_two) == ["c7-3", "c7-2"]
    assert last_two.columns["price"].tolist() == [3.0, 2.0]  # type: ignore[union-attr]


async def test_a_request_is_stored_whole_or_not_at_all(service: InteractionService) -> None:
    good = clicks(9, 0, 2, Clock())
    bad = EventBatch("click", ["x1"], ["not a user"], [1], [0])
    with pytest.raises(InvalidArgumentError, match="batch 1, event 0: field 'user_id'"):
        await service.ingest([good, bad])
    (history,) = await service.get(9, ["click"], limit=10)
    assert history.count == 0


async def test_an_inactive_user_moves_to_the_cold_tier_and_reads_the_same(
    service: InteractionService, clock: Clock
) -> None:
    await service.ingest([clicks(7, 0, 4, clock), clicks(8, 0, 2, clock)])
    before = await service.get(7, ["click"], limit=10)
    assert (await service.sweep()).users == 0  # nobody is idle yet
    clock.now += 46 * MINUTE
    swept = await service.sweep()
    assert swept.users == 2 and swept.events == 6
    assert await service.hot.scheduled(service.catalog.encode_users("click", [7])[0]) is None
    after = await service.get(7, ["click"], limit=10)
    assert ids(after[0]) == ids(before[0])
    assert (await service.sweep()).users == 0  # nothing left to sweep


async def test_hydrate_loads_the_newest_into_the_hot_tier_idempotently(
    service: InteractionService, clock: Clock
) -> None:
    await service.ingest([clicks(7, 0, 7, clock)])  # over the hot cap of 5: swept early
    clock.now += 46 * MINUTE
    await service.sweep()
    user = service.catalog.encode_users("click", [7])[0]
    assert await service.hot.read(user, "click") == []
    loaded = await service.hydrate(7)
    assert loaded == {"click": 5, "order": 0}
    assert await service.hydrate(7) == loaded  # again: nothing doubles
    assert len(await service.hot.read(user, "click")) == 5
    assert await service.hot.scheduled(user) is not None
    (history,) = await service.get(7, ["click"], limit=3)
    assert ids(history) == ["c7-6", "c7-5", "c7-4"]


async def test_sessions_merge_into_one_history_trimmed_by_retention(
    service: InteractionService, clock: Clock
) -> None:
    for session in range(3):
        await service.ingest([clicks(7, session * 4, 4, clock)])
        clock.now += 46 * MINUTE
        await service.sweep()
    (history,) = await service.get(7, ["click"], limit=100)
    assert ids(history) == [f"c7-{n}" for n in range(11, 3, -1)]  # the newest 8 (retention)


async def test_events_arriving_during_a_sweep_stay_hot(
    service: InteractionService, clock: Clock
) -> None:
    await service.ingest([clicks(7, 0, 3, clock)])
    clock.now += 46 * MINUTE
    original = service.cold.write

    async def write_then_ingest(type_name: str, rows: Any, fence: int) -> list[bytes]:
        refused = await original(type_name, rows, fence)
        await service.ingest([clicks(7, 3, 1, clock)])  # the user came back meanwhile
        return refused

    service.cold.write = write_then_ingest  # type: ignore[method-assign]
    await service.sweep()
    service.cold.write = original  # type: ignore[method-assign]
    user = service.catalog.encode_users("click", [7])[0]
    assert [m[1:] for _, m in await service.hot.read(user, "click")] != []
    assert await service.hot.scheduled(user) is not None
    (history,) = await service.get(7, ["click"], limit=10)
    assert ids(history) == ["c7-3", "c7-2", "c7-1", "c7-0"]


async def test_a_sweeper_that_stops_after_writing_loses_and_doubles_nothing(
    service: InteractionService, clock: Clock
) -> None:
    await service.ingest([clicks(7, 0, 3, clock)])
    clock.now += 46 * MINUTE
    original = service.hot.release_many

    async def die(*args: Any) -> list[bool]:
        raise RuntimeError("sweeper killed")

    service.hot.release_many = die  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await service.sweep()
    service.hot.release_many = original  # type: ignore[method-assign]
    assert (await service.sweep()).users == 0  # its claim still holds
    clock.now += 31  # the lease runs out: another sweep takes the user over
    assert (await service.sweep()).users == 1
    (history,) = await service.get(7, ["click"], limit=10)
    assert ids(history) == ["c7-2", "c7-1", "c7-0"]


async def test_two_sweepers_never_flush_a_user_twice(tmp_path: Path, clock: Clock) -> None:
    first = await open_service(tmp_path, clock)
    second = await open_service(tmp_path, clock, first.cold)  # type: ignore[arg-type]
    try:
        await first.ingest([clicks(user, 0, 3, clock) for user in range(40)])
        clock.now += 46 * MINUTE
        results = await asyncio.gather(first.sweep(10), second.sweep(10), first.sweep(30))
        assert sum(r.users for r in results) == 40
        assert sum(r.events for r in results) == 120
        for user in range(40):
            (history,) = await second.get(user, ["click"], limit=10)
            assert history.count == 3
    finally:
        await first.close()
        await second.hot.close()
