"""Who may call (core/callers.py) in ZooKeeper: `<root>/callers` holds token hashes, never
tokens, and is replaced by a version-checked set."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from inferstack.configstore.zookeeper.connection import ZooKeeperConnection
from inferstack.core.callers import Callers, CallersConflictError

log = logging.getLogger(__name__)

CALLERS_NODE = "callers"


class ZooKeeperCallerStore:
    def __init__(self, connection: ZooKeeperConnection) -> None:
        self.connection = connection
        self._client = connection.client
        self._wait = connection.wait
        self._callers_path = connection.path(CALLERS_NODE)

    def load(self) -> Callers:
        return self._read()[0]

    def save(self, callers: Callers, expected_revision: int) -> None:
        stored, version = self._read()
        if stored.revision != expected_revision:
            raise CallersConflictError(
                f"callers changed meanwhile (revision {stored.revision}, expected "
                f"{expected_revision}); run the command again"
            )
        try:
            if version is None:
                self._wait(self._client.ensure_path_async(self.connection.root), "callers write")
                self._wait(self._client.create_async(self._callers_path, callers.encode()), "write")
            else:
                request = self._client.set_async(self._callers_path, callers.encode(), version)
                self._wait(request, "callers write")
        except (BadVersionError, NodeExistsError) as exc:
            raise CallersConflictError(
                f"callers in ZooKeeper at {self.connection.hosts} changed meanwhile; "
                "run the command again"
            ) from exc

    def watch(self, on_change: Callable[[Callers], None]) -> _CallersWatch:
        watch = _CallersWatch(self, on_change)
        self.connection.track(watch)
        return watch

    def _read(self) -> tuple[Callers, int | None]:
        try:
            data, stat = self._wait(self._client.get_async(self._callers_path), "callers read")
        except NoNodeError:
            return Callers(), None
        return Callers.decode(data, self._callers_path), stat.version


class _CallersWatch:
    """A DataWatch on the callers node. Decoding a small document is cheap, so it is done on
    kazoo's thread; the watch fires on every change and again after a reconnect."""

    def __init__(self, store: ZooKeeperCallerStore, on_change: Callable[[Callers], None]) -> None:
        self._on_change = on_change
        self._path = store._callers_path
        self._stopped = False
        store._client.DataWatch(self._path, self._changed)

    def _changed(self, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        if self._stopped:
            return False
        try:
            self._on_change(Callers.decode(data or b"", self._path))
        except Exception as exc:  # keep the last good callers
            log.error("could not read callers from %s: %s", self._path, exc)
        return None

    def signal_stop(self) -> None:
        self._stopped = True

    def stop(self) -> None:
        self._stopped = True
