"""Embedded config store: one JSON file under the data directory, replaced by rename."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from inferstack.configstore.base import ConfigConflictError
from inferstack.core.registry import Registry

log = logging.getLogger(__name__)
REGISTRY_FILE = "registry.json"
FileIdentity = tuple[int, int] | None  # (inode, mtime): a rename always changes it


class FileConfigStore:
    def __init__(self, data_dir: Path, poll_interval: float = 0.25) -> None:
        self.directory = data_dir / "config"
        self.path = self.directory / REGISTRY_FILE
        self.poll_interval = poll_interval
        # What the last load() read, so a watch started later misses no change in between.
        self._loaded: FileIdentity | None = None

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

    def close(self) -> None:
        pass

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class _PollingWatch:
    """Polls the file's identity; a rename changes the inode, so no change is missed."""

    def __init__(
        self, store: FileConfigStore, on_change: Callable[[Registry], None], seen: FileIdentity
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._stopped = threading.Event()
        self._seen = seen
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._store.poll_interval):
            identity = self._store.identity()
            if identity == self._seen:
                continue
            self._seen = identity
            try:
                self._on_change(self._store.load())
            except Exception:  # a bad file must not kill the watch; keep the last good one
                log.exception("could not load changed definitions from %s", self._store.path)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
