"""The registry in ZooKeeper: immutable versions and a pointer flipped by compare-and-set::

    <root>/current                     the pointer, JSON:
                                       {"revision": 7, "node": "r-0000000007-0000000031"}
    <root>/registry/r-<rev>-<seq>      one immutable version; its data is a JSON header:
                                       {"format": 1, "revision": 7, "encoding": "zlib",
                                        "chunks": 1, "size": 5120, "sha256": "<hex>"}
    <root>/registry/r-<rev>-<seq>/c-00000, c-00001, ...
                                       the registry as zlib-compressed JSON, split into
                                       chunks of at most 512 KiB

No pointer means nothing was ever applied: `load` returns an empty registry (revision 0).

Why this shape:

* Readers switch atomically. A version node and all its chunks are written first and never
  change afterwards; only then is the pointer flipped, with one ``set``. Readers always go
  through the pointer, so they see the old complete registry or the new one, never a mix.
* Compare-and-set. The flip is a ``set`` conditioned on the pointer's znode version read at
  the start of `save` (a ``create`` when nothing was applied yet), so of two concurrent
  applies exactly one wins; the other gets ConfigConflictError and its version is removed.
* Size. ZooKeeper refuses any packet above ``jute.maxbuffer`` (about 1 MiB by default), and a
  registry with thousands of features can be larger than that, so one node holding the whole
  JSON would cap the registry size. Compressed chunks of 512 KiB stay well below the limit.
* Unique names. ZooKeeper appends a sequence number to each version node, so two writers
  racing for the same revision never write into the same node. A writer that dies halfway
  leaves a version that nothing points at; it ages out with the old versions.
* Bounded history. After each save only the newest `keep_versions` (default 10) version nodes
  are kept, and never the one the pointer names. Keeping a few lets a reader that followed
  the pointer just before a flip finish reading; if its version was deleted anyway, the
  reader follows the pointer again.

Watching: a kazoo DataWatch on the pointer wakes one worker thread per watch. The worker
reads the pointer and the version it names, checks it (checksum, JSON, schema, and that its
revision is the one the pointer names) and calls `on_change` if it is newer than the last one
delivered; a broken version is logged and skipped. While ZooKeeper is unreachable nothing is
called, so a server keeps its last good definitions. kazoo reconnects by itself (retrying at
least every MAX_RECONNECT_DELAY seconds here) and the DataWatch reads the pointer again on
reconnect, so a change made in the meantime is picked up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from pydantic import ValidationError

from inferstack.configstore.base import ConfigConflictError
from inferstack.configstore.zookeeper.connection import (
    FORMAT,
    MAX_RETRY_DELAY,
    READ_ATTEMPTS,
    ZooKeeperConnection,
    chunk_name,
)
from inferstack.core.errors import InferstackError, UnavailableError
from inferstack.core.registry import Registry

log = logging.getLogger(__name__)

POINTER_NODE = "current"
VERSIONS_NODE = "registry"
CHUNK_BYTES = 512 * 1024


class CorruptRegistryError(InferstackError):
    """A stored registry (or the pointer to it) that cannot be read back as written."""


@dataclass(frozen=True)
class _Pointer:
    """Content of `<root>/current`: which version node holds the registry in use."""

    revision: int
    node: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes, path: str) -> _Pointer:
        try:
            fields = json.loads(data)
            return cls(revision=int(fields["revision"]), node=str(fields["node"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptRegistryError(f"{path}: not a registry pointer: {data[:100]!r}") from exc


@dataclass(frozen=True)
class _Header:
    """Data of a version node: enough to put its chunks back together and check them."""

    format: int
    revision: int
    encoding: str
    chunks: int
    size: int
    sha256: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes, path: str) -> _Header:
        try:
            fields = json.loads(data)
            header = cls(
                format=int(fields["format"]),
                revision=int(fields["revision"]),
                encoding=str(fields["encoding"]),
                chunks=int(fields["chunks"]),
                size=int(fields["size"]),
                sha256=str(fields["sha256"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptRegistryError(f"{path}: not a registry version header") from exc
        if header.format != FORMAT or header.encoding != "zlib":
            raise CorruptRegistryError(
                f"{path}: unknown format {header.format}/{header.encoding} (newer inferstack?)"
            )
        return header


def _encode(registry: Registry) -> tuple[_Header, list[bytes]]:
    payload = zlib.compress(registry.model_dump_json().encode())
    chunks = [payload[at : at + CHUNK_BYTES] for at in range(0, len(payload), CHUNK_BYTES)]
    header = _Header(
        format=FORMAT,
        revision=registry.revision,
        encoding="zlib",
        chunks=len(chunks),
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    return header, chunks


def _decode(header: _Header, payload: bytes, pointer: _Pointer, path: str) -> Registry:
    """Check everything before parsing, so a damaged version is never mistaken for a real one."""
    if len(payload) != header.size or hashlib.sha256(payload).hexdigest() != header.sha256:
        raise CorruptRegistryError(f"{path}: chunks do not match the header's size and checksum")
    try:
        registry = Registry.model_validate_json(zlib.decompress(payload))
    except (zlib.error, ValidationError) as exc:
        raise CorruptRegistryError(f"{path}: not a valid registry: {exc}") from exc
    if registry.revision != pointer.revision or header.revision != pointer.revision:
        raise CorruptRegistryError(
            f"{path}: holds revision {registry.revision}, the pointer says {pointer.revision}"
        )
    return registry


def _sequence(version_node: str) -> int | None:
    """ZooKeeper's sequence suffix of `r-<rev>-<seq>`; None for nodes that are not ours."""
    prefix, _, suffix = version_node.rpartition("-")
    return int(suffix) if prefix.startswith("r-") and suffix.isdigit() else None


class ZooKeeperRegistryStore:
    """The registry in ZooKeeper; every server watching it switches within a second.

    `keep_versions` is checked by open_zookeeper (at least 1)."""

    def __init__(self, connection: ZooKeeperConnection, keep_versions: int = 10) -> None:
        self.connection = connection
        self.keep_versions = keep_versions
        self._client = connection.client
        self._wait = connection.wait
        self._pointer_path = connection.path(POINTER_NODE)
        self._versions_path = connection.path(VERSIONS_NODE)
        # The newest revision the caller has seen through load() or save(): where a watch
        # starts, so a change made between load() and watch() is not lost.
        self._known_revision: int | None = None

    def load(self) -> Registry:
        registry = self._read_current()
        self._known_revision = registry.revision
        return registry

    def save(self, registry: Registry, expected_revision: int) -> None:
        found = self._read_pointer()
        stored = found[0].revision if found else 0
        if stored != expected_revision:
            raise ConfigConflictError(
                f"definitions changed while applying (revision {stored}, expected "
                f"{expected_revision}); run apply again"
            )
        node = self._write_version(registry)
        self._flip(_Pointer(registry.revision, node), found[1].version if found else None)
        self._known_revision = registry.revision
        self._prune(keep=node)

    def watch(self, on_change: Callable[[Registry], None]) -> _PointerWatch:
        """Call `on_change` (on a worker thread) with each registry newer than the one this
        store last loaded or saved, or, if none, than the one stored when the watch starts."""
        start = self._known_revision
        if start is None:
            found = self._read_pointer()
            start = found[0].revision if found else 0
        watch = _PointerWatch(self, on_change, start)
        self.connection.track(watch)
        return watch

    # -- reading ---------------------------------------------------------------------------

    def _read_current(self) -> Registry:
        missing: _Pointer | None = None
        for _ in range(READ_ATTEMPTS):
            found = self._read_pointer()
            if found is None:
                return Registry()
            pointer = found[0]
            try:
                return self._read_version(pointer)
            except NoNodeError as exc:
                if pointer == missing:  # same pointer, still no version: not a pruning race
                    raise CorruptRegistryError(
                        f"{self._pointer_path} names {pointer.node}, which is missing or incomplete"
                    ) from exc
                missing = pointer  # most likely pruned while we read: follow the pointer again
        raise UnavailableError(
            f"definitions in ZooKeeper at {self.connection.hosts} changed too often to read "
            f"{self.connection.root}"
        )

    def _read_pointer(self) -> tuple[_Pointer, Any] | None:
        """The pointer and its znode stat, or None if nothing was ever applied."""
        try:
            data, stat = self._wait(self._client.get_async(self._pointer_path), "read")
        except NoNodeError:
            return None
        return _Pointer.decode(data, self._pointer_path), stat

    def _read_version(self, pointer: _Pointer) -> Registry:
        path = f"{self._versions_path}/{pointer.node}"
        data, _ = self._wait(self._client.get_async(path), "read")
        header = _Header.decode(data, path)
        # Ask for every chunk before waiting for any: one round trip, not one per chunk.
        pending = [self._client.get_async(f"{path}/{chunk_name(i)}") for i in range(header.chunks)]
        payload = b"".join(self._wait(result, "read")[0] for result in pending)
        return _decode(header, payload, pointer, path)

    # -- writing ---------------------------------------------------------------------------

    def _write_version(self, registry: Registry) -> str:
        """Write a complete version nobody points at yet; return its node name."""
        header, chunks = _encode(registry)
        self._wait(self._client.ensure_path_async(self._versions_path), "write")
        prefix = f"{self._versions_path}/r-{registry.revision:010d}-"
        created = self._wait(
            self._client.create_async(prefix, header.encode(), sequence=True), "write"
        )
        node: str = created.rsplit("/", 1)[1]
        try:
            pending = [
                self._client.create_async(f"{created}/{chunk_name(i)}", chunk)
                for i, chunk in enumerate(chunks)
            ]
            for result in pending:
                self._wait(result, "write")
        except NoNodeError as exc:
            # Pruned under us: at least `keep_versions` applies landed while we wrote.
            raise ConfigConflictError(
                "definitions changed while applying (others applied meanwhile); run apply again"
            ) from exc
        except Exception:
            self._delete_version_quietly(node)
            raise
        return node

    def _flip(self, pointer: _Pointer, expected_version: int | None) -> None:
        """Point readers at the new version, only if nobody flipped since we read the pointer."""
        if expected_version is None:
            request = self._client.create_async(self._pointer_path, pointer.encode())
        else:
            request = self._client.set_async(
                self._pointer_path, pointer.encode(), version=expected_version
            )
        try:
            self._wait(request, "write")
        except (BadVersionError, NodeExistsError) as exc:
            self._delete_version_quietly(pointer.node)
            raise ConfigConflictError(
                "definitions changed while applying (someone else applied first); run apply again"
            ) from exc
        except UnavailableError as exc:
            # The flip may still happen (kazoo sends queued requests after reconnecting), so
            # the version must stay: the pointer may name it. If not, pruning removes it.
            raise UnavailableError(
                f"{exc}; revision {pointer.revision} may or may not have been applied, "
                "load the definitions again to see which"
            ) from exc

    def _prune(self, keep: str) -> None:
        """Delete all but the newest versions; a failure here does not undo the save."""
        try:
            children = self._wait(self._client.get_children_async(self._versions_path), "prune")
            ours = sorted((seq, name) for name in children if (seq := _sequence(name)) is not None)
            for _, name in ours[: -self.keep_versions]:
                if name != keep:
                    self._delete_version(name)
        except (UnavailableError, KazooException) as exc:
            log.warning("could not prune old registry versions in %s: %s", self._versions_path, exc)

    def _delete_version(self, node: str) -> None:
        path = f"{self._versions_path}/{node}"
        try:
            chunks = self._wait(self._client.get_children_async(path), "prune")
            for result in [self._client.delete_async(f"{path}/{c}") for c in chunks]:
                with contextlib.suppress(NoNodeError):  # another writer pruned it meanwhile
                    self._wait(result, "prune")
            self._wait(self._client.delete_async(path), "prune")
        except NoNodeError:
            pass
        except NotEmptyError:
            # A writer is still adding chunks to it (a very slow one); it loses the race
            # when it flips, and whoever prunes next removes the node.
            log.info("registry version %s is still being written; not deleted", path)

    def _delete_version_quietly(self, node: str) -> None:
        try:
            self._delete_version(node)
        except (UnavailableError, KazooException) as exc:
            log.warning("could not remove unused registry version %s: %s", node, exc)


class _PointerWatch:
    """A DataWatch on the pointer that wakes one worker thread, which reads and delivers.

    Reading happens on our own thread, not kazoo's callback thread, so a slow read or a
    slow `on_change` never holds up kazoo, and a read that fails can be retried: the
    DataWatch fires once per pointer change and would not fire again for the same change.
    """

    def __init__(
        self, store: ZooKeeperRegistryStore, on_change: Callable[[Registry], None], start: int
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._delivered = start
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="zookeeper-config-watch", daemon=True
        )
        self._thread.start()

    def signal_stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def stop(self) -> None:
        self.signal_stop()
        if threading.current_thread() is not self._thread:  # stop() from inside on_change
            self._thread.join(timeout=self._store.connection.request_timeout + 1)

    def _pointer_changed(self, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        if self._stopped.is_set():
            return False  # tells kazoo to drop this DataWatch
        self._wake.set()
        return None

    def _run(self) -> None:
        # Registered here, not in watch(): kazoo's first read blocks until ZooKeeper answers.
        # It fires now (so a change made since `start` is delivered), on each change, and on
        # each reconnect if the pointer changed meanwhile.
        try:
            self._store._client.DataWatch(self._store._pointer_path, self._pointer_changed)
        except Exception:  # kazoo gives up only when the store is closed
            log.exception("could not watch %s for definition changes", self._store._pointer_path)
            return
        while True:
            self._wake.wait()
            if self._stopped.is_set():
                return
            self._wake.clear()  # before reading: a change during the read wakes us again
            registry = self._read_newest()
            if registry is not None:
                self._deliver(registry)

    def _read_newest(self) -> Registry | None:
        delay = 0.1
        while not self._stopped.is_set():
            try:
                return self._store._read_current()
            except UnavailableError as exc:
                log.warning("definitions changed but cannot be read yet, retrying: %s", exc)
            except CorruptRegistryError:
                log.exception("skipping broken definitions; keeping revision %d", self._delivered)
                return None
            except Exception:  # the watch must outlive any surprise, as the file watch does
                log.exception("unexpected error reading definitions from ZooKeeper")
            if self._stopped.wait(delay):
                break
            delay = min(delay * 2, MAX_RETRY_DELAY)
        return None

    def _deliver(self, registry: Registry) -> None:
        if registry.revision <= self._delivered or self._stopped.is_set():
            return
        self._delivered = registry.revision
        try:
            self._on_change(registry)
        except Exception:
            log.exception("config watch callback failed for revision %d", registry.revision)
