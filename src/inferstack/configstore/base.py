"""The config store interfaces, one per concern, and the bundle the wiring opens.

* `RegistryStore`: one whole registry, replaced atomically, watched by every server.
* `BlobStore`: model files by digest.
* `CacheFeedStore`: cache generations and invalidated keys (cachefeed.py).
* `CallerStore`: who may call (core/callers.py).

Each backend (files/, zookeeper/) implements the four over one shared connection, bundled
in a `ConfigStore`; a consumer takes only the store it needs.

Blobs are content-addressed: stored under the sha256 of their bytes, so a config names a
model file by digest and every server fetches exactly those bytes, whichever store it uses.
Nothing deletes a blob on its own: `inferstack models prune` (configstore/pruning.py) lists
them, keeps those the current registry references or that were stored within a grace period
(an apply stores its files before the registry naming them), and deletes the rest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from inferstack.configstore.cachefeed import CacheListener, CacheState, KeyBatch
from inferstack.core.callers import Callers
from inferstack.core.errors import InferstackError, InvalidArgumentError, NotFoundError
from inferstack.core.registry import Registry

_DIGEST = re.compile(r"[0-9a-f]{64}")


class ConfigConflictError(InferstackError):
    """Someone else applied definitions between our read and our write."""


class BlobNotFoundError(NotFoundError):
    """No blob is stored under the digest asked for (or it is still being written)."""


class CorruptBlobError(InferstackError):
    """A stored blob whose bytes no longer hash to its digest."""


def blob_digest(data: bytes) -> str:
    """The name a blob is stored under: the sha256 of its bytes, lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def is_digest(name: str) -> bool:
    """Whether `name` is a digest as stores name blobs (lowercase sha256 hex)."""
    return _DIGEST.fullmatch(name) is not None


def check_digest(digest: str) -> str:
    """`digest` in lowercase if it is a sha256 in hex; it becomes a file or znode name."""
    normalised = digest.lower() if isinstance(digest, str) else ""
    if not _DIGEST.fullmatch(normalised):
        raise InvalidArgumentError(f"not a sha256 digest (64 hex digits): {digest!r}")
    return normalised


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob as `BlobStore.list` reports it."""

    digest: str
    size: int  # bytes
    # Unix seconds of the last put of these bytes: storing bytes already stored
    # refreshes it, so a blob an apply in progress relies on always looks young.
    stored_at: float


class Watch(Protocol):
    def stop(self) -> None: ...


class RegistryStore(Protocol):
    """Stores the registry as one document so readers never see half an apply."""

    def load(self) -> Registry:
        """The newest registry; an empty one if nothing was ever applied."""
        ...

    def save(self, registry: Registry, expected_revision: int) -> None:
        """Replace the registry if the stored revision is still `expected_revision`."""
        ...

    def watch(self, on_change: Callable[[Registry], None]) -> Watch:
        """Call `on_change` with each newer registry until the watch is stopped."""
        ...


class BlobStore(Protocol):
    """Stores blobs (model files) by digest. Blobs stay until `delete` removes them;
    `inferstack models prune` does that for blobs the current registry does not reference
    and that are older than a grace period (see configstore/pruning.py).
    """

    def put(self, data: bytes) -> str:
        """Store bytes under their sha256 (hex) and return it. Storing the same bytes again
        writes no bytes but refreshes the blob's `stored_at`, so pruning spares it while the
        apply that stored it finishes. Readers never see a blob half written."""
        ...

    def get(self, digest: str) -> bytes:
        """The bytes stored under `digest`; BlobNotFoundError naming the digest if absent,
        CorruptBlobError naming it if what was read does not hash to it."""
        ...

    def has(self, digest: str) -> bool:
        """Whether a complete blob is stored under `digest` (its bytes are not re-checked)."""
        ...

    def delete(self, digest: str, *, if_stored_at: float | None = None) -> bool:
        """Delete the blob stored under `digest`; True if something was deleted, False if
        there was none (not an error). Readers see the whole blob or BlobNotFoundError.

        With `if_stored_at` (the `stored_at` list reported), the blob is deleted only if
        nobody stored it since: a put racing the delete (an apply re-using the same file)
        either refreshes it first, so it is kept and False returned, or stores it anew after
        it is gone.
        """
        ...

    def list(self) -> list[BlobInfo]:
        """Every blob stored, sorted by digest. A blob a writer left unfinished is listed
        too when the store names it by digest (ZooKeeper: its size is what its chunks
        hold), so pruning can delete it; the file store's are nameless temporary files."""
        ...


class CacheFeedStore(Protocol):
    """The cache feed (cachefeed.py): how every worker's caches follow writes."""

    def load_state(self) -> CacheState:
        """Current cache generations and feed position; where a later `watch` starts."""
        ...

    def bump_generations(self, groups: Collection[str]) -> dict[str, int]:
        """Move each group to a new cache generation (atomically); returns the new ones."""
        ...

    def invalidate_keys(self, batch: KeyBatch) -> dict[str, int]:
        """Publish keys written per group. A batch too large for the feed bumps its groups'
        generations instead: those are returned (empty when published as keys)."""
        ...

    def watch(self, listener: CacheListener) -> Watch:
        """Deliver generation changes and invalidated keys to `listener` until stopped."""
        ...

    def subscribe_keys(self) -> Watch:
        """Declare, until stopped, that this process caches rows and needs the keys others
        write. Call it before caching anything: a publisher that finds no subscriber after
        its write may skip publishing keys, and any cache that subscribes later only reads
        rows written before."""
        ...

    def has_key_subscribers(self) -> bool:
        """Whether publishing keys may matter: some live process subscribed. A store that
        cannot tell cheaply answers True."""
        ...


class CallerStore(Protocol):
    """Callers (core/callers.py): who may call, with hashes of their tokens."""

    def load(self) -> Callers:
        """The callers document; revision 0 (no callers, open server) if never written."""
        ...

    def save(self, callers: Callers, expected_revision: int) -> None:
        """Replace the callers if the stored revision is still `expected_revision`, else
        CallersConflictError."""
        ...

    def watch(self, on_change: Callable[[Callers], None]) -> Watch:
        """Call `on_change` with the current callers, then with each change, until stopped."""
        ...


class Connection(Protocol):
    """What one backend's four stores share: a ZooKeeper session, or a directory."""

    def close(self) -> None:
        """Stop every watch the stores started on it and release it."""
        ...


@dataclass(frozen=True)
class ConfigStore:
    """One backend's four stores over one connection, as the wiring opens them
    (configstore.files.open_files, configstore.zookeeper.open_zookeeper).

    Whoever opened it closes it; the parts it hands out take only the store they use.
    """

    registry: RegistryStore
    blobs: BlobStore
    cache_feed: CacheFeedStore
    callers: CallerStore
    connection: Connection

    def close(self) -> None:
        self.connection.close()
