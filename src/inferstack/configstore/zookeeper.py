"""Distributed config store: the registry in Apache ZooKeeper, through kazoo.

Znode layout under the root path (default ``/inferstack``)::

    <root>/current                     the pointer, JSON:
                                       {"revision": 7, "node": "r-0000000007-0000000031"}
    <root>/registry/r-<rev>-<seq>      one immutable version; its data is a JSON header:
                                       {"format": 1, "revision": 7, "encoding": "zlib",
                                        "chunks": 1, "size": 5120, "sha256": "<hex>"}
    <root>/registry/r-<rev>-<seq>/c-00000, c-00001, ...
                                       the registry as zlib-compressed JSON, split into
                                       chunks of at most 512 KiB
    <root>/blobs/<sha256>              one blob (a model file) named by the sha256 of its
                                       bytes; its data is a JSON header written last,
                                       {"format": 1, "size": 3145728, "chunks": 6},
                                       and empty while the blob is still being written
    <root>/blobs/<sha256>/c-00000, ... the blob's bytes in chunks of at most 64 KiB

    <root>/cache/state                 the cache feed (see cachefeed.py): per-group cache
                                       generations and the sequence of invalidated-key batches
    <root>/cache/slots/s-<index>       the ring of those batches; a batch and the state that
                                       names it are written in one multi-op transaction
    <root>/callers                     who may call (core/callers.py): token hashes, never
                                       tokens; replaced by a version-checked set

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
* Blobs commit by their header. A blob node is created empty, its chunks are written, and
  only then is the header set, with a set conditioned on the node's version when the write
  began: a reader (and `has_blob`) treats an empty node as absent, so it never sees half a
  blob. A writer that dies midway leaves an empty node and some chunks; the next `put_blob`
  of the same bytes overwrites them and sets the header. The same bytes always give the same
  node, so concurrent writers of one blob write identical data. Putting bytes already stored
  sets the same header again: that refreshes the node's mtime, which is the blob's
  `stored_at`. ZooKeeper keeps all data in memory, so blobs are capped at `max_blob_bytes`
  (32 MiB by default), and chunks are small (see BLOB_CHUNK_BYTES).
* Blobs are deleted atomically. `delete_blob` deletes the chunks and the node in one
  multi-op transaction, the node's delete conditioned on the version it checked, so a
  reader sees the whole blob or none, and a blob stored again meanwhile is kept. A reader
  that read the header just before finds a chunk missing, sees the node gone or changed and
  reads again (BlobNotFoundError). A blob too large for one request (thousands of chunks,
  far above the default cap) goes in several transactions: the first empties the node (it
  reads as absent from then on), and each one bumps the node's version, so a `put_blob`
  racing it fails its version-checked commit and writes again instead of committing chunks
  deleted under it.

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
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState
from kazoo.retry import KazooRetry
from pydantic import ValidationError

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
from inferstack.core.errors import (
    InferstackError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from inferstack.core.registry import Registry

log = logging.getLogger(__name__)

POINTER_NODE = "current"
VERSIONS_NODE = "registry"
BLOBS_NODE = "blobs"
CACHE_NODE = "cache"
CALLERS_NODE = "callers"
# Compare-and-set rounds on the cache state before giving up (writers contend only while
# many Persists land in the same milliseconds; each round is one ZooKeeper round trip).
CACHE_CAS_ATTEMPTS = 50
FORMAT = 1
CHUNK_BYTES = 512 * 1024
# Blob chunks are much smaller than registry chunks because ZooKeeper keeps the payloads
# of its last 500 (at least) writes on its heap, whatever was deleted since: with 512 KiB
# chunks, uploading one model of 250 MiB, or several smaller ones, can pin 250 MiB there
# (it did: the 256 MiB test ZooKeeper died of OutOfMemoryError). 64 KiB bounds that to ~32 MiB.
BLOB_CHUNK_BYTES = 64 * 1024
# Blob chunks in flight at once: enough to pipeline, few enough that each request of a
# large blob is answered within `request_timeout` even on a slow link.
BLOB_WINDOW = 16
# ZooKeeper holds every node in memory (and blobs stay until pruned): keep models modest.
DEFAULT_MAX_BLOB_BYTES = 32 * 1024 * 1024
# One blob delete is one transaction while its request stays this small, well below
# ZooKeeper's jute.maxbuffer (~1 MiB): each delete costs its path plus DELETE_OP_BYTES, ~120
# bytes a chunk, so every blob up to ~250 MiB (the default cap is 32 MiB) goes at once.
MAX_DELETE_REQUEST_BYTES = 512 * 1024
DELETE_OP_BYTES = 32  # a multi-op header, the path's length prefix and the version
# Rounds of a put or delete of one blob that found it changed by another writer meanwhile
# (several applies storing one file at once, or a prune racing an apply).
BLOB_ATTEMPTS = 10
# kazoo's default reconnect backoff grows to an hour; servers must come back within seconds.
MAX_RECONNECT_DELAY = 1.0
# A watch that cannot read a changed registry retries at most this far apart.
MAX_RETRY_DELAY = 2.0
# Following the pointer again when the version it named was pruned mid-read.
READ_ATTEMPTS = 5
# kazoo errors that mean "ZooKeeper did not answer", as opposed to "it answered no".
_UNREACHABLE = (KazooTimeoutError, ConnectionLoss, SessionExpiredError, OperationTimeoutError)


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


@dataclass(frozen=True)
class _BlobHeader:
    """Data of a complete blob node: how many bytes, in how many chunks."""

    format: int
    size: int
    chunks: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes, digest: str, path: str) -> _BlobHeader:
        try:
            fields = json.loads(data)
            header = cls(
                format=int(fields["format"]), size=int(fields["size"]), chunks=int(fields["chunks"])
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptBlobError(f"blob {digest} is corrupt: {path} has no valid header") from exc
        if header.format != FORMAT:
            raise CorruptBlobError(
                f"blob {digest}: {path} has unknown format {header.format} (newer inferstack?)"
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


def _chunk_name(index: int) -> str:
    return f"c-{index:05d}"


@dataclass(frozen=True)
class _StoredBlob:
    """A blob as read back: its bytes, its node's data (the header) and znode version."""

    payload: bytes
    header: bytes
    version: int


class _BlobChangedError(Exception):
    """A blob's chunk vanished because the blob was deleted or re-stored during the read."""


def _stored_at(stat: Any) -> float:
    """A blob's `stored_at`: the last write of its node (its header, or its creation)."""
    return float(stat.mtime) / 1000


def _delete_batches(path: str, chunks: list[str]) -> list[list[str]]:
    """Full paths of a blob's chunks in groups whose delete requests, together with the
    node's own operation, stay under MAX_DELETE_REQUEST_BYTES; at least one group."""
    node_cost = len(path) + DELETE_OP_BYTES
    batches: list[list[str]] = [[]]
    size = node_cost
    for chunk in chunks:
        name = f"{path}/{chunk}"
        cost = len(name) + DELETE_OP_BYTES
        if batches[-1] and size + cost > MAX_DELETE_REQUEST_BYTES:
            batches.append([])
            size = node_cost
        batches[-1].append(name)
        size += cost
    return batches


def _sequence(version_node: str) -> int | None:
    """ZooKeeper's sequence suffix of `r-<rev>-<seq>`; None for nodes that are not ours."""
    prefix, _, suffix = version_node.rpartition("-")
    return int(suffix) if prefix.startswith("r-") and suffix.isdigit() else None


class ZooKeeperConfigStore:
    """The registry in ZooKeeper; every server watching it switches within a second."""

    def __init__(
        self,
        hosts: str,
        root: str = "/inferstack",
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        session_timeout: float = 10.0,
        keep_versions: int = 10,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    ) -> None:
        if keep_versions < 1:
            raise InvalidArgumentError(f"keep_versions must be at least 1, got {keep_versions}")
        if max_blob_bytes < 0:
            raise InvalidArgumentError(f"max_blob_bytes must not be negative, got {max_blob_bytes}")
        self.max_blob_bytes = max_blob_bytes
        self.hosts = hosts
        self.root = "/" + root.strip("/")
        self.request_timeout = request_timeout
        self.keep_versions = keep_versions
        base = self.root.rstrip("/")  # root "/" would otherwise give "//current"
        self._pointer_path = f"{base}/{POINTER_NODE}"
        self._versions_path = f"{base}/{VERSIONS_NODE}"
        self._blobs_path = f"{base}/{BLOBS_NODE}"
        self._cache_path = f"{base}/{CACHE_NODE}"
        self._cache_state_path = f"{self._cache_path}/state"
        self._slots_path = f"{self._cache_path}/slots"
        self._callers_path = f"{base}/{CALLERS_NODE}"
        self._callers_watches: list[_CallersWatch] = []
        self._slots_made: set[int] | None = None  # slot nodes known to exist
        self._cache_loaded: CacheState | None = None
        self._cache_watches: list[_CacheWatch] = []
        # The newest revision the caller has seen through load() or save(): where a watch
        # starts, so a change made between load() and watch() is not lost.
        self._known_revision: int | None = None
        self._watches: list[_PointerWatch] = []
        self._client = self._connect(hosts, connect_timeout, session_timeout)

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

    # -- the ConfigStore protocol ----------------------------------------------------------

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
        self._watches.append(watch)
        return watch

    def put_blob(self, data: bytes) -> str:
        if len(data) > self.max_blob_bytes:
            raise ResourceExhaustedError(
                f"blob of {len(data)} bytes is larger than the {self.max_blob_bytes} bytes the "
                f"config store in ZooKeeper at {self.hosts} takes (max_blob_bytes)"
            )
        digest = blob_digest(data)
        for _ in range(BLOB_ATTEMPTS):
            try:
                stored = self._stored_copy(digest, data)
                if stored is None:  # absent, half written by a writer that died, or damaged
                    self._write_blob(digest, data)
                else:  # the commit again: refreshes stored_at, so a prune spares it now
                    self._set_blob_header(digest, stored.header, stored.version)
                return digest
            except (NoNodeError, BadVersionError):
                # Deleted, or written by someone else, while we looked or wrote: again.
                continue
        raise UnavailableError(
            f"could not store blob {digest} in ZooKeeper at {self.hosts}: it changed under "
            f"{BLOB_ATTEMPTS} attempts (concurrent writers or deletes)"
        )

    def get_blob(self, digest: str) -> bytes:
        return self._read_blob(check_digest(digest)).payload

    def has_blob(self, digest: str) -> bool:
        path = self._blob_path(check_digest(digest))
        try:
            data, _ = self._wait(self._client.get_async(path), "blob read")
        except NoNodeError:
            return False
        return bool(data)  # an empty node is a blob still being written

    def list_blobs(self) -> list[BlobInfo]:
        try:
            names = self._wait(self._client.get_children_async(self._blobs_path), "blob list")
        except NoNodeError:
            return []
        digests = sorted(name for name in names if is_digest(name))
        blobs: list[BlobInfo] = []
        for start in range(0, len(digests), BLOB_WINDOW):
            window = digests[start : start + BLOB_WINDOW]
            pending = [(d, self._client.get_async(self._blob_path(d))) for d in window]
            for digest, result in pending:
                try:
                    data, stat = self._wait(result, "blob list")
                except NoNodeError:  # deleted since the children were read
                    continue
                blobs.append(BlobInfo(digest, self._stored_size(digest, data), _stored_at(stat)))
        return blobs

    def delete_blob(self, digest: str, *, if_stored_at: float | None = None) -> bool:
        path = self._blob_path(check_digest(digest))
        for _ in range(BLOB_ATTEMPTS):
            try:
                stat = self._wait(self._client.exists_async(path), "blob delete")
                if stat is None:
                    return False
                if if_stored_at is not None and _stored_at(stat) != if_stored_at:
                    return False  # stored again since it was listed: an apply is using it
                chunks = self._wait(self._client.get_children_async(path), "blob delete")
            except NoNodeError:
                return False
            if self._delete_blob_nodes(path, sorted(chunks), stat.version):
                return True
            # Changed between our look and the delete (stored, touched, deleted): look again.
        log.warning("blob %s kept changing while being deleted; left in place", path)
        return False

    def close(self) -> None:
        for watch in self._watches:
            watch.signal_stop()
        for cache_watch in self._cache_watches:
            cache_watch.signal_stop()
        for callers_watch in self._callers_watches:
            callers_watch.stop()
        self._callers_watches.clear()
        self._client.stop()  # fails requests in flight, so the watch threads end at once
        for watch in self._watches:
            watch.stop()
        for cache_watch in self._cache_watches:
            cache_watch.stop()
        self._watches.clear()
        self._cache_watches.clear()
        self._client.close()

    # -- callers (core/callers.py) ----------------------------------------------------------

    def load_callers(self) -> Callers:
        return self._read_callers()[0]

    def save_callers(self, callers: Callers, expected_revision: int) -> None:
        stored, version = self._read_callers()
        if stored.revision != expected_revision:
            raise CallersConflictError(
                f"callers changed meanwhile (revision {stored.revision}, expected "
                f"{expected_revision}); run the command again"
            )
        try:
            if version is None:
                self._wait(self._client.ensure_path_async(self.root), "callers write")
                self._wait(self._client.create_async(self._callers_path, callers.encode()), "write")
            else:
                request = self._client.set_async(self._callers_path, callers.encode(), version)
                self._wait(request, "callers write")
        except (BadVersionError, NodeExistsError) as exc:
            raise CallersConflictError(
                f"callers in ZooKeeper at {self.hosts} changed meanwhile; run the command again"
            ) from exc

    def watch_callers(self, on_change: Callable[[Callers], None]) -> _CallersWatch:
        watch = _CallersWatch(self, on_change)
        self._callers_watches.append(watch)
        return watch

    def _read_callers(self) -> tuple[Callers, int | None]:
        try:
            data, stat = self._wait(self._client.get_async(self._callers_path), "callers read")
        except NoNodeError:
            return Callers(), None
        return Callers.decode(data, self._callers_path), stat.version

    # -- the cache feed ---------------------------------------------------------------------

    def load_cache_state(self) -> CacheState:
        state = self._read_cache_state()[0]
        self._cache_loaded = state
        return state

    def bump_generations(self, groups: Collection[str]) -> dict[str, int]:
        for _ in range(CACHE_CAS_ATTEMPTS):
            state, version = self._read_cache_state()
            bumped = state.bumped(groups)
            try:
                self._write_cache_state(bumped, version)
            except (BadVersionError, NodeExistsError):
                continue  # another writer got in between: read again
            return {group: bumped.generations[group] for group in groups}
        raise UnavailableError(self._contended())

    def invalidate_keys(self, batch: KeyBatch) -> dict[str, int]:
        for _ in range(CACHE_CAS_ATTEMPTS):
            state, version = self._read_cache_state()
            if version is None:  # nothing published yet: create the state, then go on
                with contextlib.suppress(NodeExistsError):
                    self._write_cache_state(state, None)
                continue
            sequence = state.sequence + 1
            slot = encode_slot(sequence, batch)
            if slot is None:  # too large for the ring: forget the groups instead
                return self.bump_generations(list(batch))
            index = slot_index(sequence)
            made = self._known_slots()
            path = f"{self._slots_path}/s-{index:03d}"
            transaction = self._client.transaction()
            transaction.set_data(
                self._cache_state_path, CacheState(state.generations, sequence).encode(), version
            )
            if index in made:
                transaction.set_data(path, slot)
            else:
                transaction.create(path, slot)
            results = self._wait(transaction.commit_async(), "cache feed write")
            failures = [r for r in results if isinstance(r, Exception)]
            if not failures:
                made.add(index)
                return {}
            if any(isinstance(r, NodeExistsError) for r in failures):
                made.add(index)
            elif any(isinstance(r, NoNodeError) for r in failures):
                made.discard(index)
        raise UnavailableError(self._contended())

    def subscribe_keys(self) -> _NoSubscription:
        return _NoSubscription()

    def has_key_subscribers(self) -> bool:
        """Always: distributed workers cache in process by default, and finding out would
        cost a ZooKeeper read per publish."""
        return True

    def watch_cache(self, listener: CacheListener) -> _CacheWatch:
        start = self._cache_loaded if self._cache_loaded is not None else self.load_cache_state()
        watch = _CacheWatch(self, FeedFollower(listener, start))
        self._cache_watches.append(watch)
        return watch

    def _read_cache_state(self) -> tuple[CacheState, int | None]:
        """The state and its znode version (None: never written)."""
        try:
            data, stat = self._wait(
                self._client.get_async(self._cache_state_path), "cache feed read"
            )
        except NoNodeError:
            return CacheState(), None
        return CacheState.decode(data, self._cache_state_path), stat.version

    def _write_cache_state(self, state: CacheState, version: int | None) -> None:
        if version is None:
            self._wait(self._client.ensure_path_async(self._cache_path), "cache feed write")
            request = self._client.create_async(self._cache_state_path, state.encode())
        else:
            request = self._client.set_async(
                self._cache_state_path, state.encode(), version=version
            )
        self._wait(request, "cache feed write")

    def _known_slots(self) -> set[int]:
        if self._slots_made is None:
            self._wait(self._client.ensure_path_async(self._slots_path), "cache feed write")
            names = self._wait(self._client.get_children_async(self._slots_path), "read")
            self._slots_made = {int(n[2:]) for n in names if n.startswith("s-") and n[2:].isdigit()}
        return self._slots_made

    def _read_slots(self, indexes: list[int]) -> list[bytes | None]:
        pending = [self._client.get_async(f"{self._slots_path}/s-{index:03d}") for index in indexes]
        out: list[bytes | None] = []
        for result in pending:
            try:
                out.append(self._wait(result, "cache feed read")[0])
            except NoNodeError:
                out.append(None)
        return out

    def _contended(self) -> str:
        return (
            f"could not update the cache feed in ZooKeeper at {self.hosts} "
            f"({self._cache_state_path}): {CACHE_CAS_ATTEMPTS} concurrent updates won first"
        )

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
            f"definitions in ZooKeeper at {self.hosts} changed too often to read {self.root}"
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
        pending = [self._client.get_async(f"{path}/{_chunk_name(i)}") for i in range(header.chunks)]
        payload = b"".join(self._wait(result, "read")[0] for result in pending)
        return _decode(header, payload, pointer, path)

    def _read_blob(self, digest: str) -> _StoredBlob:
        for _ in range(READ_ATTEMPTS):
            try:
                return self._read_blob_once(digest)
            except _BlobChangedError:
                continue  # deleted or re-stored while we read its chunks: read it afresh
        raise UnavailableError(
            f"blob {digest} in ZooKeeper at {self.hosts} changed too often to be read"
        )

    def _read_blob_once(self, digest: str) -> _StoredBlob:
        path = self._blob_path(digest)
        try:
            data, stat = self._wait(self._client.get_async(path), "blob read")
        except NoNodeError:
            raise BlobNotFoundError(
                f"no blob {digest} in ZooKeeper at {self.hosts} ({self._blobs_path})"
            ) from None
        if not data:
            raise BlobNotFoundError(
                f"blob {digest} in ZooKeeper at {self.hosts} is not completely written "
                "(an upload was interrupted or is still running)"
            )
        header = _BlobHeader.decode(data, digest, path)
        names = [_chunk_name(i) for i in range(header.chunks)]
        parts: list[bytes] = []
        for start in range(0, len(names), BLOB_WINDOW):
            window = names[start : start + BLOB_WINDOW]
            pending = [(name, self._client.get_async(f"{path}/{name}")) for name in window]
            for name, result in pending:
                try:
                    parts.append(self._wait(result, "blob read")[0])
                except NoNodeError as exc:
                    if self._blob_changed(path, stat):
                        raise _BlobChangedError from exc
                    raise CorruptBlobError(
                        f"blob {digest} is corrupt: {path}/{name} is missing"
                    ) from exc
        payload = b"".join(parts)
        if len(payload) != header.size or blob_digest(payload) != digest:
            raise CorruptBlobError(
                f"blob {digest} is corrupt: the chunks under {path} do not hash to its digest; "
                "store the file again (inferstack apply)"
            )
        return _StoredBlob(payload, data, stat.version)

    def _blob_changed(self, path: str, read: Any) -> bool:
        """Whether the blob node is gone or was written since `read` (its stat) was taken."""
        now = self._wait(self._client.exists_async(path), "blob read")
        return now is None or now.mzxid != read.mzxid

    def _stored_copy(self, digest: str, data: bytes) -> _StoredBlob | None:
        """The stored blob if it is a complete, intact copy of `data`, else None."""
        try:
            stored = self._read_blob(digest)
        except (BlobNotFoundError, CorruptBlobError):
            return None
        return stored if stored.payload == data else None

    def _stored_size(self, digest: str, data: bytes) -> int:
        """A blob's size from its header; for one never committed (or with a broken header),
        the bytes its chunks hold: what deleting it frees."""
        if data:
            with contextlib.suppress(CorruptBlobError):
                return _BlobHeader.decode(data, digest, self._blob_path(digest)).size
        path = self._blob_path(digest)
        try:
            chunks = self._wait(self._client.get_children_async(path), "blob list")
        except NoNodeError:
            return 0
        pending = [self._client.exists_async(f"{path}/{chunk}") for chunk in chunks]
        stats = [self._wait(result, "blob list") for result in pending]
        return sum(stat.dataLength for stat in stats if stat is not None)

    def _blob_path(self, digest: str) -> str:
        return f"{self._blobs_path}/{digest}"

    # -- writing ---------------------------------------------------------------------------

    def _write_blob(self, digest: str, data: bytes) -> None:
        """Write every chunk, then commit the header if nobody changed the node meanwhile
        (BadVersionError: a delete in several steps ran, or another writer committed)."""
        path = self._blob_path(digest)
        self._wait(self._client.ensure_path_async(self._blobs_path), "blob write")
        try:
            self._wait(self._client.create_async(path, b""), "blob write")  # empty: incomplete
            version = 0
        except NodeExistsError:
            stat = self._wait(self._client.exists_async(path), "blob write")
            if stat is None:
                raise NoNodeError(path) from None  # deleted just now: the caller starts over
            version = stat.version
        chunks = [data[at : at + BLOB_CHUNK_BYTES] for at in range(0, len(data), BLOB_CHUNK_BYTES)]
        self._write_blob_chunks(path, chunks)
        header = _BlobHeader(format=FORMAT, size=len(data), chunks=len(chunks))
        self._set_blob_header(digest, header.encode(), version)  # the commit

    def _set_blob_header(self, digest: str, header: bytes, version: int) -> None:
        request = self._client.set_async(self._blob_path(digest), header, version=version)
        self._wait(request, "blob write")

    def _delete_blob_nodes(self, path: str, chunks: list[str], version: int) -> bool:
        """Delete a blob's chunks and node; False if nothing was deleted because the node is
        no longer at `version` or its chunks changed. One transaction unless that would be
        too large for ZooKeeper; then the first step makes it read as absent (see above)."""
        batches = _delete_batches(path, chunks)
        for index, batch in enumerate(batches):
            transaction = self._client.transaction()
            for chunk in batch:
                transaction.delete(chunk)
            if index == len(batches) - 1:
                transaction.delete(path, version=version)
            else:
                # Empty (absent to readers) and bump the version, so a writer that began
                # storing the blob again before this step cannot commit it.
                transaction.set_data(path, b"", version=version)
                version += 1
            results = self._wait(transaction.commit_async(), "blob delete")
            if any(isinstance(result, Exception) for result in results):
                if index > 0:  # it reads as absent already; a new writer owns what is left
                    log.info("blob %s is being stored again; its delete stopped", path)
                return index > 0
        return True

    def _write_blob_chunks(self, path: str, chunks: list[bytes]) -> None:
        named = [(f"{path}/{_chunk_name(i)}", chunk) for i, chunk in enumerate(chunks)]
        for start in range(0, len(named), BLOB_WINDOW):
            window = named[start : start + BLOB_WINDOW]
            pending = [
                (name, chunk, self._client.create_async(name, chunk)) for name, chunk in window
            ]
            left_over: list[tuple[str, bytes]] = []
            for name, chunk, result in pending:
                try:
                    self._wait(result, "blob write")
                except NodeExistsError:
                    left_over.append((name, chunk))
            # Chunks of an earlier, unfinished write: overwritten, not trusted (another
            # inferstack version may have cut the bytes differently).
            for result in [self._client.set_async(name, chunk) for name, chunk in left_over]:
                self._wait(result, "blob write")

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
                self._client.create_async(f"{created}/{_chunk_name(i)}", chunk)
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

    # -- plumbing --------------------------------------------------------------------------

    def _wait(self, result: Any, doing: str) -> Any:
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


class _PointerWatch:
    """A DataWatch on the pointer that wakes one worker thread, which reads and delivers.

    Reading happens on our own thread, not kazoo's callback thread, so a slow read or a
    slow `on_change` never holds up kazoo, and a read that fails can be retried: the
    DataWatch fires once per pointer change and would not fire again for the same change.
    """

    def __init__(
        self, store: ZooKeeperConfigStore, on_change: Callable[[Registry], None], start: int
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
            self._thread.join(timeout=self._store.request_timeout + 1)

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


class _CacheWatch:
    """A DataWatch on the cache state plus a connection listener, delivering on one thread.

    While the connection is down nothing can be heard, so the listener is told at once
    (caches stop being trusted); after reconnecting, whatever was missed is unknowable, so
    the listener is told messages were lost before it is told the feed is live again.
    """

    def __init__(self, store: ZooKeeperConfigStore, follower: FeedFollower) -> None:
        self._store = store
        self._follower = follower
        self._live = True
        self._reconnected = False
        self._wake = threading.Event()
        self._stopped = threading.Event()
        store._client.add_listener(self._connection_changed)
        self._thread = threading.Thread(target=self._run, name="zookeeper-cache-watch", daemon=True)
        self._thread.start()

    def signal_stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def stop(self) -> None:
        self.signal_stop()
        self._store._client.remove_listener(self._connection_changed)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=self._store.request_timeout + 1)

    def _connection_changed(self, state: str) -> None:  # kazoo's thread: must not block
        if state == KazooState.CONNECTED:
            if not self._live:
                self._reconnected = True
                self._wake.set()
        elif self._live:
            self._live = False
            self._follower.listener.connection_changed(False)

    def _state_changed(self, data: bytes | None, stat: Any, event: Any = None) -> bool | None:
        if self._stopped.is_set():
            return False
        self._wake.set()
        return None

    def _run(self) -> None:
        store = self._store
        try:
            store._client.DataWatch(store._cache_state_path, self._state_changed)
        except Exception:
            log.exception("could not watch %s for cache invalidations", store._cache_state_path)
            return
        delay = 0.1
        while True:
            self._wake.wait()
            if self._stopped.is_set():
                return
            self._wake.clear()
            reconnected, self._reconnected = self._reconnected, False
            try:
                state, _ = store._read_cache_state()
                if reconnected:
                    # Batches published meanwhile may be gone from the ring: start afresh.
                    self._follower.listener.messages_lost()
                    previous = self._follower.state
                    self._follower.state = CacheState(previous.generations, state.sequence)
                self._follower.update(state, store._read_slots, store._cache_path)
                if reconnected:
                    self._live = True
                    self._follower.listener.connection_changed(True)
                delay = 0.1
            except (UnavailableError, CorruptCacheFeedError, KazooException) as exc:
                log.warning("cache feed cannot be read yet, retrying: %s", exc)
                self._reconnected = self._reconnected or reconnected
                if self._stopped.wait(delay):
                    return
                delay = min(delay * 2, MAX_RETRY_DELAY)
                self._wake.set()
            except Exception:
                log.exception("unexpected error reading the cache feed from ZooKeeper")


class _CallersWatch:
    """A DataWatch on the callers node. Decoding a small document is cheap, so it is done on
    kazoo's thread; the watch fires on every change and again after a reconnect."""

    def __init__(self, store: ZooKeeperConfigStore, on_change: Callable[[Callers], None]) -> None:
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

    def stop(self) -> None:
        self._stopped = True


class _NoSubscription:
    """Publishers always publish (has_key_subscribers), so there is nothing to record."""

    def stop(self) -> None:
        pass
