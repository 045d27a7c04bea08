"""The cache feed (see configstore/cachefeed.py) in ZooKeeper::

<root>/cache/state                 per-group cache generations and the sequence of
                                   invalidated-key batches
<root>/cache/slots/s-<index>       the ring of those batches; a batch and the state that
                                   names it are written in one multi-op transaction
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Collection
from typing import Any

from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState

from inferstack.configstore.cachefeed import (
    CacheListener,
    CacheState,
    CorruptCacheFeedError,
    FeedFollower,
    KeyBatch,
    encode_slot,
    slot_index,
)
from inferstack.configstore.zookeeper.connection import MAX_RETRY_DELAY, ZooKeeperConnection
from inferstack.core.errors import UnavailableError

log = logging.getLogger(__name__)

CACHE_NODE = "cache"
# Compare-and-set rounds on the cache state before giving up (writers contend only while
# many Persists land in the same milliseconds; each round is one ZooKeeper round trip).
CACHE_CAS_ATTEMPTS = 50


class ZooKeeperCacheFeed:
    def __init__(self, connection: ZooKeeperConnection) -> None:
        self.connection = connection
        self._client = connection.client
        self._wait = connection.wait
        self._cache_path = connection.path(CACHE_NODE)
        self._cache_state_path = f"{self._cache_path}/state"
        self._slots_path = f"{self._cache_path}/slots"
        self._slots_made: set[int] | None = None  # slot nodes known to exist
        self._loaded: CacheState | None = None

    def load_state(self) -> CacheState:
        state = self._read_state()[0]
        self._loaded = state
        return state

    def bump_generations(self, groups: Collection[str]) -> dict[str, int]:
        for _ in range(CACHE_CAS_ATTEMPTS):
            state, version = self._read_state()
            bumped = state.bumped(groups)
            try:
                self._write_state(bumped, version)
            except (BadVersionError, NodeExistsError):
                continue  # another writer got in between: read again
            return {group: bumped.generations[group] for group in groups}
        raise UnavailableError(self._contended())

    def invalidate_keys(self, batch: KeyBatch) -> dict[str, int]:
        for _ in range(CACHE_CAS_ATTEMPTS):
            state, version = self._read_state()
            if version is None:  # nothing published yet: create the state, then go on
                with contextlib.suppress(NodeExistsError):
                    self._write_state(state, None)
                continue
            sequence = state.sequence + 1
            slot = encode_slot(sequence, batch)
            if slot is None:  # too large for the ring: forget the groups instead
                return self.bump_generations(list(batch))
            index = slot_index(sequence)
            made = self._known_slots()
            path = f"{self._slots_path}/s-{index:03d}"
            transaction = self._client.transaction()
            transaction.set_data(
                self._cache_state_path, CacheState(state.generations, sequence).encode(), version
            )
            if index in made:
                transaction.set_data(path, slot)
            else:
                transaction.create(path, slot)
            results = self._wait(transaction.commit_async(), "cache feed write")
            failures = [r for r in results if isinstance(r, Exception)]
            if not failures:
                made.add(index)
                return {}
            if any(isinstance(r, NodeExistsError) for r in failures):
                made.add(index)
            elif any(isinstance(r, NoNodeError) for r in failures):
                made.discard(index)
        raise UnavailableError(self._contended())

    def subscribe_keys(self) -> _NoSubscription:
        return _NoSubscription()

    def has_key_subscribers(self) -> bool:
        """Always: distributed workers cache in process by default, and finding out would
        cost a ZooKeeper read per publish."""
        return True

    def watch(self, listener: CacheListener) -> _CacheWatch:
        start = self._loaded if self._loaded is not None else self.load_state()
        watch = _CacheWatch(self, FeedFollower(listener, start))
        self.connection.track(watch)
        return watch

    def _read_state(self) -> tuple[CacheState, int | None]:
        """The state and its znode version (None: never written)."""
        try:
            data, stat = self._wait(
                self._client.get_async(self._cache_state_path), "cache feed read"
            )
        except NoNodeError:
            return CacheState(), None
        return CacheState.decode(data, self._cache_state_path), stat.version

    def _write_state(self, state: CacheState, version: int | None) -> None:
        if version is None:
            self._wait(self._client.ensure_path_async(self._cache_path), "cache feed write")
            request = self._client.create_async(self._cache_state_path, state.encode())
        else:
            request = self._client.set_async(
                self._cache_state_path, state.encode(), version=version
            )
        self._wait(request, "cache feed write")

    def _known_slots(self) -> set[int]:
        if self._slots_made is None:
            self._wait(self._client.ensure_path_async(self._slots_path), "cache feed write")
            names = self._wait(self._client.get_children_async(self._slots_path), "read")
            self._slots_made = {int(n[2:]) for n in names if n.startswith("s-") and n[2:].isdigit()}
        return self._slots_made

    def _read_slots(self, indexes: list[int]) -> list[bytes | None]:
        pending = [self._client.get_async(f"{self._slots_path}/s-{index:03d}") for index in indexes]
        out: list[bytes | None] = []
        for result in pending:
            try:
                out.append(self._wait(result, "cache feed read")[0])
            except NoNodeError:
                out.append(None)
        return out

    def _contended(self) -> str:
        return (
            f"could not update the cache feed in ZooKeeper at {self.connection.hosts} "
            f"({self._cache_state_path}): {CACHE_CAS_ATTEMPTS} concurrent updates won first"
        )


class _CacheWatch:
    """A DataWatch on the cache state plus a connection listener, delivering on one thread.

    While the connection is down nothing can be heard, so the listener is told at once
    (caches stop being trusted); after reconnecting, whatever was missed is unknowable, so
    the listener is told messages were lost before it is told the feed is live again.
    """

    def __init__(self, feed: ZooKeeperCacheFeed, follower: FeedFollower) -> None:
        self._feed = feed
        self._follower = follower
        self._live = True
        self._reconnected = False
        self._wake = threading.Event()
        self._stopped = threading.Event()
        feed._client.add_listener(self._connection_changed)
        self._thread = threading.Thread(target=self._run, name="zookeeper-cache-watch", daemon=True)
        self._thread.start()

    def signal_stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def stop(self) -> None:
        self.signal_stop()
        self._feed._client.remove_listener(self._connection_changed)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=self._feed.connection.request_timeout + 1)

    def _connection_changed(self, state: str) -> None:  # kazoo's thread: must not block
        if state == KazooState.CONNECTED:
            if not self._live:
                self._reconnected = True
                self._wake.set()
        elif self._live:
            self._live = False
            self._follower.listener.connection_changed(False)

    def _state_changed(self, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        if self._stopped.is_set():
            return False
        self._wake.set()
        return None

    def _run(self) -> None:
        feed = self._feed
        try:
            feed._client.DataWatch(feed._cache_state_path, self._state_changed)
        except Exception:
            log.exception("could not watch %s for cache invalidations", feed._cache_state_path)
            return
        delay = 0.1
        while True:
            self._wake.wait()
            if self._stopped.is_set():
                return
            self._wake.clear()
            reconnected, self._reconnected = self._reconnected, False
            try:
                state, _ = feed._read_state()
                if reconnected:
                    # Batches published meanwhile may be gone from the ring: start afresh.
                    self._follower.listener.messages_lost()
                    previous = self._follower.state
                    self._follower.state = CacheState(previous.generations, state.sequence)
                self._follower.update(state, feed._read_slots, feed._cache_path)
                if reconnected:
                    self._live = True
                    self._follower.listener.connection_changed(True)
                delay = 0.1
            except (UnavailableError, CorruptCacheFeedError, KazooException) as exc:
                log.warning("cache feed cannot be read yet, retrying: %s", exc)
                self._reconnected = self._reconnected or reconnected
                if self._stopped.wait(delay):
                    return
                delay = min(delay * 2, MAX_RETRY_DELAY)
                self._wake.set()
            except Exception:
                log.exception("unexpected error reading the cache feed from ZooKeeper")


class _NoSubscription:
    """Publishers always publish (has_key_subscribers), so there is nothing to record."""

    def stop(self) -> None:
        pass
