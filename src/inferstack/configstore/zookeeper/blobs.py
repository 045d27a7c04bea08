"""Blobs (model files) in ZooKeeper, named by the sha256 of their bytes::

    <root>/blobs/<sha256>              one blob; its data is a JSON header written last,
                                       {"format": 1, "size": 3145728, "chunks": 6},
                                       and empty while the blob is still being written
    <root>/blobs/<sha256>/c-00000, ... the blob's bytes in chunks of at most 64 KiB

Why this shape:

* Blobs commit by their header. A blob node is created empty, its chunks are written, and
  only then is the header set, with a set conditioned on the node's version when the write
  began: a reader (and `has`) treats an empty node as absent, so it never sees half a
  blob. A writer that dies midway leaves an empty node and some chunks; the next `put`
  of the same bytes overwrites them and sets the header. The same bytes always give the same
  node, so concurrent writers of one blob write identical data. Putting bytes already stored
  sets the same header again: that refreshes the node's mtime, which is the blob's
  `stored_at`. ZooKeeper keeps all data in memory, so blobs are capped at `max_blob_bytes`
  (32 MiB by default), and chunks are small (see BLOB_CHUNK_BYTES).
* Blobs are deleted atomically. `delete` deletes the chunks and the node in one
  multi-op transaction, the node's delete conditioned on the version it checked, so a
  reader sees the whole blob or none, and a blob stored again meanwhile is kept. A reader
  that read the header just before finds a chunk missing, sees the node gone or changed and
  reads again (BlobNotFoundError). A blob too large for one request (thousands of chunks,
  far above the default cap) goes in several transactions: the first empties the node (it
  reads as absent from then on), and each one bumps the node's version, so a `put`
  racing it fails its version-checked commit and writes again instead of committing chunks
  deleted under it.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from inferstack.configstore.base import (
    BlobInfo,
    BlobNotFoundError,
    CorruptBlobError,
    blob_digest,
    check_digest,
    is_digest,
)
from inferstack.configstore.zookeeper.connection import (
    FORMAT,
    READ_ATTEMPTS,
    ZooKeeperConnection,
    chunk_name,
)
from inferstack.core.errors import ResourceExhaustedError, UnavailableError

log = logging.getLogger(__name__)

BLOBS_NODE = "blobs"
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


class ZooKeeperBlobStore:
    """Blobs up to `max_blob_bytes` (checked by open_zookeeper: not negative)."""

    def __init__(
        self, connection: ZooKeeperConnection, max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    ) -> None:
        self.connection = connection
        self.max_blob_bytes = max_blob_bytes
        self.hosts = connection.hosts
        self._client = connection.client
        self._wait = connection.wait
        self._blobs_path = connection.path(BLOBS_NODE)

    def put(self, data: bytes) -> str:
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

    def get(self, digest: str) -> bytes:
        return self._read_blob(check_digest(digest)).payload

    def has(self, digest: str) -> bool:
        path = self._blob_path(check_digest(digest))
        try:
            data, _ = self._wait(self._client.get_async(path), "blob read")
        except NoNodeError:
            return False
        return bool(data)  # an empty node is a blob still being written

    def list(self) -> list[BlobInfo]:
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

    def delete(self, digest: str, *, if_stored_at: float | None = None) -> bool:
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

    # -- reading ---------------------------------------------------------------------------

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
        names = [chunk_name(i) for i in range(header.chunks)]
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

    def _delete_blob_nodes(self, path: str, chunks: builtins.list[str], version: int) -> bool:
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

    def _write_blob_chunks(self, path: str, chunks: builtins.list[bytes]) -> None:
        named = [(f"{path}/{chunk_name(i)}", chunk) for i, chunk in enumerate(chunks)]
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
