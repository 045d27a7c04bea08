"""Checks and grouping shared by every hot tier adapter, so they refuse the same things.

Everything is checked before an adapter writes anything: a bad batch raises
InvalidArgumentError naming the event (its index in the batch), the type or the user, and the
hot tier is left untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.fields import NAME_PATTERN
from inferstack.interactions.hot.base import COLD, NEW, HotEvent

# The deadline a user gets when its NEW members alone exceed a cap: due at once, before every
# ordinary deadline. It sticks: later adds do not push it forward until a sweeper claims the
# user (or a release that leaves members behind reschedules it).
DUE_NOW = 0

# Times (event times, deadlines, leases) are unix ms below 2**53: Redis keeps scores as
# doubles, which are exact up to there (that is the year 287396).
MAX_TIME = (1 << 53) - 1
# Fences count in microseconds of the claims' clocks (Cassandra write timestamps), and Redis's
# Lua keeps numbers as doubles: below 2**53 (the year 2255) they are exact.
MAX_FENCE = (1 << 53) - 1

# User keys are the encoded key of the type's user key (core/keys.py). The bound keeps every
# LMDB key (type + user + 24 bytes) below LMDB's 511-byte key limit, with room to spare.
MAX_USER_BYTES = 400

_TYPE_NAME = re.compile(NAME_PATTERN)
_ORIGINS = (NEW[0], COLD[0])


@dataclass
class Group:
    """The events of one (user, type) in a batch, split by origin (adapters count COLD ones)."""

    user: bytes
    type: str
    cap: int
    new: list[tuple[int, bytes]] = field(default_factory=list)
    cold: list[tuple[int, bytes]] = field(default_factory=list)
    complete_from: int | None = None  # a load's coverage for this type, if it gives one


@dataclass(frozen=True)
class Batch:
    """A checked add or load: the groups in first-seen order and each user's deadline."""

    groups: list[Group]
    deadlines: dict[bytes, int]
    fence: int | None = None  # a load's coverage holds only if the fence is still this


def user_label(user: bytes) -> str:
    """How errors name a user key: hex, since it is arbitrary bytes."""
    shown = user[:32].hex()
    return f"user 0x{shown}" + ("..." if len(user) > 32 else "")


def check_user(user: bytes, where: str = "user") -> None:
    if not isinstance(user, bytes):
        raise InvalidArgumentError(f"{where}: a user key must be bytes, not {type(user).__name__}")
    if len(user) > MAX_USER_BYTES:
        raise InvalidArgumentError(
            f"{where}: {user_label(user)} is {len(user)} bytes; at most {MAX_USER_BYTES}"
        )


def check_type(name: str, where: str = "type") -> None:
    if not isinstance(name, str) or not _TYPE_NAME.match(name):
        raise InvalidArgumentError(f"{where}: {name!r} is not an interaction type name")


def check_time(value: int, where: str) -> None:
    # bool is an int: refuse it, it can only be a mistake here.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIME:
        raise InvalidArgumentError(f"{where}: {value!r} is not a time in unix ms (0..2**53-1)")


def check_member(member: bytes, where: str, origin: bytes | None = None) -> None:
    if not isinstance(member, bytes) or not member or member[0] not in _ORIGINS:
        raise InvalidArgumentError(
            f"{where}: a member is an origin byte ({NEW!r} or {COLD!r}) and the event's row"
        )
    if origin is not None and member[:1] != origin:
        raise InvalidArgumentError(f"{where}: must start with the origin byte {origin!r}")


def check_cap(type: str, caps: Mapping[str, int], where: str) -> int:
    cap = caps.get(type)
    if cap is None:
        raise InvalidArgumentError(f"{where}: no cap given for interaction type '{type}'")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise InvalidArgumentError(f"caps['{type}']: {cap!r} is not a positive count")
    return cap


def check_limit(limit: int | None, where: str = "limit") -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise InvalidArgumentError(f"{where}: {limit!r} is not a count (0 or more)")


def add_batch(
    events: Sequence[HotEvent], caps: Mapping[str, int], deadlines: Mapping[bytes, int]
) -> Batch:
    """Check an add: every event valid, a cap for every type, a deadline for every user."""
    groups: dict[tuple[bytes, str], Group] = {}
    checked_caps: dict[str, int] = {}  # each type checked once, each user once
    checked_users: set[bytes] = set()
    new_origin = NEW[0]
    for index, event in enumerate(events):
        ts, member, user = event.ts, event.member, event.user
        if type(user) is not bytes:
            check_user(user, f"events[{index}].user")
        group = groups.get((user, event.type))
        if group is None:
            where = f"events[{index}]"
            cap = checked_caps.get(event.type)
            if cap is None:
                check_type(event.type, f"{where}.type")
                cap = checked_caps[event.type] = check_cap(event.type, caps, where)
            if user not in checked_users:
                check_user(user, f"{where}.user")
                if user not in deadlines:
                    raise InvalidArgumentError(f"{where}: no deadline given for {user_label(user)}")
                checked_users.add(user)
            group = groups[(user, event.type)] = Group(user, event.type, cap)
        if type(ts) is not int or not 0 <= ts <= MAX_TIME:  # the common case, quickly
            check_time(ts, f"events[{index}].ts")
        if type(member) is not bytes or not member or member[0] not in _ORIGINS:
            check_member(member, f"events[{index}].member")
        (group.new if member[0] == new_origin else group.cold).append((ts, member))
    checked: dict[bytes, int] = {}
    for user, deadline in deadlines.items():
        if type(user) is not bytes or len(user) > MAX_USER_BYTES:
            check_user(user, "deadlines")
        if type(deadline) is not int or not 0 <= deadline <= MAX_TIME:
            check_time(deadline, f"deadlines[{user_label(user)}]")
        checked[user] = deadline
    return Batch(list(groups.values()), checked)


def load_batch(
    user: bytes,
    events: Mapping[str, Sequence[tuple[int, bytes]]],
    caps: Mapping[str, int],
    deadline: int,
    complete_from: Mapping[str, int] | None = None,
    fence: int | None = None,
) -> Batch:
    """Check a hydrate: COLD members only, a cap for every type that has events."""
    check_user(user)
    check_time(deadline, "deadline")
    coverage = check_coverage(complete_from or {}, "complete_from")
    if fence is not None:
        check_fence(fence, "fence")
    groups: list[Group] = []
    for type_name, items in events.items():
        check_type(type_name, "events")
        if not items:
            continue
        cap = check_cap(type_name, caps, f"events['{type_name}']")
        group = Group(user, type_name, cap, complete_from=coverage.get(type_name))
        for index, (ts, member) in enumerate(items):
            where = f"events['{type_name}'][{index}]"
            check_time(ts, f"{where}.ts")
            check_member(member, f"{where}.member", COLD)
            group.cold.append((ts, member))
        groups.append(group)
    return Batch(groups, {user: deadline}, fence)


def check_coverage(complete_from: Mapping[str, int], where: str) -> dict[str, int]:
    for type_name, ts in complete_from.items():
        check_type(type_name, where)
        check_time(ts, f"{where}['{type_name}']")
    return dict(complete_from)


def check_fence(fence: int, where: str) -> None:
    if not isinstance(fence, int) or isinstance(fence, bool) or not 0 <= fence <= MAX_FENCE:
        raise InvalidArgumentError(f"{where}: {fence!r} is not a fence (0..2**53-1)")


def check_claim(now: int, lease: int, limit: int) -> None:
    check_time(now, "now")
    if not isinstance(lease, int) or isinstance(lease, bool) or lease < 1:
        raise InvalidArgumentError(f"lease: {lease!r} is not a positive number of ms")
    check_time(now + lease, "now + lease")
    check_limit(limit)


def split_moved(moved: Mapping[str, Sequence[bytes]]) -> dict[str, tuple[list[bytes], list[bytes]]]:
    """Check a release's members and split them per type into (NEW, COLD) lists."""
    out: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for type_name, members in moved.items():
        check_type(type_name, "moved")
        new: list[bytes] = []
        cold: list[bytes] = []
        new_origin = NEW[0]
        for member in members:  # the common case quickly; a bad member is named below
            if type(member) is not bytes or not member or member[0] not in _ORIGINS:
                for index, bad in enumerate(members):
                    check_member(bad, f"moved['{type_name}'][{index}]")
            (new if member[0] == new_origin else cold).append(member)
        if new or cold:
            out[type_name] = (new, cold)
    return out
