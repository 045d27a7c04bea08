"""What every config store publishes so row caches follow writes: the cache feed.

Two kinds of message reach every server worker through the config store:

* **Generations.** Each feature group has a generation; caches key their entries by it, so
  bumping a group's generation makes every cached row of it unreachable everywhere at once
  (`inferstack ingest` bumps the groups it wrote; a Persist whose shared-cache invalidation
  failed bumps its group). A new generation is never smaller than the wall clock in
  milliseconds, so a store that was wiped and starts again never hands out a generation
  that old cache entries still carry.
* **Invalidated keys.** A Persist names the keys it wrote, so other workers drop just those
  from their in-process caches. Batches go into a ring of `SLOTS` slots, numbered by a
  sequence the state document carries; a reader that fell more than the ring behind (or
  whose connection dropped) is told it lost messages and drops its whole in-process cache.

The state document: {"generations": {"group": 1712345678901}, "sequence": 42}.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from inferstack.core.errors import InferstackError

SLOTS = 128
# A published batch larger than this (compressed) becomes a generation bump of its groups:
# a Persist of that many keys is cheaper to forget group-wide than key by key, and slots stay
# small (ZooKeeper holds every byte of them in memory).
MAX_BATCH_BYTES = 64 * 1024
_SEQUENCE = struct.Struct(">Q")
_NAME = struct.Struct(">H")
_COUNT = struct.Struct(">I")

KeyBatch = Mapping[str, Sequence[bytes]]


class CorruptCacheFeedError(InferstackError):
    """A cache-feed document or slot that does not parse."""


@dataclass(frozen=True)
class CacheState:
    generations: dict[str, int] = field(default_factory=dict)
    sequence: int = 0

    def encode(self) -> bytes:
        return json.dumps(
            {"generations": self.generations, "sequence": self.sequence}, sort_keys=True
        ).encode()

    @classmethod
    def decode(cls, data: bytes, where: str) -> CacheState:
        if not data:
            return cls()
        try:
            fields = json.loads(data)
            generations = {str(g): int(n) for g, n in fields["generations"].items()}
            return cls(generations, int(fields["sequence"]))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CorruptCacheFeedError(f"{where}: not a cache state: {data[:100]!r}") from exc

    def bumped(self, groups: Iterable[str]) -> CacheState:
        """A copy with every group in `groups` on a new generation."""
        floor = time.time_ns() // 1_000_000
        generations = dict(self.generations)
        for group in groups:
            generations[group] = max(generations.get(group, 0) + 1, floor)
        return CacheState(generations, self.sequence)


class CacheListener(Protocol):
    """What a worker does with the feed. Called on the store's watch thread."""

    def generations_changed(self, generations: Mapping[str, int]) -> None:
        """The whole current map (groups absent from it are on generation 0)."""
        ...

    def keys_invalidated(self, batch: KeyBatch) -> None: ...

    def messages_lost(self) -> None:
        """Some invalidations may have been missed: forget everything cached in process."""
        ...

    def connection_changed(self, live: bool) -> None:
        """False: the feed cannot be heard (caches must not be trusted); True: it can again."""
        ...


def slot_index(sequence: int) -> int:
    return sequence % SLOTS


def encode_slot(sequence: int, batch: KeyBatch) -> bytes | None:
    """The slot payload for one batch, or None if it is too large for a slot."""
    parts: list[bytes] = []
    for group, keys in batch.items():
        name = group.encode()
        parts += [_NAME.pack(len(name)), name, _COUNT.pack(len(keys))]
        for key in keys:
            parts += [_COUNT.pack(len(key)), key]
    body = zlib.compress(b"".join(parts), 1)
    if len(body) > MAX_BATCH_BYTES:
        return None
    return _SEQUENCE.pack(sequence) + body


def decode_slot(data: bytes, where: str) -> tuple[int, dict[str, list[bytes]]]:
    """(sequence the slot was written for, its batch)."""
    try:
        (sequence,) = _SEQUENCE.unpack_from(data)
        body = zlib.decompress(data[_SEQUENCE.size :])
        batch: dict[str, list[bytes]] = {}
        at = 0
        while at < len(body):
            (size,) = _NAME.unpack_from(body, at)
            at += _NAME.size
            group = body[at : at + size].decode()
            at += size
            (count,) = _COUNT.unpack_from(body, at)
            at += _COUNT.size
            keys = batch.setdefault(group, [])
            for _ in range(count):
                (size,) = _COUNT.unpack_from(body, at)
                at += _COUNT.size
                if at + size > len(body):
                    raise ValueError("key runs past the end")
                keys.append(body[at : at + size])
                at += size
    except (struct.error, zlib.error, ValueError) as exc:
        raise CorruptCacheFeedError(f"{where}: not an invalidation batch") from exc
    return sequence, batch


class FeedFollower:
    """Turns successive states read from a store into listener calls; the part of a cache
    watch that is the same for every store."""

    def __init__(self, listener: CacheListener, start: CacheState) -> None:
        self.listener = listener
        self.state = start

    def update(self, state: CacheState, read_slots: SlotReader, where: str) -> None:
        if state.generations != self.state.generations:
            self.listener.generations_changed(state.generations)
        last, newest = self.state.sequence, state.sequence
        if newest != last:
            if newest < last or newest - last > SLOTS:  # the store was reset, or we fell behind
                self.listener.messages_lost()
            else:
                wanted = list(range(last + 1, newest + 1))
                for sequence, data in zip(
                    wanted, read_slots([slot_index(s) for s in wanted]), strict=True
                ):
                    found = _decode_or_none(data, where)
                    if found is None or found[0] != sequence:  # overwritten by a later batch
                        self.listener.messages_lost()
                        break
                    self.listener.keys_invalidated(found[1])
        self.state = state


class SlotReader(Protocol):
    def __call__(self, indexes: list[int]) -> list[bytes | None]: ...


def _decode_or_none(data: bytes | None, where: str) -> tuple[int, dict[str, list[bytes]]] | None:
    if data is None:
        return None
    try:
        return decode_slot(data, where)
    except CorruptCacheFeedError:
        return None  # counts as lost: the reader drops its in-process cache
