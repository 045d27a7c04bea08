"""Embedded config store: one JSON file under the data directory, replaced by rename.

Blobs (model files) live next to it, one file per blob named by its sha256::

    <data_dir>/config/registry.json
    <data_dir>/config/blobs/<sha256>
    <data_dir>/config/cache/state.json    the cache feed (see cachefeed.py): generations and
    <data_dir>/config/cache/slots/<i>     the ring of invalidated-key batches
    <data_dir>/config/callers.json        who may call (core/callers.py): hashes, never tokens

Each blob is written to a temporary file in the same directory, synced and renamed into
place, so a reader sees the whole blob or none; concurrent writers of the same blob each
rename their own complete copy. A writer that dies leaves only a `.blob-*` temporary file.
A blob's `stored_at` is its file's mtime; putting bytes already stored touches the file.
Deleting is an unlink: a reader that opened the file still reads all of it, later ones get
BlobNotFoundError. Touching, renaming into place and deleting hold `blobs/.lock`, so a
conditional delete (`if_stored_at`) never removes a blob stored again after its check.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from inferstack.configstore.base import (
    BlobInfo,
    BlobNotFoundError,
    ConfigConflictError,
    CorruptBlobError,
    blob_digest,
    check_digest,
    is_digest,
)
from inferstack.configstore.cachefeed import (
    CacheListener,
    CacheState,
    CorruptCacheFeedError,
    FeedFollower,
    KeyBatch,
    encode_slot,
    slot_index,
)
from inferstack.core.callers import Callers, CallersConflictError
from inferstack.core.registry import Registry

log = logging.getLogger(__name__)
REGISTRY_FILE = "registry.json"
BLOBS_DIRECTORY = "blobs"
FileIdentity = tuple[int, int] | None  # (inode, mtime): a rename always changes it
CACHE_DIRECTORY = "cache"
CACHE_STATE_FILE = "state.json"
# Workers on one machine hear of writes this often; reading a small file costs microseconds.
CACHE_POLL_INTERVAL = 0.05
CALLERS_FILE = "callers.json"


class FileConfigStore:
    def __init__(
        self,
        data_dir: Path,
        poll_interval: float = 0.25,
        cache_poll_interval: float = CACHE_POLL_INTERVAL,
    ) -> None:
        self.directory = data_dir / "config"
        self.path = self.directory / REGISTRY_FILE
        self.blobs_directory = self.directory / BLOBS_DIRECTORY
        self.cache_directory = self.directory / CACHE_DIRECTORY
        self.cache_state_path = self.cache_directory / CACHE_STATE_FILE
        self.callers_path = self.directory / CALLERS_FILE
        self.poll_interval = poll_interval
        self.cache_poll_interval = cache_poll_interval
        # What the last load() read, so a watch started later misses no change in between.
        self._loaded: FileIdentity | None = None
        self._cache_loaded: CacheState | None = None  # the same for the cache feed

    def identity(self) -> FileIdentity:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns)

    def load(self) -> Registry:
        identity = self.identity()
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Registry()
        finally:
            self._loaded = identity
        return Registry.model_validate_json(text)

    def save(self, registry: Registry, expected_revision: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            stored = self.load().revision
            if stored != expected_revision:
                raise ConfigConflictError(
                    f"definitions changed while applying (revision {stored}, expected "
                    f"{expected_revision}); run apply again"
                )
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".registry-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(registry.model_dump_json(indent=1))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)  # atomic: readers see the old or the new file

    def watch(self, on_change: Callable[[Registry], None]) -> _PollingWatch:
        start = self._loaded if self._loaded is not None else self.identity()
        return _PollingWatch(self, on_change, start)

    def put_blob(self, data: bytes) -> str:
        digest = blob_digest(data)
        path = self._blob_path(digest)
        if self._is_stored(path, digest) and self._touch(path):
            return digest
        # Absent, or damaged on disk: (re)write it. Same bytes, so racing writers agree.
        self.blobs_directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.blobs_directory, prefix=".blob-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            with self._locked(self.blobs_directory):  # not between a delete's check and unlink
                os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _sync_directory(self.blobs_directory)  # the rename itself survives a power cut
        return digest

    def get_blob(self, digest: str) -> bytes:
        digest = check_digest(digest)
        path = self._blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {digest} in {self.blobs_directory}") from None
        if blob_digest(data) != digest:
            raise CorruptBlobError(
                f"blob {digest} is corrupt: {path} does not hash to its name; "
                "store the file again (inferstack apply)"
            )
        return data

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(check_digest(digest)).is_file()

    def list_blobs(self) -> list[BlobInfo]:
        try:
            entries = list(os.scandir(self.blobs_directory))
        except FileNotFoundError:
            return []
        blobs = []
        for entry in entries:
            if not is_digest(entry.name):  # .lock, or a dead writer's .blob-* file
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # deleted since the directory was read
                continue
            blobs.append(BlobInfo(entry.name, stat.st_size, stat.st_mtime))
        return sorted(blobs, key=lambda blob: blob.digest)

    def delete_blob(self, digest: str, *, if_stored_at: float | None = None) -> bool:
        path = self._blob_path(check_digest(digest))
        if not self.blobs_directory.is_dir():
            return False  # nothing ever stored; do not create the directory to find that out
        with self._locked(self.blobs_directory):
            try:
                stored_at = path.stat().st_mtime
            except FileNotFoundError:
                return False
            if if_stored_at is not None and stored_at != if_stored_at:
                return False  # stored again since it was listed: an apply is using it
            path.unlink()
        _sync_directory(self.blobs_directory)  # the unlink survives a power cut too
        return True

    def close(self) -> None:
        pass

    # -- callers (core/callers.py) ----------------------------------------------------------

    def load_callers(self) -> Callers:
        try:
            data = self.callers_path.read_bytes()
        except FileNotFoundError:
            return Callers()
        return Callers.decode(data, str(self.callers_path))

    def save_callers(self, callers: Callers, expected_revision: int) -> None:
        with self._locked():
            stored = self.load_callers().revision
            if stored != expected_revision:
                raise CallersConflictError(
                    f"callers changed meanwhile (revision {stored}, expected "
                    f"{expected_revision}); run the command again"
                )
            self._replace(self.callers_path, callers.encode())  # mkstemp: mode 0600

    def watch_callers(self, on_change: Callable[[Callers], None]) -> _CallersFileWatch:
        return _CallersFileWatch(self, on_change)

    # -- the cache feed ---------------------------------------------------------------------

    def load_cache_state(self) -> CacheState:
        state = self._read_cache_state()
        self._cache_loaded = state
        return state

    def bump_generations(self, groups: Collection[str]) -> dict[str, int]:
        with self._locked(self.cache_directory):
            state = self._read_cache_state().bumped(groups)
            self._replace(self.cache_state_path, state.encode())
        return {group: state.generations[group] for group in groups}

    def invalidate_keys(self, batch: KeyBatch) -> dict[str, int]:
        with self._locked(self.cache_directory):
            state = self._read_cache_state()
            sequence = state.sequence + 1
            slot = encode_slot(sequence, batch)
            if slot is None:  # too large for the ring: forget the groups instead
                state = state.bumped(batch)
                self._replace(self.cache_state_path, state.encode())
                return {group: state.generations[group] for group in batch}
            slots = self.cache_directory / "slots"
            slots.mkdir(exist_ok=True)
            # The slot before the state that names it: a reader never finds a slot missing.
            self._replace(slots / str(slot_index(sequence)), slot)
            self._replace(self.cache_state_path, CacheState(state.generations, sequence).encode())
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

    def watch_cache(self, listener: CacheListener) -> _CacheFileWatch:
        start = self._cache_loaded if self._cache_loaded is not None else self._read_cache_state()
        return _CacheFileWatch(self, FeedFollower(listener, start))

    def _read_cache_state(self) -> CacheState:
        try:
            data = self.cache_state_path.read_bytes()
        except FileNotFoundError:
            return CacheState()
        return CacheState.decode(data, str(self.cache_state_path))

    def _read_slots(self, indexes: list[int]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for index in indexes:
            try:
                out.append((self.cache_directory / "slots" / str(index)).read_bytes())
            except FileNotFoundError:
                out.append(None)
        return out

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        """Readers see the old or the new content. Not synced: the feed only matters to
        running processes, and a lost state restarts generations above the clock anyway."""
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def _blob_path(self, digest: str) -> Path:
        return self.blobs_directory / digest

    @staticmethod
    def _is_stored(path: Path, digest: str) -> bool:
        """Whether `path` holds an intact copy of the blob named `digest`."""
        try:
            return blob_digest(path.read_bytes()) == digest
        except FileNotFoundError:
            return False

    def _touch(self, path: Path) -> bool:
        """Make a stored blob's `stored_at` now; False if it was deleted meanwhile."""
        with self._locked(self.blobs_directory):
            try:
                os.utime(path)
            except FileNotFoundError:
                return False
        return True

    @contextmanager
    def _locked(self, directory: Path | None = None) -> Iterator[None]:
        directory = directory or self.directory
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SUBSCRIBERS_DIRECTORY = "subscribers"


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


class _Poller:
    """Calls `_poll` every `interval` seconds on a daemon thread until `stop()`."""

    def __init__(self, name: str, interval: float) -> None:
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._poll()

    def _poll(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopped.set()
        if threading.current_thread() is not self._thread:  # stop() from inside a callback
            self._thread.join(timeout=2)


class _PollingWatch(_Poller):
    """Polls the file's identity; a rename changes the inode, so no change is missed."""

    def __init__(
        self, store: FileConfigStore, on_change: Callable[[Registry], None], seen: FileIdentity
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._seen = seen
        super().__init__("config-watch", store.poll_interval)

    def _poll(self) -> None:
        identity = self._store.identity()
        if identity == self._seen:
            return
        self._seen = identity
        try:
            self._on_change(self._store.load())
        except Exception:  # a bad file must not kill the watch; keep the last good one
            log.exception("could not load changed definitions from %s", self._store.path)


class _CacheFileWatch(_Poller):
    """Reads the cache state file every `cache_poll_interval` and delivers what changed."""

    def __init__(self, store: FileConfigStore, follower: FeedFollower) -> None:
        self._store = store
        self._follower = follower
        super().__init__("cache-feed-watch", store.cache_poll_interval)

    def _poll(self) -> None:
        store = self._store
        try:
            state = store._read_cache_state()
            self._follower.update(state, store._read_slots, str(store.cache_directory))
        except CorruptCacheFeedError:
            log.exception("cache feed unreadable; dropping in-process caches")
            self._follower.listener.messages_lost()
        except Exception:  # the watch must outlive any surprise
            log.exception("cache feed watch failed; retrying")


class _CallersFileWatch(_Poller):
    """Polls the callers file as often as the cache feed (a revocation must reach every
    worker within a second); delivers each new revision, including the first one seen."""

    def __init__(self, store: FileConfigStore, on_change: Callable[[Callers], None]) -> None:
        self._store = store
        self._on_change = on_change
        self._seen = -1
        self._failing = False
        super().__init__("callers-watch", store.cache_poll_interval)

    def _poll(self) -> None:
        try:
            callers = self._store.load_callers()
            self._failing = False
            if callers.revision != self._seen:
                self._seen = callers.revision
                self._on_change(callers)
        except Exception as exc:  # keep the last good callers; say why once
            if not self._failing:
                log.error("could not read callers from %s: %s", self._store.callers_path, exc)
            self._failing = True
