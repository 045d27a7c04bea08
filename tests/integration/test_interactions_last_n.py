""" "Last N" is the newest N by event time, whichever tier holds them, on the embedded tiers
(LMDB) and on Redis + Cassandra.

The hot tier answers alone only where its coverage proves the answer; these are the cases an
auditor found where it answered alone and wrong: events that arrive late (older than the
user's newest, after the newer ones went cold), and a hydrate whose copies a cap trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from inferstack.core.events import EventBatch
from inferstack.interactions.cold.base import ColdStore
from inferstack.interactions.service import InteractionService
from tests.integration import test_interactions_durability as durability
from tests.integration.test_interactions_durability import (
    AHEAD,
    Clock,
    SharedTiers,
    event_ids,
    now_ms,
    open_service,
)

pytestmark = pytest.mark.services
tiers = durability.tiers  # the same two deployments: embedded, and Redis + Cassandra
USER = 42
CAP = 50  # the click type's hot_cap in the durability tests' definitions


class CountingReads(durability.ColdStoreWrapper):
    """The cold store, counting the reads a Get makes."""

    def __init__(self, inner: ColdStore) -> None:
        super().__init__(inner)
        self.reads = 0

    async def read(
        self, type: str, users: Sequence[bytes], *, latest: bool = False
    ) -> list[bytes | None]:
        self.reads += 1
        return await self.inner.read(type, users, latest=latest)


def clicks(tag: str, stamps: Sequence[int]) -> EventBatch:
    return EventBatch(
        "click",
        [f"{tag}{i}" for i in range(len(stamps))],
        [USER] * len(stamps),
        list(range(len(stamps))),
        list(stamps),
    )


async def service_of(tiers: SharedTiers) -> tuple[InteractionService, Clock, CountingReads]:
    clock = Clock()
    service = await open_service(tiers, clock)
    counting = CountingReads(service.cold)
    service.cold = counting
    return service, clock, counting


async def sweep_all(service: InteractionService, clock: Clock) -> None:
    clock.ahead += AHEAD  # every user is idle now
    while (await service.sweep(limit=1000)).users:
        pass


async def last(service: InteractionService, count: int, since: int | None = None) -> list[str]:
    (found,) = await service.get(USER, ["click"], limit=count, since=since)
    return event_ids(found)


async def test_late_events_do_not_hide_newer_cold_ones(tiers: SharedTiers) -> None:
    service, clock, _ = await service_of(tiers)
    try:
        base = now_ms() - 3_600_000
        await service.ingest([clicks("on-time", [base + 1000 * i for i in range(20)])])
        await sweep_all(service, clock)
        # Six events arrive late: older than every event the cold tier holds.
        await service.ingest([clicks("late", [base - 60_000 + i for i in range(6)])])
        assert await last(service, 6) == [f"on-time{i}" for i in range(19, 13, -1)]
        assert await last(service, 22) == [
            *(f"on-time{i}" for i in range(19, -1, -1)),
            "late5",
            "late4",
        ]
        assert await last(service, 3, since=base - 60_000) == [
            "on-time19",
            "on-time18",
            "on-time17",
        ]
    finally:
        await service.close()


async def test_a_hydrate_whose_copies_a_cap_trimmed_does_not_answer_alone(
    tiers: SharedTiers,
) -> None:
    service, clock, _ = await service_of(tiers)
    try:
        base = now_ms() - 3_600_000
        await service.ingest([clicks("old", [base + 1000 * i for i in range(CAP + 10)])])
        await sweep_all(service, clock)
        clock.ahead = 0
        assert (await service.hydrate(USER, ["click"]))["click"] == CAP  # the newest 50 copies
        # More late events than the cap: the cap trims every copy, keeping the new events.
        late = [base - 600_000 + i for i in range(CAP + 5)]
        await service.ingest([clicks("late", late)])
        assert await last(service, 6) == [f"old{i}" for i in range(CAP + 9, CAP + 3, -1)]
    finally:
        await service.close()


async def test_the_hot_tier_answers_alone_where_its_coverage_proves_it(
    tiers: SharedTiers,
) -> None:
    service, clock, cold = await service_of(tiers)
    try:
        base = now_ms() - 3_600_000
        await service.ingest([clicks("old", [base + 1000 * i for i in range(CAP + 10)])])
        await service.get(USER, ["click"], limit=6)
        assert cold.reads == 1  # never swept or hydrated: the cold tier might hold newer
        await sweep_all(service, clock)
        clock.ahead = 0
        await service.hydrate(USER, ["click"])
        # New events after the hydrate: the newest 6 are hot and provably so.
        await service.ingest([clicks("new", [now_ms() - 1000 + i for i in range(4)])])
        reads = cold.reads
        assert await last(service, 6) == ["new3", "new2", "new1", "new0", "old59", "old58"]
        assert cold.reads == reads
        # More than the hot tier holds: the cold tier is read, and still nothing doubles.
        answer = await last(service, CAP + 20)
        assert cold.reads == reads + 1
        assert (
            answer
            == [*(f"new{i}" for i in range(3, -1, -1)), *(f"old{i}" for i in range(59, -1, -1))][
                : CAP + 20
            ]
        )
    finally:
        await service.close()
