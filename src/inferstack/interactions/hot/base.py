"""What the interaction store needs from a hot tier (Redis protocol, or LMDB embedded).

Everything here is bytes: the service encodes users (`core/keys.py` encoding of the type's
user key) and events (a row of the type's layout, `core/rowformat.py`) before they arrive.
An event is stored as a *member*: one origin byte (NEW for ingested events, COLD for events
loaded back from the cold tier by hydrate) followed by the event's row. Members are unique per
(user, type): the same event ingested twice is stored once. Each member has a score, the
event's time in unix milliseconds. That time is part of the row, so a member always comes with
the same ts; the adapters rely on it (LMDB keys events by ts + a hash of the member). For the
same reason a member must be encoded deterministically (no "written at" in it), or a
redelivered event would be a second member.

Limits every adapter checks before writing (InvalidArgumentError otherwise): type names as in
the definitions, user keys of at most 400 bytes (LMDB's key size), times in [0, 2**53) ms
(Redis scores are doubles), caps >= 1, every member starting with NEW or COLD.

The schedule holds, per user, the deadline (unix ms) after which the sweeper may move the
user's hot events to the cold tier. A claim takes a user off the schedule under a lease, so two
sweepers never flush the same user at once; a sweeper that dies leaves the lease to expire and
the user is claimed again. "Due now" (cap overflow) is the deadline 0 (`batches.DUE_NOW`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

NEW = b"n"  # ingested, not yet in the cold tier
COLD = b"c"  # loaded from the cold tier by hydrate: trimming it loses nothing


@dataclass(frozen=True)
class HotEvent:
    type: str
    user: bytes
    ts: int  # unix ms
    member: bytes  # origin byte + event row


@dataclass(frozen=True)
class Claim:
    user: bytes
    token: int  # the lease's expiry (unix ms); proves the claim when freeing
    # A user is only claimed once its previous lease has run out, so its tokens only grow,
    # as long as sweepers' clocks differ by less than a lease.


class HotTier(Protocol):
    async def add(
        self, events: Sequence[HotEvent], caps: Mapping[str, int], deadlines: Mapping[bytes, int]
    ) -> None:
        """Store the events and push each user's deadline to at least `deadlines[user]`,
        all of it or nothing, durably before returning.

        Per (user, type), beyond `caps[type]` members the oldest COLD members are removed;
        if NEW members alone exceed the cap they all stay and the user's deadline becomes
        now, so the sweeper moves them to the cold tier soon (nothing is ever dropped).

        "Now" is the deadline 0 (`batches.DUE_NOW`), before every ordinary deadline, and it
        sticks until the user is claimed: later adds do not push it forward. Every user of an
        event needs a deadline; a deadline for a user without events schedules it anyway.
        """
        ...

    async def read(
        self, user: bytes, type: str, limit: int | None = None, since: int | None = None
    ) -> list[tuple[int, bytes]]:
        """(ts, member) newest first: at most `limit`, none older than `since` (unix ms)."""
        ...

    async def claim(self, now: int, lease: int, limit: int) -> list[Claim]:
        """Atomically take up to `limit` users whose deadline or earlier lease has passed off
        the schedule, each under a lease until now + lease.

        Expired leases come first (oldest first), then due users in deadline order. A user
        still under a lease is skipped even if events since put it back on the schedule.
        `lease` is at least 1 ms; a deadline or lease equal to `now` has passed."""
        ...

    async def events_of(
        self, user: bytes, types: Sequence[str]
    ) -> dict[str, list[tuple[int, bytes]]]:
        """Every member of the user per type, oldest first (what a sweep moves)."""
        ...

    async def release(self, claim: Claim, moved: Mapping[str, Sequence[bytes]]) -> bool:
        """After the moved members are durable in the cold tier: remove exactly those members
        and end the claim, atomically, if the claim is still ours (False if its lease expired
        and someone else holds it: then nothing is removed). Members that arrived during the
        flush stay, and their user stays on the schedule.

        Their add scheduled the user; members that were there before the claim but not moved
        schedule it at `claim.token` (retried when the lease would have run out). Members no
        longer hot are ignored. A claim ends once: a second release answers False."""
        ...

    async def load(
        self,
        user: bytes,
        events: Mapping[str, Sequence[tuple[int, bytes]]],
        caps: Mapping[str, int],
        deadline: int,
    ) -> None:
        """Hydrate: add (ts, member) per type (members with the COLD origin byte), keep at most
        the cap (newest), and schedule the user at `deadline` (or later if already later).
        Idempotent.

        The cap is applied as in `add` (NEW members are never trimmed, and beyond the cap
        they make the user due now); a due-now deadline stays."""
        ...

    async def scheduled(self, user: bytes) -> int | None:
        """The user's deadline (unix ms), or None if not scheduled (for tests and `get`)."""
        ...

    async def close(self) -> None: ...
