"""The cache feed (see configstore/cachefeed.py) in files::

    <data_dir>/config/cache/state.json        generations and the feed's sequence
    <data_dir>/config/cache/slots/<i>         the ring of invalidated-key batches
    <data_dir>/config/cache/subscribers/<id>  one file per process that caches rows, locked
                                              by it while it lives

Writers hold `cache/.lock`; readers poll the state file every `cache_poll_interval`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Collection
from pathlib import Path

from inferstack.configstore.cachefeed import (
    CacheListener,
    CacheState,
    CorruptCacheFeedError,
    FeedFollower,
    KeyBatch,
    encode_slot,
    slot_index,
)
from inferstack.configstore.files.layout import (
    SUBSCRIBERS_DIRECTORY,
    ConfigDirectory,
    Poller,
    replace_file,
)

log = logging.getLogger(__name__)


class FileCacheFeed:
    def __init__(self, directory: ConfigDirectory) -> None:
        self.directory = directory
        self.cache_directory = directory.cache_directory
        self.state_path = directory.cache_state_path
        # What the last load_state() read, so a watch started later misses no change.
        self._loaded: CacheState | None = None

    def load_state(self) -> CacheState:
        state = self._read_state()
        self._loaded = state
        return state

    def bump_generations(self, groups: Collection[str]) -> dict[str, int]:
        with self.directory.locked(self.cache_directory):
            state = self._read_state().bumped(groups)
            replace_file(self.state_path, state.encode())
        return {group: state.generations[group] for group in groups}

    def invalidate_keys(self, batch: KeyBatch) -> dict[str, int]:
        with self.directory.locked(self.cache_directory):
            state = self._read_state()
            sequence = state.sequence + 1
            slot = encode_slot(sequence, batch)
            if slot is None:  # too large for the ring: forget the groups instead
                state = state.bumped(batch)
                replace_file(self.state_path, state.encode())
                return {group: state.generations[group] for group in batch}
            slots = self.cache_directory / "slots"
            slots.mkdir(exist_ok=True)
            # The slot before the state that names it: a reader never finds a slot missing.
            replace_file(slots / str(slot_index(sequence)), slot)
            replace_file(self.state_path, CacheState(state.generations, sequence).encode())
        return {}

    def subscribe_keys(self) -> _Subscription:
        """A file in `cache/subscribers/` that this process keeps locked (flock) until
        `stop()`. The lock is the proof of life: the kernel drops it when the process dies,
        however it dies, and it works across PID namespaces (containers sharing the data
        dir), where a pid would not. The file is locked before it gets its name, so a reader
        never finds a subscriber's file unlocked."""
        directory = self.cache_directory / SUBSCRIBERS_DIRECTORY
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        temporary = directory / f".{name}"
        descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(temporary, directory / name)
        except BaseException:
            os.close(descriptor)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return _Subscription(directory / name, descriptor)

    def has_key_subscribers(self) -> bool:
        """Whether a subscriber's file is still locked by its process; the file of one that
        died (a worker killed) is removed on the way."""
        try:
            entries = list(os.scandir(self.cache_directory / SUBSCRIBERS_DIRECTORY))
        except FileNotFoundError:
            return False
        for entry in entries:
            if entry.name.startswith("."):
                continue  # being created: locked and named in a moment, by a live process
            if _held(entry.path):
                return True
        return False

    def watch(self, listener: CacheListener) -> _CacheFileWatch:
        start = self._loaded if self._loaded is not None else self._read_state()
        return _CacheFileWatch(self, FeedFollower(listener, start))

    def _read_state(self) -> CacheState:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return CacheState()
        return CacheState.decode(data, str(self.state_path))

    def _read_slots(self, indexes: list[int]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for index in indexes:
            try:
                out.append((self.cache_directory / "slots" / str(index)).read_bytes())
            except FileNotFoundError:
                out.append(None)
        return out


def _held(path: str) -> bool:
    """Whether the subscriber file at `path` is locked by a live process; if it is not, the
    file is removed (its process is gone)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # stopped meanwhile
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False
    finally:
        os.close(descriptor)  # releases our probe's lock too


class _Subscription:
    def __init__(self, path: Path, descriptor: int) -> None:
        self._path = path
        self._descriptor: int | None = descriptor

    def stop(self) -> None:
        if self._descriptor is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        os.close(self._descriptor)
        self._descriptor = None


class _CacheFileWatch(Poller):
    """Reads the cache state file every `cache_poll_interval` and delivers what changed."""

    def __init__(self, feed: FileCacheFeed, follower: FeedFollower) -> None:
        self._feed = feed
        self._follower = follower
        super().__init__("cache-feed-watch", feed.directory.cache_poll_interval)

    def _poll(self) -> None:
        feed = self._feed
        try:
            state = feed._read_state()
            self._follower.update(state, feed._read_slots, str(feed.cache_directory))
        except CorruptCacheFeedError:
            log.exception("cache feed unreadable; dropping in-process caches")
            self._follower.listener.messages_lost()
        except Exception:  # the watch must outlive any surprise
            log.exception("cache feed watch failed; retrying")
