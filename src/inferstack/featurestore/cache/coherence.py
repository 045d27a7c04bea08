"""Keeps one worker's caches in step with writes made anywhere, through the config store.

It is the bridge between a RowSource (on the worker's event loop) and the config store's
cache feed (configstore/cachefeed.py, delivered on the store's watch thread):

* in: generation changes, keys other workers wrote, "messages were lost" and the feed's
  connection state are handed to the RowSource on its loop, in the order they came;
* out: keys this worker wrote (Persist) are published for the others. Persists landing
  while a publish is under way are coalesced into the next one, so a stream of small
  Persists costs one config-store write per round trip, not one per call. A Persist whose
  shared-cache invalidation failed (Redis down, breaker open) asks for a generation bump
  of its group instead, which needs no Redis: old entries become unreachable everywhere.

A worker with any cache subscribes to keys before it caches anything. When no live process
has subscribed (the embedded default: no cache anywhere), keys are not published at all: a
publish would cost a config-store write for nobody, and a cache that subscribes later only
reads rows written before it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from inferstack.configstore.base import CacheFeedStore, Watch
from inferstack.configstore.cachefeed import KeyBatch
from inferstack.core.errors import UnavailableError
from inferstack.featurestore.rows import RowSource

log = logging.getLogger(__name__)


class CacheCoherence:
    def __init__(
        self, feed: CacheFeedStore, rows: RowSource, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.feed = feed
        self.rows = rows
        self.loop = loop
        self._keys: dict[str, list[bytes]] = {}
        self._bumps: set[str] = set()
        self._next: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._watch: Watch | None = None
        self._subscription: Watch | None = None

    def start(self) -> None:
        """Subscribe if this worker caches, take the current generations, then follow the
        feed from exactly there."""
        if self.rows.caches:
            self._subscription = self.feed.subscribe_keys()
        self.rows.set_generations(self.feed.load_state().generations)
        self.rows.publisher = self
        self._watch = self.feed.watch(self)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._subscription is not None:
            self._subscription.stop()
            self._subscription = None

    # -- CacheListener: called on the store's watch thread ---------------------------------

    def generations_changed(self, generations: Mapping[str, int]) -> None:
        self._on_loop(self.rows.set_generations, dict(generations))

    def keys_invalidated(self, batch: KeyBatch) -> None:
        self._on_loop(self.rows.forget_batch, batch)

    def messages_lost(self) -> None:
        log.warning("cache invalidations may have been missed; dropping the in-process cache")
        self._on_loop(self.rows.forget_everything)

    def connection_changed(self, live: bool) -> None:
        if not live:
            log.warning("config store unreachable: caches bypassed until it answers again")
        else:
            log.info("config store reachable again: caches in use")
        self._on_loop(self.rows.set_caching, live)

    def _on_loop(self, call: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is stopping
            self.loop.call_soon_threadsafe(call, *args)

    # -- InvalidationPublisher: called on the loop -----------------------------------------

    async def publish(self, group: str, keys: Sequence[bytes], *, bump: bool) -> None:
        if bump:
            self._bumps.add(group)
        else:
            self._keys.setdefault(group, []).extend(keys)
        if self._next is None:
            self._next = self.loop.create_future()
        waiter = self._next
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        # Shielded: a caller that gives up must not cancel a publish others wait for.
        await asyncio.shield(waiter)

    async def _flush(self) -> None:
        try:
            while self._next is not None:
                keys, bumps, done = self._keys, self._bumps, self._next
                self._keys, self._bumps, self._next = {}, set(), None
                try:
                    generations = await asyncio.to_thread(self._send, keys, bumps)
                except Exception as exc:
                    groups = ", ".join(sorted({*keys, *bumps}))
                    done.set_exception(
                        UnavailableError(
                            f"rows of {groups} were written, but other servers' caches could "
                            f"not be told (config store: {exc}); they may serve old values "
                            "until their cache ttl"
                        )
                    )
                    done.exception()  # retrieved: each waiter re-raises it
                else:
                    self.rows.set_generations(generations)  # this worker moves on at once
                    done.set_result(None)
        finally:
            self._flusher = None

    def _send(self, keys: dict[str, list[bytes]], bumps: set[str]) -> dict[str, int]:
        """Blocking config-store writes, on a thread. Keys of a group being bumped anyway
        need not be published."""
        generations: dict[str, int] = {}
        keys = {group: batch for group, batch in keys.items() if group not in bumps}
        if keys and not self.feed.has_key_subscribers():  # the rows are written already
            keys = {}
        if keys:
            try:
                generations.update(self.feed.invalidate_keys(keys))
            except Exception as exc:
                log.warning("could not publish invalidated keys (%s); bumping generations", exc)
                bumps |= set(keys)
        if bumps:
            generations.update(self.feed.bump_generations(sorted(bumps)))
        return generations
