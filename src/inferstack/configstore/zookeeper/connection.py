"""The one kazoo client a ZooKeeper config store's four stores share, and how they use it:
every request bounded in time, every watch stopped when the store is closed."""

from __future__ import annotations

from typing import Any, Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss, OperationTimeoutError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from inferstack.core.errors import InvalidArgumentError, UnavailableError

# The format of every header written (registry versions, blobs); readers refuse others.
FORMAT = 1
# kazoo's default reconnect backoff grows to an hour; servers must come back within seconds.
MAX_RECONNECT_DELAY = 1.0
# A watch that cannot read a changed registry retries at most this far apart.
MAX_RETRY_DELAY = 2.0
# Following the pointer again when the version it named was pruned mid-read.
READ_ATTEMPTS = 5
# kazoo errors that mean "ZooKeeper did not answer", as opposed to "it answered no".
_UNREACHABLE = (KazooTimeoutError, ConnectionLoss, SessionExpiredError, OperationTimeoutError)


class StoppableWatch(Protocol):
    def signal_stop(self) -> None:
        """Ask the watch to stop without waiting for it (its thread may be in a request)."""
        ...

    def stop(self) -> None: ...


class ZooKeeperConnection:
    """A started kazoo client under `root`; connects (or raises) in its constructor."""

    def __init__(
        self,
        hosts: str,
        root: str = "/inferstack",
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        session_timeout: float = 10.0,
    ) -> None:
        self.hosts = hosts
        self.root = "/" + root.strip("/")
        self.request_timeout = request_timeout
        self._base = self.root.rstrip("/")  # root "/" would otherwise give "//current"
        self._watches: list[StoppableWatch] = []
        self.client = self._connect(hosts, connect_timeout, session_timeout)

    @staticmethod
    def _connect(hosts: str, connect_timeout: float, session_timeout: float) -> Any:
        reconnect = KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=MAX_RECONNECT_DELAY)
        try:
            client = KazooClient(hosts=hosts, timeout=session_timeout, connection_retry=reconnect)
        except ValueError as exc:
            raise InvalidArgumentError(f"bad ZooKeeper address {hosts!r}: {exc}") from exc
        try:
            client.start(timeout=connect_timeout)  # on time-out it stops and closes itself
        except KazooTimeoutError as exc:
            raise UnavailableError(
                f"ZooKeeper at {hosts} did not answer within {connect_timeout:g}s"
            ) from exc
        return client

    def path(self, node: str) -> str:
        """The full path of `node` under the root."""
        return f"{self._base}/{node}"

    def wait(self, result: Any, doing: str) -> Any:
        """The value of a kazoo async request, within `request_timeout`.

        kazoo's blocking calls wait forever while disconnected (requests queue until it
        reconnects), so every request goes through here to fail in bounded time instead.
        """
        try:
            return result.get(timeout=self.request_timeout)
        except _UNREACHABLE as exc:
            raise UnavailableError(
                f"ZooKeeper at {self.hosts} did not answer a {doing} of {self.root} "
                f"within {self.request_timeout:g}s ({type(exc).__name__})"
            ) from exc

    def track(self, watch: StoppableWatch) -> None:
        """Stop `watch` when the connection is closed."""
        self._watches.append(watch)

    def close(self) -> None:
        watches, self._watches = self._watches, []
        for watch in watches:
            watch.signal_stop()
        self.client.stop()  # fails requests in flight, so the watch threads end at once
        for watch in watches:
            watch.stop()
        self.client.close()


def chunk_name(index: int) -> str:
    return f"c-{index:05d}"
