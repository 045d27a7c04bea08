"""Embedded config store: one JSON file under the data directory, replaced by rename.

Blobs (model files) live next to it, one file per blob named by its sha256::

    <data_dir>/config/registry.json
    <data_dir>/config/blobs/<sha256>

Each blob is written to a temporary file in the same directory, synced and renamed into
place, so a reader sees the whole blob or none; concurrent writers of the same blob each
rename their own complete copy. A writer that dies leaves only a `.blob-*` temporary file.
Blobs are never deleted here; pruning those no registry references is future work.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from inferstack.configstore.base import (
    BlobNotFoundError,
    ConfigConflictError,
    CorruptBlobError,
    blob_digest,
    check_digest,
)
from inferstack.core.registry import Registry

log = logging.getLogger(__name__)
REGISTRY_FILE = "registry.json"
BLOBS_DIRECTORY = "blobs"
FileIdentity = tuple[int, int] | None  # (inode, mtime): a rename always changes it


class FileConfigStore:
    def __init__(self, data_dir: Path, poll_interval: float = 0.25) -> None:
        self.directory = data_dir / "config"
        self.path = self.directory / REGISTRY_FILE
        self.blobs_directory = self.directory / BLOBS_DIRECTORY
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

    def put_blob(self, data: bytes) -> str:
        digest = blob_digest(data)
        try:
            if blob_digest(self._blob_path(digest).read_bytes()) == digest:
                return digest
        except FileNotFoundError:
            pass
        # Absent, or damaged on disk: (re)write it. Same bytes, so racing writers agree.
        self.blobs_directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.blobs_directory, prefix=".blob-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self._blob_path(digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _sync_directory(self.blobs_directory)  # the rename itself survives a power cut
        return digest

    def get_blob(self, digest: str) -> bytes:
        digest = check_digest(digest)
        path = self._blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {digest} in {self.blobs_directory}") from None
        if blob_digest(data) != digest:
            raise CorruptBlobError(
                f"blob {digest} is corrupt: {path} does not hash to its name; "
                "store the file again (inferstack apply)"
            )
        return data

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(check_digest(digest)).is_file()

    def close(self) -> None:
        pass

    def _blob_path(self, digest: str) -> Path:
        return self.blobs_directory / digest

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
