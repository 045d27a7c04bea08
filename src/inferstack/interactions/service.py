"""Ingest, Get, Hydrate and Sweep, independent of any transport.

    ingest:  check every batch -> encode rows -> hot tier (one atomic, durable write) with
             each user's inactivity deadline pushed forward
    get:     hot tier newest first, alone only where its coverage proves the answer (it holds
             every cold event at least as new as the oldest one answered); else merged with
             the cold row
    hydrate: the cold rows -> newest `hot_cap` per type -> hot tier (COLD members), scheduled,
             with the coverage of what was loaded
    sweep:   claim users past their deadline -> their hot events -> merged into one cold row
             per (user, type), written durably and only if nobody wrote the row since it was
             read (the claim's fence) -> only then release: remove exactly the moved members
             (events that arrived meanwhile stay hot)

A sweeper that dies after writing cold rows but before releasing leaves the members hot and
the claim to expire; the next sweep merges them again, and merging de-duplicates by event id,
so nothing is lost and nothing doubles. A sweeper that stalls past its lease and wakes up
cannot replace the row of the sweeper that took over (`cold/base.py`), and its release fails:
what it held is the other sweeper's now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, TypeVar

import numpy as np

from inferstack import metrics
from inferstack.core import limits
from inferstack.core.callers import ALL, Need, distinct, reads, writes
from inferstack.core.errors import InvalidArgumentError, UnavailableError
from inferstack.core.events import EventBatch, History
from inferstack.core.interactiontypes import TIMESTAMP
from inferstack.core.ratelimit import RateLimitedWarnings
from inferstack.core.registry import Registry
from inferstack.core.text import one_line
from inferstack.interactions.cold.base import ColdStore, ColdWrite
from inferstack.interactions.coldrow import (
    ColdRowError,
    UnreadableEventError,
    decode_history,
    encode_history,
    merge,
    merge_many,
)
from inferstack.interactions.events import InteractionCatalog, decode_rows, encode_batch
from inferstack.interactions.hot.base import COLD, NEW, HotEvent, HotRange, HotTier, Release

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_LEASE = 30.0  # seconds a sweeper may take to flush the users it claimed
MAX_LIMIT = 10_000
FAR_PAST = 0


@dataclass
class SweepResult:
    users: int = 0  # users whose hot events moved to the cold tier
    events: int = 0  # hot events moved
    lost_claims: int = 0  # claims that expired before release (another sweeper took over)
    conflicts: int = 0  # cold rows another sweeper had written since this one read them


class InteractionService:
    def __init__(
        self,
        hot: HotTier,
        cold: ColdStore,
        catalog: InteractionCatalog,
        *,
        lease: float = DEFAULT_LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hot = hot
        self.cold = cold
        self.catalog = catalog
        self.lease = lease
        self.clock = clock

    async def use_registry(self, registry: Registry) -> None:
        if registry.revision <= self.catalog.revision:
            return
        await self.cold.prepare(registry)
        if registry.revision > self.catalog.revision:  # a newer one may have come meanwhile
            self.catalog = InteractionCatalog(registry)  # one swap, like the feature store's

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # What each request touches, for the caller's grants (checked before it runs). Naming no
    # type means every type, and a sweep moves every type.

    def ingest_needs(self, types: Iterable[str]) -> list[Need]:
        return [writes("interaction_type", distinct(types))]

    def get_needs(self, types: Sequence[str]) -> list[Need]:
        return [reads("interaction_type", types_named(types))]

    def hydrate_needs(self, types: Sequence[str]) -> list[Need]:
        """A hydrate loads (write) and answers per-type counts (read)."""
        named = types_named(types)
        return [writes("interaction_type", named), reads("interaction_type", named)]

    def sweep_needs(self) -> list[Need]:
        return [writes("interaction_type", [ALL])]

    async def ingest(self, batches: Sequence[EventBatch]) -> int:
        """Store every event of every batch, or none; returns how many were stored."""
        limits.check(len(batches), limits.MAX_EVENT_BATCHES, "event batches")
        limits.check(sum(len(batch.event_ids) for batch in batches), limits.MAX_EVENTS, "events")
        catalog = self.catalog
        now = self._now_ms()
        encoded = [
            encode_batch(catalog, batch, f"batch {i}", now) for i, batch in enumerate(batches)
        ]
        events: list[HotEvent] = []
        deadlines: dict[bytes, int] = {}
        caps: dict[str, int] = {}
        for part in encoded:
            kind = part.type
            name = kind.name
            caps[name] = kind.hot_cap
            deadline = now + int(kind.inactivity * 1000)
            events += map(
                HotEvent,
                repeat(name),
                part.users,
                part.timestamps.tolist(),
                [NEW + row for row in part.rows],
            )
            for user in set(part.users):
                if deadlines.get(user, 0) < deadline:
                    deadlines[user] = deadline
        if events:
            await self.hot.add(events, caps, deadlines)
        return len(events)

    async def get(
        self,
        user: Any,
        types: Sequence[str],
        limit: int | None = None,
        since: int | None = None,
    ) -> list[History]:
        """Each type's events of `user`, newest first: the last `limit`, or since `since`."""
        if limit is not None and not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgumentError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
        if limit is None and since is None:
            raise InvalidArgumentError("give a limit (last N events) or since (unix ms)")
        catalog = self.catalog
        names = list(types) or sorted(catalog.types)
        return [await self._history(catalog, name, user, limit, since) for name in names]

    async def _history(
        self,
        catalog: InteractionCatalog,
        name: str,
        user: Any,
        limit: int | None,
        since: int | None,
    ) -> History:
        kind = catalog.type(name)
        (encoded,) = catalog.encode_users(name, [user])
        hot = await self.hot.read_range(encoded, name, limit, since)
        rows = [member[1:] for _, member in hot.events]
        hot_rows = set(rows)  # served from the hot tier (hydrated events included)
        codec = catalog.codecs[name]
        if _hot_alone(hot, limit, since):
            # A hydrated event delivered again is in the hot tier twice (the two copies
            # differ in their origin byte): one merge de-duplicates by event id.
            rows = merge([], rows, codec, limit or len(rows), since or FAR_PAST)
        if not _hot_alone(hot, limit, since) or (limit is not None and len(rows) < limit):
            # The cold row may hold events the answer needs: newer than some hot ones (late
            # events, or copies a cap trimmed), or older ones when the hot tier has too few.
            cold = await self._cold_rows(name, [encoded])
            rows = merge(
                cold[0],
                rows,
                catalog.codecs[name],
                limit if limit is not None else max(kind.retention.count, len(rows) + len(cold[0])),
                since if since is not None else FAR_PAST,
            )
        history = decode_rows(catalog, name, rows)
        history.hot = sum(1 for row in rows if row in hot_rows)
        return history

    async def hydrate(self, user: Any, types: Sequence[str] = ()) -> dict[str, int]:
        """Load the user's cold history (newest `hot_cap` per type) into the hot tier."""
        catalog = self.catalog
        names = list(types) or sorted(catalog.types)
        now = self._now_ms()
        # Read before the cold rows: if a flush changes them meanwhile, the fence moves and
        # the load does not claim to cover them.
        fence = await self.hot.fence()
        loaded: dict[str, int] = {}
        by_user: dict[bytes, dict[str, list[tuple[int, bytes]]]] = {}
        caps: dict[bytes, dict[str, int]] = {}
        coverage: dict[bytes, dict[str, int]] = {}
        deadlines: dict[bytes, int] = {}
        for name in names:
            kind = catalog.type(name)
            (encoded,) = catalog.encode_users(name, [user])
            rows = (await self._cold_rows(name, [encoded], limit=kind.hot_cap + 1))[0]
            whole = len(rows) <= kind.hot_cap
            rows = rows[: kind.hot_cap]
            stamps = _timestamps(catalog, name, rows)
            by_user.setdefault(encoded, {})[name] = [
                (ts, COLD + row) for ts, row in zip(stamps, rows, strict=True)
            ]
            # The whole row is hot now, or every event after the oldest loaded one (an
            # event of the same millisecond as that one may have stayed behind).
            coverage.setdefault(encoded, {})[name] = FAR_PAST if whole else min(stamps) + 1
            caps.setdefault(encoded, {})[name] = kind.hot_cap
            deadline = now + int(kind.inactivity * 1000)
            deadlines[encoded] = max(deadlines.get(encoded, 0), deadline)
            loaded[name] = len(rows)
        for encoded, events in by_user.items():
            await self.hot.load(
                encoded, events, caps[encoded], deadlines[encoded], coverage[encoded], fence
            )
        return loaded

    async def sweep(self, limit: int = 500) -> SweepResult:
        """Move the hot events of up to `limit` users past their deadline to the cold tier."""
        catalog = self.catalog
        now = self._now_ms()
        claims = await self.hot.claim(now, int(self.lease * 1000), limit)
        result = SweepResult()
        if not claims:
            return result
        names = sorted(catalog.types)
        # One call each way (one LMDB transaction, one Redis round trip) for every claim.
        hot = await self.hot.events_of_many([claim.user for claim in claims], names)
        moved: list[dict[str, list[bytes]]] = [{} for _ in claims]
        complete_from: list[dict[str, int]] = [{} for _ in claims]
        lost: set[int] = set()  # claims whose cold row another sweeper wrote: not released
        for name in names:
            kind = catalog.types[name]
            users = [i for i, events in enumerate(hot) if events.get(name)]
            if not users:
                continue
            blobs = await self.cold.read(name, [claims[i].user for i in users], latest=True)
            cold = self._decode_rows(name, [claims[i].user for i in users], blobs)
            oldest = now - int(kind.retention.age * 1000) if kind.retention.age else FAR_PAST
            members = [[member for _, member in hot[index][name]] for index in users]
            pairs = [
                (cold[position], [member[1:] for member in members[position]])
                for position in range(len(users))
            ]
            histories: list[list[bytes] | None]
            try:
                histories = list(
                    merge_many(pairs, catalog.codecs[name], kind.retention.count, oldest)
                )
            except UnreadableEventError:
                histories = [None] * len(users)  # find the user(s) at fault, one by one
            rows: list[ColdWrite] = []
            written: list[tuple[int, int, list[bytes]]] = []  # (position, claim index, merged)
            for position, index in enumerate(users):
                merged = histories[position]
                if merged is None:
                    try:
                        merged = merge(*pairs[position], catalog.codecs[name],
                                       kind.retention.count, oldest)  # fmt: skip
                    except UnreadableEventError as exc:
                        # Written under a schema this server does not know yet (an apply is
                        # rolling out): leave these events hot for a sweeper that knows it.
                        log.warning(
                            "sweep of %s for user %s waits: %s", name, claims[index].user.hex(), exc
                        )
                        continue
                rows.append(ColdWrite(claims[index].user, encode_history(merged), blobs[position]))
                written.append((position, index, merged))
            # Durable before anything leaves the hot tier.
            refused = set(await self.cold.write(name, rows, claims[0].fence))
            result.conflicts += len(refused)
            stamps = iter(_timestamps(catalog, name, [m[0] for _, _, m in written if m]))
            for position, index, merged in written:
                # The cold row holds nothing newer than its first event and the hot tier
                # will hold none of it: it covers everything after that event.
                complete_from[index][name] = next(stamps) + 1 if merged else FAR_PAST
                if claims[index].user in refused:
                    lost.add(index)  # another sweeper wrote the row since: the claim is lost
                else:
                    moved[index][name] = members[position]
        kept = [index for index in range(len(claims)) if index not in lost]
        released = await self.hot.release_many(
            [Release(claims[index], moved[index], complete_from[index]) for index in kept]
        )
        for index, done in zip(kept, released, strict=True):
            if done:
                result.events += sum(
                    1 for members in moved[index].values() for m in members if m[:1] != COLD
                )
        result.users = sum(released)
        result.lost_claims = len(claims) - result.users
        return result

    async def _cold_rows(
        self, name: str, users: list[bytes], limit: int | None = None
    ) -> list[list[bytes]]:
        return self._decode_rows(name, users, await self.cold.read(name, users), limit)

    def _decode_rows(
        self,
        name: str,
        users: Sequence[bytes],
        blobs: Sequence[bytes | None],
        limit: int | None = None,
    ) -> list[list[bytes]]:
        histories: list[list[bytes]] = []
        for user, blob in zip(users, blobs, strict=True):
            if blob is None:
                histories.append([])
                continue
            try:
                histories.append(decode_history(blob, limit))
            except ColdRowError as exc:  # never fail a read for one damaged row
                log.error("cold row of %s for user %s is damaged: %s", name, user.hex(), exc)
                histories.append([])
        return histories

    async def close(self) -> None:
        await self.hot.close()
        await self.cold.close()


def _hot_alone(hot: HotRange, limit: int | None, since: int | None) -> bool:
    """Whether the hot events read are the whole answer: the hot tier holds every cold event
    at or after `since`, or it returned `limit` events none older than its coverage."""
    covered = hot.complete_from
    if covered is None:
        return False
    if since is not None and since >= covered:
        return True
    return limit is not None and len(hot.events) >= limit and hot.events[-1][0] >= covered


def _timestamps(catalog: InteractionCatalog, name: str, rows: Sequence[bytes]) -> list[int]:
    if not rows:
        return []
    stamps = catalog.codecs[name].decode(rows, [TIMESTAMP], time.time()).columns[TIMESTAMP]
    assert isinstance(stamps, np.ndarray)
    return [int(ts) for ts in stamps.tolist()]


async def run_sweeper(
    service: InteractionService, stop: asyncio.Event, interval: float = 1.0, limit: int = 500
) -> None:
    """Sweep until `stop` is set: at once again while users are due, else every interval.

    A sweep that fails is retried every interval, its users staying hot. While a tier is away
    that is a failure a second: each cause is logged once per WARNING_INTERVAL, as one line
    (a traceback only for an error that is not a tier away), and every failure is counted."""
    warnings = RateLimitedWarnings(log)
    while not stop.is_set():
        try:
            swept = await service.sweep(limit)
        except Exception as exc:  # a sweep that fails (tier away) is retried
            away = isinstance(exc, UnavailableError | TimeoutError)
            cause = type(exc).__name__
            metrics.SWEEP_FAILURES.labels(cause).inc()
            warnings.log(
                f"{cause}: {str(exc).partition(' (')[0]}",  # the message without its details
                logging.WARNING if away else logging.ERROR,
                "sweep failed, retrying every %gs: %s",
                interval,
                one_line(exc, 500),
                exc_info=not away,
            )
            swept = SweepResult()
        if swept.users + swept.lost_claims < limit:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def types_named(types: Sequence[str]) -> list[str]:
    """The interaction types a request names; none named means every type."""
    return distinct(types) if types else [ALL]
