"""The directory the embedded config store lives in, shared by its four stores: where each
file is, the file locks that order writers, and the polling every watch runs on."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REGISTRY_FILE = "registry.json"
BLOBS_DIRECTORY = "blobs"
CACHE_DIRECTORY = "cache"
CACHE_STATE_FILE = "state.json"
SUBSCRIBERS_DIRECTORY = "subscribers"
CALLERS_FILE = "callers.json"
# Workers on one machine hear of writes this often; reading a small file costs microseconds.
CACHE_POLL_INTERVAL = 0.05


class ConfigDirectory:
    """`<data_dir>/config` and how often its watches poll. Nothing to release on close: the
    watches are daemon threads, and every lock is held only for the length of one write."""

    def __init__(
        self,
        data_dir: Path,
        poll_interval: float = 0.25,
        cache_poll_interval: float = CACHE_POLL_INTERVAL,
    ) -> None:
        self.directory = data_dir / "config"
        self.registry_path = self.directory / REGISTRY_FILE
        self.blobs_directory = self.directory / BLOBS_DIRECTORY
        self.cache_directory = self.directory / CACHE_DIRECTORY
        self.cache_state_path = self.cache_directory / CACHE_STATE_FILE
        self.callers_path = self.directory / CALLERS_FILE
        self.poll_interval = poll_interval
        self.cache_poll_interval = cache_poll_interval

    @contextmanager
    def locked(self, directory: Path | None = None) -> Iterator[None]:
        """Hold `<directory>/.lock` (default: the config directory itself) exclusively."""
        directory = directory or self.directory
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self) -> None:
        pass


def replace_file(path: Path, data: bytes) -> None:
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


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Poller:
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
