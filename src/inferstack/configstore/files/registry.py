"""The registry as one JSON file, `<data_dir>/config/registry.json`, replaced by rename."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable

from inferstack.configstore.base import ConfigConflictError
from inferstack.configstore.files.layout import ConfigDirectory, Poller
from inferstack.core.registry import Registry

log = logging.getLogger(__name__)
FileIdentity = tuple[int, int] | None  # (inode, mtime): a rename always changes it


class FileRegistryStore:
    def __init__(self, directory: ConfigDirectory) -> None:
        self.directory = directory
        self.path = directory.registry_path
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
        directory = self.directory.directory
        directory.mkdir(parents=True, exist_ok=True)
        with self.directory.locked():
            stored = self.load().revision
            if stored != expected_revision:
                raise ConfigConflictError(
                    f"definitions changed while applying (revision {stored}, expected "
                    f"{expected_revision}); run apply again"
                )
            fd, temp = tempfile.mkstemp(dir=directory, prefix=".registry-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(registry.model_dump_json(indent=1))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)  # atomic: readers see the old or the new file

    def watch(self, on_change: Callable[[Registry], None]) -> _PollingWatch:
        start = self._loaded if self._loaded is not None else self.identity()
        return _PollingWatch(self, on_change, start)


class _PollingWatch(Poller):
    """Polls the file's identity; a rename changes the inode, so no change is missed."""

    def __init__(
        self, store: FileRegistryStore, on_change: Callable[[Registry], None], seen: FileIdentity
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._seen = seen
        super().__init__("config-watch", store.directory.poll_interval)

    def _poll(self) -> None:
        identity = self._store.identity()
        if identity == self._seen:
            return
        self._seen = identity
        try:
            self._on_change(self._store.load())
        except Exception:  # a bad file must not kill the watch; keep the last good one
            log.exception("could not load changed definitions from %s", self._store.path)
