"""The HotTier contract, run against every adapter.

`lmdb` is LmdbHotTier in a fresh directory per test; `redis` is RedisHotTier against the real
redis-server that scripts/services.py starts, with a fresh key prefix per test. Each test gets
a `store` that opens as many tiers over the same data as it needs (two sweepers, say). Checks
of one adapter follow the contract at the end: Redis key layout, Redis down, Redis killed with
SIGKILL (a redis-server of our own, on the repo's redis.conf), LMDB claims across processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import string
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from inferstack.core.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError
from inferstack.interactions.hot.base import COLD, NEW, Claim, HotEvent, HotTier, Release
from inferstack.interactions.hot.batches import DUE_NOW, MAX_USER_BYTES
from inferstack.interactions.hot.lmdb import LmdbHotTier
from inferstack.interactions.hot.redis import RedisHotTier

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000  # a plausible unix ms; tests add offsets to it
LATER = T0 + 3_600_000  # a deadline no test reaches by accident
CAPS = {"click": 100, "order": 100}
LEASE = 60_000

ADAPTERS = [
    pytest.param("lmdb", id="lmdb"),
    pytest.param("redis", id="redis", marks=pytest.mark.services),
]


def member(tag: object, origin: bytes = NEW) -> bytes:
    """Something shaped like a stored event: origin byte + a row (any bytes will do here)."""
    return origin + b"\x01\x00\x00\x01\x00\x00\x00\x00" + str(tag).encode()


def click(user: bytes, ts: int, tag: object = None, origin: bytes = NEW) -> HotEvent:
    return HotEvent("click", user, ts, member(ts if tag is None else tag, origin))


class Store:
    """Opens tiers over one hot tier's data (one LMDB path, or one Redis prefix)."""

    def __init__(self, kind: str, tmp: Path, endpoint: str | None) -> None:
        self.kind = kind
        self.path = tmp / "hot"
        self.endpoint = endpoint
        self.prefix = f"test:{uuid.uuid4().hex}:"
        self.opened: list[HotTier] = []

    def open(self) -> HotTier:
        tier: HotTier
        if self.kind == "lmdb":
            tier = LmdbHotTier(self.path)
        else:
            assert self.endpoint is not None
            # A generous timeout: the contract is about behaviour, not a loaded machine.
            tier = RedisHotTier(self.endpoint, prefix=self.prefix, timeout=5.0)
        self.opened.append(tier)
        return tier

    async def close(self) -> None:
        for tier in self.opened:
            await tier.close()
        if self.endpoint is not None:
            await delete_prefixed(self.endpoint, self.prefix)


async def delete_prefixed(endpoint: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(f"redis://{endpoint}")
    try:
        names = [name async for name in client.scan_iter(match=f"{prefix}*", count=1000)]
        if names:
            await client.unlink(*names)
    finally:
        await client.aclose()


@pytest.fixture(params=ADAPTERS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    endpoint = request.getfixturevalue("redis_endpoint") if request.param == "redis" else None
    opened = Store(request.param, tmp_path, endpoint)
    yield opened
    await opened.close()


@pytest.fixture
def tier(store: Store) -> HotTier:
    return store.open()


async def everything(tier: HotTier, user: bytes, *types: str) -> dict[str, list[bytes]]:
    found = await tier.events_of(user, types or ("click",))
    return {name: [m for _, m in items] for name, items in found.items()}


# -- add and read -------------------------------------------------------------------------


async def test_read_is_newest_first_with_limit_and_since(tier: HotTier) -> None:
    user = b"u1"
    await tier.add([click(user, T0 + i) for i in (3, 1, 4, 0, 2)], CAPS, {user: LATER})
    assert await tier.read(user, "click") == [(T0 + i, member(T0 + i)) for i in (4, 3, 2, 1, 0)]
    assert await tier.read(user, "click", limit=2) == [
        (T0 + 4, member(T0 + 4)),
        (T0 + 3, member(T0 + 3)),
    ]
    assert [ts for ts, _ in await tier.read(user, "click", since=T0 + 2)] == [
        T0 + 4,
        T0 + 3,
        T0 + 2,
    ]
    assert [ts for ts, _ in await tier.read(user, "click", limit=1, since=T0 + 2)] == [T0 + 4]
    assert await tier.read(user, "click", limit=0) == []
    assert await tier.read(user, "click", since=T0 + 5) == []


async def test_types_and_users_are_kept_apart(tier: HotTier) -> None:
    events = [
        click(b"a", T0, "a-click"),
        HotEvent("order", b"a", T0 + 1, member("a-order")),
        click(b"ab", T0 + 2, "ab-click"),
        click(b"a\x00", T0 + 3, "a0-click"),
    ]
    await tier.add(events, CAPS, {b"a": LATER, b"ab": LATER, b"a\x00": LATER})
    assert await tier.read(b"a", "click") == [(T0, member("a-click"))]
    assert await tier.read(b"a", "order") == [(T0 + 1, member("a-order"))]
    assert await tier.read(b"ab", "click") == [(T0 + 2, member("ab-click"))]
    assert await tier.read(b"a\x00", "click") == [(T0 + 3, member("a0-click"))]
    assert await tier.read(b"b", "click") == []
    assert await tier.read(b"a", "share") == []


async def test_events_with_the_same_time_are_all_kept(tier: HotTier) -> None:
    await tier.add([click(b"u", T0, tag) for tag in range(5)], CAPS, {b"u": LATER})
    assert sorted(m for _, m in await tier.read(b"u", "click")) == sorted(
        member(tag) for tag in range(5)
    )


async def test_the_same_member_twice_is_stored_once(tier: HotTier) -> None:
    user = b"dup"
    twice = [click(user, T0, "e1"), click(user, T0, "e1"), click(user, T0 + 1, "e2")]
    await tier.add(twice, CAPS, {user: LATER})
    await tier.add([click(user, T0, "e1")], CAPS, {user: LATER})  # redelivered later
    assert await tier.read(user, "click") == [(T0 + 1, member("e2")), (T0, member("e1"))]
    # The same event from the cold tier is another member (the sweeper de-duplicates by id).
    await tier.add([click(user, T0, "e1", COLD)], CAPS, {user: LATER})
    assert len(await tier.read(user, "click")) == 3


async def test_events_of_is_oldest_first_per_type(tier: HotTier) -> None:
    user = b"sweep-me"
    await tier.add(
        [click(user, T0 + 2), click(user, T0 + 1), HotEvent("order", user, T0, member("o"))],
        CAPS,
        {user: LATER},
    )
    found = await tier.events_of(user, ["click", "order", "share"])
    assert found == {
        "click": [(T0 + 1, member(T0 + 1)), (T0 + 2, member(T0 + 2))],
        "order": [(T0, member("o"))],
        "share": [],
    }


# -- caps ---------------------------------------------------------------------------------


async def test_a_cap_trims_the_oldest_cold_members_only(tier: HotTier) -> None:
    user = b"capped"
    caps = {"click": 5}
    old = [(T0 + i, member(f"cold{i}", COLD)) for i in range(5)]
    await tier.load(user, {"click": old}, caps, LATER)
    # Three NEW events older than some COLD ones: NEW ones stay, the 3 oldest COLD go.
    await tier.add([click(user, T0 + 1, f"new{i}") for i in range(3)], caps, {user: LATER})
    kept = await everything(tier, user)
    assert sorted(kept["click"]) == sorted(
        [member(f"new{i}") for i in range(3)] + [member(f"cold{i}", COLD) for i in (3, 4)]
    )
    assert await tier.scheduled(user) == LATER  # within the cap: not due early


async def test_new_members_beyond_the_cap_all_stay_and_make_the_user_due_now(
    tier: HotTier,
) -> None:
    user = b"busy"
    caps = {"click": 3}
    await tier.load(user, {"click": [(T0 - 1, member("c", COLD))]}, caps, LATER)
    await tier.add([click(user, T0 + i) for i in range(4)], caps, {user: LATER})
    assert await everything(tier, user) == {"click": [member(T0 + i) for i in range(4)]}
    assert await tier.scheduled(user) == DUE_NOW
    # Due now sticks: a later add within its cap does not push the user back.
    await tier.add([HotEvent("order", user, T0 + 9, member("o"))], CAPS, {user: LATER + 1})
    assert await tier.scheduled(user) == DUE_NOW
    claims = await tier.claim(T0, LEASE, 10)
    assert [c.user for c in claims] == [user]


async def test_a_cap_applies_to_a_batch_larger_than_it(tier: HotTier) -> None:
    user = b"burst"
    await tier.load(user, {"click": [(T0 + i, member(i, COLD)) for i in range(3)]}, CAPS, LATER)
    await tier.add([click(user, T0 + 10 + i) for i in range(3)], {"click": 4}, {user: LATER})
    kept = (await everything(tier, user))["click"]
    assert kept == [member(2, COLD)] + [member(T0 + 10 + i) for i in range(3)]


# -- deadlines ----------------------------------------------------------------------------


async def test_deadlines_only_move_forward(tier: HotTier) -> None:
    user = b"idle"
    assert await tier.scheduled(user) is None
    await tier.add([click(user, T0)], CAPS, {user: T0 + 1000})
    assert await tier.scheduled(user) == T0 + 1000
    await tier.add([click(user, T0 + 1)], CAPS, {user: T0 + 500})
    assert await tier.scheduled(user) == T0 + 1000
    await tier.add([click(user, T0 + 2)], CAPS, {user: T0 + 2000})
    assert await tier.scheduled(user) == T0 + 2000


async def test_each_user_of_a_batch_gets_its_deadline(tier: HotTier) -> None:
    users = [b"x", b"y", b"z"]
    deadlines = {user: T0 + 100 * i for i, user in enumerate(users)}
    await tier.add([click(user, T0) for user in users], CAPS, deadlines)
    assert [await tier.scheduled(user) for user in users] == [deadlines[u] for u in users]


# -- claims -------------------------------------------------------------------------------


async def test_claim_takes_due_users_only_in_deadline_order(tier: HotTier) -> None:
    deadlines = {b"c": T0 + 300, b"a": T0 + 100, b"b": T0 + 200}
    await tier.add([click(user, T0) for user in deadlines], CAPS, deadlines)
    assert await tier.claim(T0 + 99, LEASE, 10) == []
    claims = await tier.claim(T0 + 200, LEASE, 10)
    assert [c.user for c in claims] == [b"a", b"b"]
    assert {c.token for c in claims} == {T0 + 200 + LEASE}
    assert await tier.scheduled(b"a") is None  # off the schedule while claimed
    assert await tier.scheduled(b"c") == T0 + 300
    assert await tier.claim(T0 + 200, LEASE, 10) == []  # under lease: nobody else gets them


async def test_claim_respects_its_limit(tier: HotTier) -> None:
    users = [f"user{i:02}".encode() for i in range(10)]
    await tier.add(
        [click(user, T0) for user in users], CAPS, {user: T0 + i for i, user in enumerate(users)}
    )
    first = await tier.claim(LATER, LEASE, 4)
    second = await tier.claim(LATER, LEASE, 4)
    third = await tier.claim(LATER, LEASE, 4)
    assert [c.user for c in first + second + third] == users
    assert (len(first), len(second), len(third)) == (4, 4, 2)
    assert await tier.claim(LATER, LEASE, 0) == []


async def test_concurrent_claimers_never_get_the_same_user(store: Store) -> None:
    sweepers = [store.open(), store.open()]
    users = [f"due{i:03}".encode() for i in range(60)]
    await sweepers[0].add([click(user, T0) for user in users], CAPS, dict.fromkeys(users, T0))

    async def sweep(tier: HotTier) -> list[bytes]:
        got: list[bytes] = []
        while claims := await tier.claim(T0 + 1, LEASE, 3):
            got += [c.user for c in claims]
        return got

    results = await asyncio.gather(*(sweep(tier) for tier in sweepers * 2))
    claimed = [user for result in results for user in result]
    assert sorted(claimed) == users  # every due user exactly once: no overlap, none missed


async def test_an_expired_lease_is_claimable_again(tier: HotTier) -> None:
    user = b"crashed-sweeper"
    await tier.add([click(user, T0)], CAPS, {user: T0})
    [first] = await tier.claim(T0, 50, 10)
    assert first.token == T0 + 50
    assert await tier.claim(T0 + 49, 50, 10) == []
    [second] = await tier.claim(T0 + 50, 50, 10)
    assert (second.user, second.token) == (user, T0 + 100)
    # The first sweeper wakes up: its release is refused and removes nothing.
    assert await tier.release(first, {"click": [member(T0)]}) is False
    assert await tier.read(user, "click") == [(T0, member(T0))]
    assert await tier.release(second, {"click": [member(T0)]}) is True
    assert await tier.read(user, "click") == []


async def test_a_user_with_new_events_under_lease_waits_for_the_lease(tier: HotTier) -> None:
    user = b"still-active"
    await tier.add([click(user, T0)], CAPS, {user: T0})
    [held] = await tier.claim(T0, LEASE, 10)
    await tier.add([click(user, T0 + 1)], CAPS, {user: T0 + 10})  # arrives during the flush
    assert await tier.scheduled(user) == T0 + 10
    assert await tier.claim(T0 + 20, LEASE, 10) == []  # due, but the lease still runs
    assert await tier.scheduled(user) == T0 + 10
    [again] = await tier.claim(held.token, LEASE, 10)  # the lease ran out: claimable
    assert again.user == user
    assert await tier.scheduled(user) is None


# -- release ------------------------------------------------------------------------------


async def test_release_removes_exactly_the_moved_members(tier: HotTier) -> None:
    user = b"flushed"
    await tier.add(
        [click(user, T0 + i) for i in range(3)] + [HotEvent("order", user, T0, member("o"))],
        CAPS,
        {user: T0},
    )
    [claim] = await tier.claim(T0, LEASE, 10)
    snapshot = await everything(tier, user, "click", "order")
    # Events that arrive during the flush: a new type too.
    during = [click(user, T0 + 5), HotEvent("share", user, T0 + 6, member("s"))]
    await tier.add(during, {**CAPS, "share": 10}, {user: T0 + 1000})
    assert await tier.release(claim, snapshot) is True
    assert await everything(tier, user, "click", "order", "share") == {
        "click": [member(T0 + 5)],
        "order": [],
        "share": [member("s")],
    }
    assert await tier.scheduled(user) == T0 + 1000  # still scheduled for what arrived
    [next_claim] = await tier.claim(T0 + 1000, LEASE, 10)
    assert next_claim.user == user


async def test_releases_in_flight_together_each_apply(tier: HotTier) -> None:
    users = [f"many{i:02}".encode() for i in range(12)]
    events = [click(user, T0 + i) for i, user in enumerate(users)]
    await tier.add(events, CAPS, dict.fromkeys(users, T0))
    claims = await tier.claim(T0, LEASE, len(users))
    done = await asyncio.gather(
        *(tier.release(c, {"click": [member(T0 + users.index(c.user))]}) for c in claims),
        tier.release(claims[0], {"click": [member(T0)]}),  # the same claim again
    )
    assert done[1:-1] == [True] * (len(users) - 1)
    assert sorted([done[0], done[-1]]) == [False, True]  # a claim ends once, whichever won
    assert [await tier.read(user, "click") for user in users] == [[]] * len(users)
    assert await tier.claim(LATER, LEASE, 100) == []


async def test_release_of_everything_leaves_nothing_behind(tier: HotTier) -> None:
    user = b"gone"
    await tier.add([click(user, T0), click(user, T0 + 1)], CAPS, {user: T0})
    [claim] = await tier.claim(T0, LEASE, 10)
    assert await tier.release(claim, await everything(tier, user)) is True
    assert await tier.read(user, "click") == []
    assert await tier.scheduled(user) is None
    assert await tier.claim(LATER * 2, LEASE, 10) == []  # neither scheduled nor leased
    assert await tier.release(claim, {}) is False  # a claim ends once


async def test_members_left_out_of_a_release_keep_the_user_scheduled(tier: HotTier) -> None:
    user = b"partial"
    await tier.add([click(user, T0), HotEvent("order", user, T0, member("o"))], CAPS, {user: T0})
    [claim] = await tier.claim(T0, LEASE, 10)
    assert await tier.release(claim, {"click": [member(T0)]}) is True
    assert await everything(tier, user, "click", "order") == {"click": [], "order": [member("o")]}
    assert await tier.scheduled(user) == claim.token  # retried when the lease would have ended
    [retry] = await tier.claim(claim.token, LEASE, 10)
    assert retry.user == user


async def test_release_ignores_members_no_longer_hot(tier: HotTier) -> None:
    user = b"trimmed"
    await tier.add([click(user, T0)], CAPS, {user: T0})
    [claim] = await tier.claim(T0, LEASE, 10)
    moved = {"click": [member(T0), member("never-stored")], "order": [member("x")]}
    assert await tier.release(claim, moved) is True
    assert await tier.read(user, "click") == []
    assert await tier.scheduled(user) is None


async def test_cap_counts_stay_right_after_a_release(tier: HotTier) -> None:
    user = b"recount"
    caps = {"click": 3}
    await tier.load(user, {"click": [(T0 + i, member(i, COLD)) for i in range(3)]}, caps, T0)
    [claim] = await tier.claim(T0, LEASE, 10)
    assert await tier.release(claim, {"click": [member(0, COLD)]}) is True
    # Two COLD members are left; two NEW ones make four: the oldest COLD one goes.
    await tier.add([click(user, T0 + 10), click(user, T0 + 11)], caps, {user: LATER})
    assert (await everything(tier, user))["click"] == [
        member(2, COLD),
        member(T0 + 10),
        member(T0 + 11),
    ]
    assert await tier.scheduled(user) == LATER


# -- load (hydrate) -------------------------------------------------------------------------


async def test_load_is_idempotent_and_keeps_the_newest_up_to_the_cap(tier: HotTier) -> None:
    user = b"returning"
    history = {
        "click": [(T0 + i, member(f"c{i}", COLD)) for i in range(10)],
        "order": [(T0, member("o", COLD))],
    }
    caps = {"click": 4, "order": 10}
    for _ in range(2):
        await tier.load(user, history, caps, T0 + 500)
        assert await tier.read(user, "click") == [
            (T0 + i, member(f"c{i}", COLD)) for i in (9, 8, 7, 6)
        ]
        assert await tier.read(user, "order") == [(T0, member("o", COLD))]
        assert await tier.scheduled(user) == T0 + 500


async def test_load_moves_the_deadline_forward_only(tier: HotTier) -> None:
    user = b"hydrated"
    history = {"click": [(T0, member("c", COLD))]}
    await tier.load(user, history, CAPS, T0 + 500)
    await tier.load(user, history, CAPS, T0 + 100)
    assert await tier.scheduled(user) == T0 + 500
    await tier.load(user, history, CAPS, T0 + 900)
    assert await tier.scheduled(user) == T0 + 900


async def test_load_keeps_the_new_members_of_an_active_user(tier: HotTier) -> None:
    user = b"active"
    await tier.add([click(user, T0 + 100 + i) for i in range(3)], CAPS, {user: T0 + 500})
    history = {"click": [(T0 + i, member(i, COLD)) for i in range(5)]}
    await tier.load(user, history, {"click": 4}, T0 + 200)
    assert (await everything(tier, user))["click"] == [member(4, COLD)] + [
        member(T0 + 100 + i) for i in range(3)
    ]
    assert await tier.scheduled(user) == T0 + 500


async def test_load_of_nothing_still_schedules(tier: HotTier) -> None:
    await tier.load(b"new-user", {}, CAPS, T0 + 5)
    await tier.load(b"new-user", {"click": []}, {}, T0 + 5)
    assert await tier.scheduled(b"new-user") == T0 + 5


async def test_many_users_at_once_read_and_release_as_one_by_one(tier: HotTier) -> None:
    users = [b"m1", b"m2", b"m3", b"m4"]
    await tier.add([click(u, T0 + i, f"{u!r}{i}") for u in users for i in range(3)], CAPS,
                   {u: T0 for u in users})  # fmt: skip
    await tier.add([HotEvent("order", b"m2", T0, member("o"))], CAPS, {b"m2": T0})
    found = await tier.events_of_many([b"m3", b"nobody", b"m2"], ["click", "order"])
    assert found == [
        await tier.events_of(b"m3", ["click", "order"]),
        {"click": [], "order": []},
        await tier.events_of(b"m2", ["click", "order"]),
    ]
    assert [m for _, m in found[2]["order"]] == [member("o")]
    claims = {claim.user: claim for claim in await tier.claim(T0, LEASE, 10)}
    stale = Claim(b"m3", claims[b"m3"].token - 1)  # a lease that is no longer the user's
    releases = [
        Release(claims[b"m1"], {"click": [m for _, m in found[0]["click"]][:0]}),
        Release(stale, {"click": [m for _, m in found[0]["click"]]}),
        Release(claims[b"m2"], {"click": [m for _, m in found[2]["click"]]}, {"click": T0 + 3}),
        Release(claims[b"m2"], {}),  # a claim ends once
    ]
    assert await tier.release_many(releases) == [True, False, True, False]
    assert await tier.read(b"m3", "click") != []  # the stale release removed nothing
    assert await tier.read(b"m2", "click") == []
    assert (await tier.read_range(b"m2", "order")).complete_from is None
    assert await tier.release_many([]) == []
    assert await tier.events_of_many([], ["click"]) == []


async def test_a_sweep_of_more_users_than_one_pipeline_holds(tier: HotTier) -> None:
    users = [f"p{n}".encode() for n in range(130)]  # Redis sends 50 users per pipeline
    await tier.add([click(u, T0 + i, f"{u!r}{i}") for u in users for i in range(3)], CAPS,
                   {u: T0 for u in users})  # fmt: skip
    found = await tier.events_of_many(users, ["click"])
    assert [len(events["click"]) for events in found] == [3] * len(users)
    assert found[77] == await tier.events_of(users[77], ["click"])
    claims = await tier.claim(T0, LEASE, 1000)
    by_user = {claim.user: claim for claim in claims}
    releases = [
        Release(by_user[u], {"click": [m for _, m in events["click"]]})
        for u, events in zip(users, found, strict=True)
    ]
    assert await tier.release_many(releases) == [True] * len(users)
    assert await tier.events_of_many(users[::10], ["click"]) == [{"click": []}] * 13


# -- fences and coverage -------------------------------------------------------------------


async def test_every_claim_and_release_moves_the_fence_forward(tier: HotTier) -> None:
    users = [b"f1", b"f2"]
    await tier.add([click(u, T0) for u in users], CAPS, {u: T0 for u in users})
    assert await tier.fence() == 0  # nothing was ever claimed
    first = await tier.claim(T0 + 1, LEASE, 10)
    # At least the claim's time in microseconds (Cassandra orders writes by it) ...
    assert first == [Claim(u, T0 + 1 + LEASE, (T0 + 1) * 1000) for u in users]
    # ... and past every fence before, even at the same time on the clock.
    await tier.add([click(b"f3", T0)], CAPS, {b"f3": T0})
    claims = await tier.claim(T0 + 1, LEASE, 10)
    assert [claim.user for claim in claims] == [b"f3"]
    fence = claims[0].fence
    assert fence == (T0 + 1) * 1000 + 1
    assert await tier.fence() == fence
    assert await tier.claim(T0 + 3, LEASE, 10) == []  # nobody due: no move
    assert await tier.fence() == fence
    assert await tier.release(claims[0], {"click": [member(T0)]})
    assert await tier.fence() == fence + 1
    assert not await tier.release(claims[0], {})  # refused: no move either
    assert await tier.fence() == fence + 1


async def test_coverage_is_unknown_until_a_release_or_a_load_gives_it(tier: HotTier) -> None:
    user = b"cover"
    await tier.add([click(user, T0 + i) for i in range(3)], CAPS, {user: T0})
    assert (await tier.read_range(user, "click")).complete_from is None
    (claim,) = await tier.claim(T0, LEASE, 10)
    await tier.add([click(user, T0 + 10)], CAPS, {user: T0 + 20})  # arrives during the flush
    moved = [member(T0 + i) for i in range(3)]
    assert await tier.release(claim, {"click": moved}, {"click": T0 + 3})
    found = await tier.read_range(user, "click", limit=5)
    assert found.events == [(T0 + 10, member(T0 + 10))]
    assert found.complete_from == T0 + 3
    assert (await tier.read_range(user, "order")).complete_from is None
    assert (await tier.read_range(user, "click", limit=0)).events == []


async def test_a_load_covers_only_if_no_flush_happened_since_its_fence(tier: HotTier) -> None:
    user, other = b"hydrated", b"swept"
    history = {"click": [(T0 + i, member(i, COLD)) for i in range(3)]}
    await tier.add([click(other, T0)], CAPS, {other: T0})
    seen = await tier.fence()
    (claim,) = await tier.claim(T0, LEASE, 10)  # a flush of someone else moves the fence
    await tier.load(user, history, CAPS, LATER, {"click": T0}, seen)
    assert (await tier.read_range(user, "click")).complete_from is None
    await tier.load(user, history, CAPS, LATER, {"click": T0 + 1}, await tier.fence())
    assert (await tier.read_range(user, "click")).complete_from == T0 + 1
    # A later load claiming less keeps the wider coverage (both are true).
    await tier.load(user, history, CAPS, LATER, {"click": T0 + 2}, await tier.fence())
    assert (await tier.read_range(user, "click")).complete_from == T0 + 1
    assert await tier.release(claim, {"click": [member(T0)]})


async def test_trimming_a_cold_copy_raises_the_coverage_past_it(tier: HotTier) -> None:
    user = b"trimmed"
    history = {"click": [(T0 + 100 + i, member(i, COLD)) for i in range(4)]}
    caps = {"click": 4}
    await tier.load(user, history, caps, LATER, {"click": T0 + 100}, await tier.fence())
    assert (await tier.read_range(user, "click")).complete_from == T0 + 100
    late = [click(user, T0 + i, f"late{i}") for i in range(3)]  # older than every copy
    await tier.add(late, caps, {user: LATER})
    found = await tier.read_range(user, "click")
    assert [m for _, m in found.events] == [member(3, COLD)] + [m.member for m in reversed(late)]
    assert found.complete_from == T0 + 103  # the copies up to T0 + 102 are gone


async def test_coverage_goes_with_the_last_member(tier: HotTier) -> None:
    user = b"gone"
    history = {"click": [(T0, member(0, COLD))]}
    await tier.load(user, history, CAPS, T0, {"click": T0}, await tier.fence())
    (claim,) = await tier.claim(T0, LEASE, 10)
    assert await tier.release(claim, {"click": [member(0, COLD)]}, {"click": T0 + 1})
    await tier.add([click(user, T0 + 5)], CAPS, {user: LATER})
    assert (await tier.read_range(user, "click")).complete_from is None


# -- binary keys --------------------------------------------------------------------------


async def test_user_keys_may_hold_every_byte_value(tier: HotTier) -> None:
    users = [bytes([value]) for value in range(256)]
    users += [b"", bytes(range(256)), b"\x00" * 8, b"\xff" * 8, b"::", b"h:click:", b"*?[]"]
    events = [click(user, T0 + i, f"e{i}") for i, user in enumerate(users)]
    await tier.add(events, CAPS, {user: T0 + i for i, user in enumerate(users)})
    for i, user in enumerate(users):
        assert await tier.read(user, "click") == [(T0 + i, member(f"e{i}"))], user
    claims = await tier.claim(LATER, LEASE, len(users) + 1)
    assert [c.user for c in claims] == users
    for i, claim in enumerate(claims):
        assert await tier.release(claim, {"click": [member(f"e{i}")]}) is True
    assert all([await tier.read(user, "click") == [] for user in users])


# -- bad input ----------------------------------------------------------------------------

BAD_BATCHES = [
    pytest.param([HotEvent("share", b"u", T0, member(1))], CAPS, "no cap", id="cap-missing"),
    pytest.param([click(b"v", T0)], CAPS, "no deadline", id="deadline-missing"),
    pytest.param([HotEvent("click", b"u", T0, b"x" + b"row")], CAPS, "origin", id="bad-origin"),
    pytest.param([HotEvent("click", b"u", T0, b"")], CAPS, "origin", id="empty-member"),
    pytest.param([click(b"u", -1)], CAPS, "unix ms", id="negative-ts"),
    pytest.param([click(b"u", 1 << 53)], CAPS, "unix ms", id="ts-too-large"),
    pytest.param([HotEvent("Click!", b"u", T0, member(1))], CAPS, "type name", id="bad-type"),
    pytest.param([click(b"u", T0)], {"click": 0}, "positive", id="zero-cap"),
    pytest.param([click(b"u" * (MAX_USER_BYTES + 1), T0)], CAPS, "bytes; at most", id="long-user"),
]


@pytest.mark.parametrize(("bad", "caps", "message"), BAD_BATCHES)
async def test_an_invalid_batch_writes_nothing(
    tier: HotTier, bad: list[HotEvent], caps: dict[str, int], message: str
) -> None:
    good = [click(b"u", T0, "good"), HotEvent("order", b"w", T0, member("good"))]
    with pytest.raises(InvalidArgumentError, match=message) as raised:
        await tier.add(good + bad, caps, {b"u": T0, b"w": T0})
    assert "events[2]" in str(raised.value) or "caps[" in str(raised.value)
    assert await tier.read(b"u", "click") == []
    assert await tier.read(b"w", "order") == []
    assert await tier.scheduled(b"u") is None
    assert await tier.claim(LATER, LEASE, 10) == []


async def test_invalid_arguments_are_refused(tier: HotTier) -> None:
    with pytest.raises(InvalidArgumentError, match="limit"):
        await tier.read(b"u", "click", limit=-1)
    with pytest.raises(InvalidArgumentError, match="since"):
        await tier.read(b"u", "click", since=-5)
    with pytest.raises(InvalidArgumentError, match="lease"):
        await tier.claim(T0, 0, 10)
    with pytest.raises(InvalidArgumentError, match="deadlines"):
        await tier.add([], CAPS, {b"u": -1})
    with pytest.raises(InvalidArgumentError, match=r"events\['click'\]\[1\].member"):
        await tier.load(b"u", {"click": [(T0, member(1, COLD)), (T0, member(2))]}, CAPS, T0)
    with pytest.raises(InvalidArgumentError, match="no cap"):
        await tier.load(b"u", {"click": [(T0, member(1, COLD))]}, {}, T0)
    with pytest.raises(InvalidArgumentError, match="moved"):
        await tier.release(Claim(b"u", T0), {"click": [b""]})
    assert await tier.read(b"u", "click") == []
    assert await tier.scheduled(b"u") is None


async def test_an_empty_batch_is_a_no_op(tier: HotTier) -> None:
    await tier.add([], {}, {})
    assert await tier.claim(LATER, LEASE, 10) == []


# -- Redis only ---------------------------------------------------------------------------


@pytest.mark.services
async def test_redis_key_layout(redis_endpoint: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    tier = RedisHotTier(redis_endpoint, prefix=prefix, timeout=5.0)
    raw = aioredis.Redis.from_url(f"redis://{redis_endpoint}")
    user = b"\x00\xffk"
    try:
        await tier.load(user, {"click": [(T0, member("c", COLD))]}, CAPS, T0 + 7)
        await tier.add([click(user, T0 + 1)], CAPS, {user: T0 + 5})
        head = prefix.encode()
        assert await raw.zrange(head + b"h:click:" + user, 0, -1, withscores=True) == [
            (member("c", COLD), float(T0)),
            (member(T0 + 1), float(T0 + 1)),
        ]
        assert await raw.hgetall(head + b"t:" + user) == {b"click": b"1"}
        assert await raw.zscore(head + b"sched", user) == float(T0 + 7)
        [claim] = await tier.claim(T0 + 7, LEASE, 1)
        assert await raw.zscore(head + b"claims", user) == float(claim.token)
        assert await raw.zscore(head + b"sched", user) is None
    finally:
        await tier.close()
        await raw.aclose()
        await delete_prefixed(redis_endpoint, prefix)


@pytest.mark.services
async def test_the_test_redis_is_set_up_for_durability(redis_endpoint: str) -> None:
    tier = RedisHotTier(redis_endpoint, prefix=f"test:{uuid.uuid4().hex}:", timeout=5.0)
    try:
        assert await tier.server_problems() == []
    finally:
        await tier.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


async def test_redis_down_raises_unavailable_naming_the_address() -> None:
    address = f"127.0.0.1:{closed_port()}"
    tier = RedisHotTier(address, timeout=2.0)
    try:
        calls = [
            tier.add([click(b"u", T0)], CAPS, {b"u": T0}),
            tier.read(b"u", "click"),
            tier.claim(T0, LEASE, 10),
            tier.events_of(b"u", ["click"]),
            tier.scheduled(b"u"),
            tier.load(b"u", {"click": [(T0, member(1, COLD))]}, CAPS, T0),
        ]
        for call in calls:
            with pytest.raises(UnavailableError, match=address):
                await call
        with pytest.raises(UnavailableError, match=address):
            await tier.release(Claim(b"u", T0), {"click": [member(1)]})
    finally:
        await tier.close()


class OwnRedis:
    """A redis-server of this test's own on the repo's redis.conf, which it may kill."""

    def __init__(self, directory: Path) -> None:
        self.port = closed_port()
        (directory / "data").mkdir(parents=True)
        template = string.Template((ROOT / "scripts/services/redis.conf").read_text())
        self.conf = directory / "redis.conf"
        self.conf.write_text(template.substitute(port=self.port, dir=directory))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            subprocess.run(["sleep", "0.05"], check=True)
        raise AssertionError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.mark.services
async def test_acknowledged_adds_survive_redis_killed_with_sigkill(own_redis: OwnRedis) -> None:
    tier = RedisHotTier(f"127.0.0.1:{own_redis.port}", timeout=5.0)
    users = [f"user{i}".encode() for i in range(20)]
    try:
        for i, user in enumerate(users):  # acknowledged one by one, then the crash
            await tier.add([click(user, T0 + i), click(user, T0 + 100 + i)], CAPS, {user: T0 + i})
        [claim] = await tier.claim(T0, LEASE, 1)
        own_redis.kill()
        own_redis.start()
        # The same client carries on: its pooled connections to the dead server are replaced.
        for i, user in enumerate(users):
            expected = [(T0 + 100 + i, member(T0 + 100 + i)), (T0 + i, member(T0 + i))]
            assert await tier.read(user, "click") == expected
        assert await tier.scheduled(users[1]) == T0 + 1
        assert await tier.release(claim, {"click": [member(T0)]}) is True  # the lease survived
    finally:
        await tier.close()


# -- LMDB only ----------------------------------------------------------------------------

CLAIMER = """
import asyncio, json, sys
from pathlib import Path
from inferstack.interactions.hot.lmdb import LmdbHotTier

async def main() -> None:
    tier = LmdbHotTier(Path(sys.argv[1]))
    got = []
    while claims := await tier.claim(int(sys.argv[2]), 60_000, 2):
        got += [claim.user.hex() for claim in claims]
    await tier.close()
    print(json.dumps(got))

asyncio.run(main())
"""


async def test_lmdb_claims_are_exclusive_across_processes(tmp_path: Path) -> None:
    tier = LmdbHotTier(tmp_path / "hot")
    users = [f"due{i:03}".encode() for i in range(150)]
    try:
        await tier.add([click(user, T0) for user in users], CAPS, dict.fromkeys(users, T0))
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CLAIMER,
                str(tmp_path / "hot"),
                str(T0),
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            for _ in range(2)
        ]
        here: list[bytes] = []
        while claims := await tier.claim(T0, LEASE, 2):
            here += [claim.user for claim in claims]
            await asyncio.sleep(0)
        outputs = [await process.communicate() for process in processes]
        assert [process.returncode for process in processes] == [0, 0]
        there = [bytes.fromhex(user) for out, _ in outputs for user in json.loads(out)]
        assert sorted(here + there) == users
    finally:
        await tier.close()


async def test_lmdb_tiers_of_one_path_share_an_environment(tmp_path: Path) -> None:
    first = LmdbHotTier(tmp_path / "hot")
    second = LmdbHotTier(tmp_path / "hot")
    await first.add([click(b"u", T0)], CAPS, {b"u": T0})
    await first.close()
    assert await second.read(b"u", "click") == [(T0, member(T0))]  # still open for the second
    await second.close()
    reopened = LmdbHotTier(tmp_path / "hot")
    assert await reopened.scheduled(b"u") == T0
    await reopened.close()


async def test_lmdb_concurrent_adds_share_commits_and_a_bad_one_fails_alone(
    tmp_path: Path,
) -> None:
    tier = LmdbHotTier(tmp_path / "hot", map_size=1 << 20)
    users = [f"user{i}".encode() for i in range(20)]
    try:
        adds = [tier.add([click(user, T0)], CAPS, {user: T0}) for user in users]
        too_big = HotEvent("click", b"big", T0, NEW + b"x" * (2 << 20))  # over the map size
        adds.insert(10, tier.add([too_big], CAPS, {b"big": T0}))
        results = await asyncio.gather(*adds, return_exceptions=True)
        assert isinstance(results.pop(10), ResourceExhaustedError)
        assert results == [None] * len(users)
        for user in users:
            assert await tier.read(user, "click") == [(T0, member(T0))]
        assert await tier.read(b"big", "click") == []
        assert await tier.scheduled(b"big") is None
    finally:
        await tier.close()


WRITER = """
import asyncio, sys
from pathlib import Path
from inferstack.interactions.hot.base import NEW, HotEvent
from inferstack.interactions.hot.lmdb import LmdbHotTier

async def main() -> None:
    tier = LmdbHotTier(Path(sys.argv[1]))
    for n in range(100_000):
        user = b"user%d" % (n % 7)
        event = HotEvent("click", user, n, NEW + b"event%d" % n)
        await tier.add([event], {"click": 10**5}, {user: n})
        print(n, flush=True)  # acknowledged

asyncio.run(main())
"""


async def test_lmdb_acknowledged_adds_survive_the_writer_killed_with_sigkill(
    tmp_path: Path,
) -> None:
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(tmp_path / "hot"),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert writer.stdout is not None
    acknowledged = -1
    try:
        while acknowledged < 200:
            acknowledged = int(await writer.stdout.readline())
    finally:
        writer.kill()  # SIGKILL, mid-write most likely
        await writer.wait()
    tier = LmdbHotTier(tmp_path / "hot")
    try:
        stored = {
            m: ts for i in range(7) for ts, m in await tier.read(f"user{i}".encode(), "click")
        }
        for n in range(acknowledged + 1):
            assert stored.get(NEW + b"event%d" % n) == n
    finally:
        await tier.close()
