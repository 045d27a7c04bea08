"""The hot tier on a Redis-protocol server with Redis 7 scripting (Redis >= 7.0, Valkey).

Keys (all binary; `prefix` is ours to choose, default "ih:"):

    <prefix>h:<type>:<user>   sorted set: member = origin byte + event row, score = ts (ms)
    <prefix>t:<user>          hash: field = a type the user has hot, value = how many of its
                              members are COLD (so caps know what they may trim without a scan);
                              field "f:<type>" = the type's complete_from, when known
    <prefix>sched             sorted set: member = user, score = deadline (ms)
    <prefix>claims            sorted set: member = user, score = lease expiry (ms) = claim token
    <prefix>fence             string: the fence of the last claim or release (an integer)

User keys are used raw: Redis keys are binary-safe, a type name is `[a-z][a-z0-9_]*` (never
":"), and the user always ends the key, so no two (type, user) pairs share a key whatever the
bytes. Two deployments sharing a server need prefixes where neither starts the other.

Every operation that touches more than one key (add and load, claim, release) is one Lua
script, run with EVALSHA (redis-py loads it again after a server restart), so it is atomic:
other clients see a batch entirely or not at all, and two sweepers' claims never overlap.
Scripts declare every key they touch in KEYS and begin with a `#!lua` shebang: Redis 7 then
checks for out-of-memory before the script starts rather than at its first write, so a script
never stops half-way for lack of memory (Redis never rolls a script back). All arguments are
checked in Python first (`batches.py`), so nothing else can fail half-way, short of someone
else writing other types of values under our prefix.

Durability: the hot tier is the system of record for recent events, so an acknowledged add
must survive a crash. Run Redis with `appendonly yes` and `appendfsync always` (as
scripts/services/redis.conf does): the script's effects are appended to the AOF and fsynced
before Redis replies, so `add` returning means the events are on disk. The server must not
evict (`maxmemory-policy noeviction`, or no maxmemory): `server_problems()` reports a server
set up otherwise. With replicas, an acknowledgement says nothing about them; a deployment that
fails over to a replica must also wait for it (WAIT numreplicas, or WAITAOF on Redis >= 7.2)
before acknowledging, or it can lose the last writes on failover. Redis Cluster is not
supported: the schedule is one key, and a script's keys must share a slot there.

Failures are not swallowed: a refused connection, a timeout or a server error raises
UnavailableError naming the address. A dropped connection (the usual sign of a server that
restarted since the connection was pooled) is tried once more on a fresh one; timeouts are not.
Repeating is safe for every operation: add, load and the reads are idempotent; a claim whose
reply was lost leaves its users leased until the lease ends, then they are claimed again; a
release that took effect before its reply was lost answers False the second time, and the
sweeper treats it as a lost claim (its events are in the cold tier and gone from the hot one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from inferstack.core.errors import UnavailableError
from inferstack.interactions.hot.base import COLD, Claim, HotEvent, HotRange, Release
from inferstack.interactions.hot.batches import (
    DUE_NOW,
    Batch,
    add_batch,
    check_claim,
    check_coverage,
    check_limit,
    check_time,
    check_type,
    check_user,
    load_batch,
    split_moved,
)
from inferstack.kv.redis import pooled_client, redacted, redis_url

T = TypeVar("T")

# Values per ZADD/ZREM call inside a script: Lua's unpack() is limited by its C stack (8000).
_CHUNK = 2000
# Users per pipeline of a sweep's reads and releases: a sweep of 500 users with 100 events
# each is megabytes in one pipeline, which a loaded server does not answer within `timeout`;
# each chunk has the timeout to itself.
USERS_PER_PIPELINE = 50

_HELPERS = f"""
local CHUNK = {_CHUNK}
local COLD_BYTE = {COLD[0]}
local DUE_NOW = {DUE_NOW}

-- Move the fence (KEYS[2] of every script that uses it) past its last value, and to at least
-- `at_least`; the new fence. Formatted by hand: Lua's own number to string conversion would
-- round a 16-digit fence.
local function advance_fence(at_least)
  local fence = math.max(at_least, tonumber(redis.call('GET', KEYS[2]) or '0') + 1)
  local text = string.format('%.0f', fence)
  redis.call('SET', KEYS[2], text)
  return text
end

-- ZADD NX of ARGV[first .. first + 2 * pairs - 1] (score, member pairs); how many were new.
local function zadd_new(key, first, pairs)
  local added = 0
  local last = first + 2 * pairs - 1
  local i = first
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    added = added + redis.call('ZADD', key, 'NX', unpack(ARGV, i, j))
    i = j + 1
  end
  return added
end

-- ZREM of the members in list[first .. first + count - 1]; how many were there.
local function zrem(key, list, first, count)
  local removed = 0
  local last = first + count - 1
  local i = first
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    removed = removed + redis.call('ZREM', key, unpack(list, i, j))
    i = j + 1
  end
  return removed
end
"""

# KEYS[1] schedule, KEYS[2] fence, KEYS[2 + i] types hash of user i (i = 1..U), KEYS[2 + U + g]
# events of group g. ARGV: U, G, fence ("" for an add), U x (user, deadline), then per group:
# user index, type, cap, #new, #cold, complete_from (-1: none), then #new and #cold (ts,
# member) pairs.
_ADD = (
    "#!lua\n"
    + _HELPERS
    + """
-- Remove the `count` oldest COLD members of `key`; how many went and the newest one's time.
local function trim_cold(key, count)
  local victims = {}
  local newest = 0
  local offset = 0
  while #victims < count do
    local page = redis.call('ZRANGE', key, offset, offset + 255, 'WITHSCORES')
    if #page == 0 then break end
    for i = 1, #page, 2 do
      if string.byte(page[i], 1) == COLD_BYTE then
        victims[#victims + 1] = page[i]
        newest = tonumber(page[i + 1])
        if #victims == count then break end
      end
    end
    offset = offset + #page / 2
  end
  return zrem(key, victims, 1, #victims), newest
end

local sched = KEYS[1]
local users = tonumber(ARGV[1])
local groups = tonumber(ARGV[2])
-- A load's coverage holds only if no flush changed the cold rows since it read them.
local covered = ARGV[3] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '0') == tonumber(ARGV[3])
local pos = 4 + 2 * users
local overflow = {}
for g = 1, groups do
  local u = tonumber(ARGV[pos])
  local type = ARGV[pos + 1]
  local cap = tonumber(ARGV[pos + 2])
  local new = tonumber(ARGV[pos + 3])
  local cold_in = tonumber(ARGV[pos + 4])
  local given = tonumber(ARGV[pos + 5])
  local key = KEYS[2 + users + g]
  local types = KEYS[2 + u]
  local field = 'f:' .. type
  pos = pos + 6
  zadd_new(key, pos, new)
  pos = pos + 2 * new
  local cold = tonumber(redis.call('HGET', types, type) or '0') + zadd_new(key, pos, cold_in)
  pos = pos + 2 * cold_in
  local coverage = tonumber(redis.call('HGET', types, field) or '-1')
  if covered and given >= 0 and (coverage < 0 or given < coverage) then coverage = given end
  local size = redis.call('ZCARD', key)
  if size > cap and cold > 0 then
    local removed, newest = trim_cold(key, math.min(size - cap, cold))
    size = size - removed
    cold = cold - removed
    if coverage >= 0 and removed > 0 then coverage = math.max(coverage, newest + 1) end
  end
  if size - cold > cap then overflow[u] = true end
  redis.call('HSET', types, type, cold)
  if coverage >= 0 then redis.call('HSET', types, field, string.format('%.0f', coverage)) end
end
for u = 1, users do
  local user = ARGV[2 + 2 * u]
  if overflow[u] then
    redis.call('ZADD', sched, DUE_NOW, user)
  else
    local current = redis.call('ZSCORE', sched, user)
    if not current or tonumber(current) ~= DUE_NOW then
      redis.call('ZADD', sched, 'GT', ARGV[3 + 2 * u], user)
    end
  end
end
return 0
"""
)

# KEYS[1] schedule, KEYS[2] fence, KEYS[3] claims. ARGV: now, token (= now + lease), limit.
# Expired leases first (their sweeper died), then due users, skipping users whose lease is
# still running (events that arrived during their flush put them back on the schedule).
# Returns the claim's fence, then the users (nothing at all when no user was due).
_CLAIM = (
    "#!lua\n"
    + _HELPERS
    + """
local sched, claims = KEYS[1], KEYS[3]
local now, token, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local taken = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', claims, '-inf', ARGV[1], 'LIMIT', 0, limit)) do
  redis.call('ZADD', claims, token, user)
  redis.call('ZREM', sched, user)
  taken[#taken + 1] = user
end
local skipped = 0
while #taken < limit do
  local due = redis.call('ZRANGEBYSCORE', sched, '-inf', ARGV[1], 'LIMIT', skipped,
                         limit - #taken)
  if #due == 0 then break end
  for _, user in ipairs(due) do
    local lease = redis.call('ZSCORE', claims, user)
    if lease and tonumber(lease) > now then
      skipped = skipped + 1
    else
      redis.call('ZREM', sched, user)
      redis.call('ZADD', claims, token, user)
      taken[#taken + 1] = user
    end
  end
end
if #taken == 0 then return taken end
table.insert(taken, 1, advance_fence(now * 1000))
return taken
"""
)

# KEYS[1] schedule, KEYS[2] fence, KEYS[3] claims, KEYS[4] the user's types hash, KEYS[4 + k]
# events of type k. ARGV: user, token, K, then per type: type, #new, #cold, complete_from (-1:
# none), the NEW then the COLD members.
_RELEASE = (
    "#!lua\n"
    + _HELPERS
    + """
local sched, claims, types = KEYS[1], KEYS[3], KEYS[4]
local user, token = ARGV[1], ARGV[2]
local lease = redis.call('ZSCORE', claims, user)
if not lease or tonumber(lease) ~= tonumber(token) then return 0 end
advance_fence(0)
local pos = 4
for k = 1, tonumber(ARGV[3]) do
  local key = KEYS[4 + k]
  local type = ARGV[pos]
  local new, cold = tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  local coverage = ARGV[pos + 3]
  pos = pos + 4
  zrem(key, ARGV, pos, new)
  local cold_removed = zrem(key, ARGV, pos + new, cold)
  pos = pos + new + cold
  if redis.call('EXISTS', key) == 0 then
    redis.call('HDEL', types, type, 'f:' .. type)
  else
    if cold_removed > 0 then redis.call('HINCRBY', types, type, -cold_removed) end
    if tonumber(coverage) >= 0 then redis.call('HSET', types, 'f:' .. type, coverage) end
  end
end
redis.call('ZREM', claims, user)
-- Members the sweeper did not move (arrived during the flush, or left out) keep the user on
-- the schedule: at the deadline their add set, else once this lease would have run out.
if redis.call('EXISTS', types) == 1 then
  redis.call('ZADD', sched, 'NX', token, user)
end
return 1
"""
)


class RedisHotTier:
    """HotTier over redis.asyncio (hiredis parser when installed).

    address          "host:port" or a URL: redis://[user:pass@]host:port/db, rediss://, unix://
    prefix           namespace of every key, so several deployments can share one server
    timeout          bound in seconds on each operation (connecting and pool waits included);
                     slower means UnavailableError. An add waits for Redis's fsync.
    max_connections  pool size per process; callers beyond it wait (within `timeout`)
    """

    def __init__(
        self,
        address: str = "127.0.0.1:6379",
        *,
        prefix: str = "ih:",
        timeout: float = 2.0,
        max_connections: int = 64,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.where = redacted(redis_url(address))  # for messages: never print a password
        self.timeout = timeout
        self._prefix = prefix.encode()
        self._sched = self._prefix + b"sched"
        self._claims = self._prefix + b"claims"
        self._fence = self._prefix + b"fence"
        # No client-side retries: _run decides what is tried again.
        self._client = pooled_client(address, timeout=timeout, max_connections=max_connections)
        self._add_script = self._client.register_script(_ADD)
        self._claim_script = self._client.register_script(_CLAIM)
        self._release_script = self._client.register_script(_RELEASE)

    # -- key names --------------------------------------------------------------------------

    def events_key(self, type: str, user: bytes) -> bytes:
        return self._prefix + b"h:" + type.encode() + b":" + user

    def types_key(self, user: bytes) -> bytes:
        return self._prefix + b"t:" + user

    # -- HotTier ----------------------------------------------------------------------------

    async def add(
        self, events: Sequence[HotEvent], caps: Mapping[str, int], deadlines: Mapping[bytes, int]
    ) -> None:
        batch = add_batch(events, caps, deadlines)
        if batch.groups or batch.deadlines:
            await self._apply(batch, "add events")

    async def read(
        self, user: bytes, type: str, limit: int | None = None, since: int | None = None
    ) -> list[tuple[int, bytes]]:
        return (await self.read_range(user, type, limit, since)).events

    async def read_range(
        self, user: bytes, type: str, limit: int | None = None, since: int | None = None
    ) -> HotRange:
        check_user(user)
        check_type(type)
        check_limit(limit)
        if since is not None:
            check_time(since, "since")
        key = self.events_key(type, user)
        low: int | str = "-inf" if since is None else since

        async def newest() -> list[Any]:
            # MULTI/EXEC: the events and the coverage as of one instant, in one round trip.
            async with self._client.pipeline(transaction=True) as pipe:
                if limit != 0:
                    pipe.zrevrangebyscore(
                        key,
                        "+inf",
                        low,
                        start=None if limit is None else 0,
                        num=limit,
                        withscores=True,
                        score_cast_func=_score,
                    )
                pipe.hget(self.types_key(user), b"f:" + type.encode())
                replies: list[Any] = await pipe.execute()
                return replies

        *found, coverage = await self._run("read events", newest)
        events = [(ts, member) for member, ts in found[0]] if found else []
        return HotRange(events, None if coverage is None else int(coverage))

    async def fence(self) -> int:
        value = await self._run("read the fence", lambda: self._client.get(self._fence))
        return 0 if value is None else int(value)

    async def claim(self, now: int, lease: int, limit: int) -> list[Claim]:
        check_claim(now, lease, limit)
        if limit == 0:
            return []
        token = now + lease
        keys = [self._sched, self._fence, self._claims]
        taken = await self._run(
            "claim users", lambda: self._claim_script(keys=keys, args=[now, token, limit])
        )
        if not taken:
            return []
        fence, *users = cast(list[bytes], taken)
        return [Claim(user, token, int(fence)) for user in users]

    async def events_of(
        self, user: bytes, types: Sequence[str]
    ) -> dict[str, list[tuple[int, bytes]]]:
        return (await self.events_of_many([user], types))[0]

    async def events_of_many(
        self, users: Sequence[bytes], types: Sequence[str]
    ) -> list[dict[str, list[tuple[int, bytes]]]]:
        for user in users:
            check_user(user)
        for type_name in types:
            check_type(type_name, "types")
        names = list(dict.fromkeys(types))
        if not names or not users:
            return [{} for _ in users]

        async def snapshot(chunk: Sequence[bytes]) -> list[Any]:
            # One round trip. Each read is atomic; a sweep needs no more than that, since a
            # release removes exactly the members it was given.
            async with self._client.pipeline(transaction=False) as pipe:
                for user in chunk:
                    for type_name in names:
                        pipe.zrange(
                            self.events_key(type_name, user),
                            0,
                            -1,
                            withscores=True,
                            score_cast_func=_score,
                        )
                replies: list[Any] = await pipe.execute()
                return replies

        found: list[Any] = []
        for chunk in _chunks(users, USERS_PER_PIPELINE):
            found += await self._run("read users' events", partial(snapshot, chunk))
        replies = iter(found)
        return [
            {name: [(ts, member) for member, ts in next(replies)] for name in names} for _ in users
        ]

    async def release(
        self,
        claim: Claim,
        moved: Mapping[str, Sequence[bytes]],
        complete_from: Mapping[str, int] | None = None,
    ) -> bool:
        return (await self.release_many([Release(claim, moved, complete_from)]))[0]

    async def release_many(self, releases: Sequence[Release]) -> list[bool]:
        calls: list[tuple[list[bytes], list[bytes | int | str]]] = []
        for release in releases:
            claim = release.claim
            check_user(claim.user, "claim.user")
            check_time(claim.token, "claim.token")
            split = split_moved(release.moved)
            coverage = check_coverage(release.complete_from or {}, "complete_from")
            keys = [self._sched, self._fence, self._claims, self.types_key(claim.user)]
            args: list[bytes | int | str] = [claim.user, claim.token, len(split)]
            for type_name, (new, cold) in split.items():
                keys.append(self.events_key(type_name, claim.user))
                args += [type_name, len(new), len(cold), coverage.get(type_name, -1)]
                args += new
                args += cold
            calls.append((keys, args))
        if not calls:
            return []

        async def release_all(chunk: Sequence[tuple[list[bytes], list[Any]]]) -> list[Any]:
            # One round trip; each script is atomic on its own, as separate calls would be.
            async with self._client.pipeline(transaction=False) as pipe:
                for keys, args in chunk:
                    await self._release_script(keys=keys, args=args, client=pipe)
                replies: list[Any] = await pipe.execute()
                return replies

        done: list[bool] = []
        for chunk in _chunks(calls, USERS_PER_PIPELINE):
            done += map(bool, await self._run("release claims", partial(release_all, chunk)))
        return done

    async def load(
        self,
        user: bytes,
        events: Mapping[str, Sequence[tuple[int, bytes]]],
        caps: Mapping[str, int],
        deadline: int,
        complete_from: Mapping[str, int] | None = None,
        fence: int | None = None,
    ) -> None:
        batch = load_batch(user, events, caps, deadline, complete_from, fence)
        await self._apply(batch, "load events")

    async def scheduled(self, user: bytes) -> int | None:
        check_user(user)
        score = await self._run("read the schedule", lambda: self._client.zscore(self._sched, user))
        return None if score is None else int(score)

    async def close(self) -> None:
        # A dead connection may fail to close; there is nothing left to do about it then.
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose(close_connection_pool=True)

    # -- operations -------------------------------------------------------------------------

    async def server_problems(self) -> list[str]:
        """What in the server's setup breaks the hot tier's promises (empty when none).

        For start-up checks: an evicting server drops events, one without an fsynced AOF loses
        acknowledged ones on a crash. Settings a managed server hides are not reported.
        """
        info = await self._run("read server info", lambda: self._client.info("all"))
        problems: list[str] = []
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if policy.startswith("allkeys"):
            problems.append(f"maxmemory-policy is {policy}: Redis may evict events")
        if not info.get("aof_enabled"):
            problems.append("appendonly is off: a crash loses acknowledged events")
        try:
            config: dict[Any, Any] = await self._client.config_get("appendfsync")
        except RedisError:  # CONFIG is often disabled on managed servers
            return problems
        fsync = config.get(b"appendfsync", config.get("appendfsync"))
        if fsync not in (None, b"always", "always"):
            problems.append(f"appendfsync is {fsync!r}: a crash may lose the last second")
        return problems

    async def _apply(self, batch: Batch, operation: str) -> None:
        users = list(batch.deadlines)
        index = {user: i for i, user in enumerate(users, start=1)}
        keys = [self._sched, self._fence, *(self.types_key(user) for user in users)]
        fence = "" if batch.fence is None else batch.fence
        args: list[bytes | int | str] = [len(users), len(batch.groups), fence]
        for user in users:
            args += [user, batch.deadlines[user]]
        for group in batch.groups:
            keys.append(self.events_key(group.type, group.user))
            coverage = -1 if group.complete_from is None else group.complete_from
            args += [index[group.user], group.type, group.cap, len(group.new), len(group.cold)]
            args.append(coverage)
            for ts, member in group.new:
                args += [ts, member]
            for ts, member in group.cold:
                args += [ts, member]
        await self._run(operation, lambda: self._add_script(keys=keys, args=args))

    async def _run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await call()
                except RedisConnectionError:
                    # Typically a pooled connection to a server that restarted since: one
                    # more go on a fresh connection (the module docstring says why it is safe).
                    return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise UnavailableError(
                f"hot tier: Redis at {self.where} failed to {operation} ({detail})"
            ) from exc


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _score(raw: bytes | str | float) -> int:
    """A score as Redis sends it back: times are whole ms below 2**53, exact as doubles."""
    return int(float(raw))
