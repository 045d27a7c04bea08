"""Who may call (core/callers.py), in `<data_dir>/config/callers.json`: hashes, never tokens."""

from __future__ import annotations

import logging
from collections.abc import Callable

from inferstack.configstore.files.layout import ConfigDirectory, Poller, replace_file
from inferstack.core.callers import Callers, CallersConflictError

log = logging.getLogger(__name__)


class FileCallerStore:
    def __init__(self, directory: ConfigDirectory) -> None:
        self.directory = directory
        self.path = directory.callers_path

    def load(self) -> Callers:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Callers()
        return Callers.decode(data, str(self.path))

    def save(self, callers: Callers, expected_revision: int) -> None:
        with self.directory.locked():
            stored = self.load().revision
            if stored != expected_revision:
                raise CallersConflictError(
                    f"callers changed meanwhile (revision {stored}, expected "
                    f"{expected_revision}); run the command again"
                )
            replace_file(self.path, callers.encode())  # mkstemp: mode 0600

    def watch(self, on_change: Callable[[Callers], None]) -> _CallersFileWatch:
        return _CallersFileWatch(self, on_change)


class _CallersFileWatch(Poller):
    """Polls the callers file as often as the cache feed (a revocation must reach every
    worker within a second); delivers each new revision, including the first one seen."""

    def __init__(self, store: FileCallerStore, on_change: Callable[[Callers], None]) -> None:
        self._store = store
        self._on_change = on_change
        self._seen = -1
        self._failing = False
        super().__init__("callers-watch", store.directory.cache_poll_interval)

    def _poll(self) -> None:
        try:
            callers = self._store.load()
            self._failing = False
            if callers.revision != self._seen:
                self._seen = callers.revision
                self._on_change(callers)
        except Exception as exc:  # keep the last good callers; say why once
            if not self._failing:
                log.error("could not read callers from %s: %s", self._store.path, exc)
            self._failing = True
