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

Fences order flushes without trusting clocks: the hot tier keeps one counter that every claim
call and every release moves forward (to at least the claim's `now` in microseconds, so it
also orders after writes made before fences existed). A claim carries the fence it was given;
the cold tier orders a user's row writes by it, so a sweeper that stalled past its lease can
never replace the row of a sweeper that claimed the user after it.

Coverage says when the hot tier alone answers "the last N": per (user, type) the hot tier may
know a time `complete_from` such that it holds every event of the cold tier at or after that
time (None: not known, so a read must merge the cold row). A release sets it to just after the
newest event of the row the sweeper wrote (the hot tier then holds none of the cold row); a
hydrate's load sets it to where the copies it loaded begin, unless a flush happened since the
hydrate read the cold row (its fence moved); trimming a COLD copy raises it past that copy. It
is forgotten with the (user, type)'s last hot member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

NEW = b"n"  # ingested, not yet in the cold tier
COLD = b"c"  # loaded from the cold tier by hydrate: trimming it loses nothing


class HotEvent(NamedTuple):  # a tuple: ingest makes one per event
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
    fence: int = 0  # the hot tier's fence for this claim: later claims get larger ones


@dataclass(frozen=True)
class Release:
    """One claim's end, as `HotTier.release` takes it (`release_many` takes several)."""

    claim: Claim
    moved: Mapping[str, Sequence[bytes]]
    complete_from: Mapping[str, int] | None = None


@dataclass(frozen=True)
class HotRange:
    """What `read_range` found: events newest first, and the coverage of the hot tier."""

    events: list[tuple[int, bytes]]  # (ts, member)
    complete_from: int | None  # every cold event at or after this ts (ms) is hot; None: unknown


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

    async def read_range(
        self, user: bytes, type: str, limit: int | None = None, since: int | None = None
    ) -> HotRange:
        """`read`'s events and the (user, type)'s `complete_from`, as of one instant."""
        ...

    async def fence(self) -> int:
        """The current fence (what the last claim or release moved it to; 0 before any)."""
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

    async def events_of_many(
        self, users: Sequence[bytes], types: Sequence[str]
    ) -> list[dict[str, list[tuple[int, bytes]]]]:
        """`events_of` for each user, in order, in one call (one read transaction, or one
        round trip): what a sweep of many users reads."""
        ...

    async def release(
        self,
        claim: Claim,
        moved: Mapping[str, Sequence[bytes]],
        complete_from: Mapping[str, int] | None = None,
    ) -> bool:
        """After the moved members are durable in the cold tier: remove exactly those members
        and end the claim, atomically, if the claim is still ours (False if its lease expired
        and someone else holds it: then nothing is removed). Members that arrived during the
        flush stay, and their user stays on the schedule. A release moves the fence forward.

        `complete_from[type]` (just after the newest event of the cold row written) becomes
        the coverage of each moved type that still has members.

        Their add scheduled the user; members that were there before the claim but not moved
        schedule it at `claim.token` (retried when the lease would have run out). Members no
        longer hot are ignored. A claim ends once: a second release answers False."""
        ...

    async def release_many(self, releases: Sequence[Release]) -> list[bool]:
        """`release` of each, in order, in one call (one write transaction, or one round
        trip); each applies or not on its own, as `release` would."""
        ...

    async def load(
        self,
        user: bytes,
        events: Mapping[str, Sequence[tuple[int, bytes]]],
        caps: Mapping[str, int],
        deadline: int,
        complete_from: Mapping[str, int] | None = None,
        fence: int | None = None,
    ) -> None:
        """Hydrate: add (ts, member) per type (members with the COLD origin byte), keep at most
        the cap (newest), and schedule the user at `deadline` (or later if already later).
        Idempotent.

        `complete_from[type]`, where the loaded copies begin, becomes the type's coverage
        (or stays lower if it was) only if the fence is still `fence`, the one the caller saw
        before reading the cold rows: otherwise a flush may have changed them since.

        The cap is applied as in `add` (NEW members are never trimmed, and beyond the cap
        they make the user due now); a due-now deadline stays."""
        ...

    async def scheduled(self, user: bytes) -> int | None:
        """The user's deadline (unix ms), or None if not scheduled (for tests and `get`)."""
        ...

    async def close(self) -> None: ...
