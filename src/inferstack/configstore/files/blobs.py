"""Blobs (model files) next to the registry, one file per blob named by its sha256::

    <data_dir>/config/blobs/<sha256>

Each blob is written to a temporary file in the same directory, synced and renamed into
place, so a reader sees the whole blob or none; concurrent writers of the same blob each
rename their own complete copy. A writer that dies leaves only a `.blob-*` temporary file.
A blob's `stored_at` is its file's mtime; putting bytes already stored touches the file.
Deleting is an unlink: a reader that opened the file still reads all of it, later ones get
BlobNotFoundError. Touching, renaming into place and deleting hold `blobs/.lock`, so a
conditional delete (`if_stored_at`) never removes a blob stored again after its check.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

from inferstack.configstore.base import (
    BlobInfo,
    BlobNotFoundError,
    CorruptBlobError,
    blob_digest,
    check_digest,
    is_digest,
)
from inferstack.configstore.files.layout import ConfigDirectory, sync_directory


class FileBlobStore:
    def __init__(self, directory: ConfigDirectory) -> None:
        self.directory = directory
        self.blobs_directory = directory.blobs_directory

    def put(self, data: bytes) -> str:
        digest = blob_digest(data)
        path = self._path(digest)
        if self._is_stored(path, digest) and self._touch(path):
            return digest
        # Absent, or damaged on disk: (re)write it. Same bytes, so racing writers agree.
        self.blobs_directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.blobs_directory, prefix=".blob-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            with self._locked():  # not between a delete's check and unlink
                os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        sync_directory(self.blobs_directory)  # the rename itself survives a power cut
        return digest

    def get(self, digest: str) -> bytes:
        digest = check_digest(digest)
        path = self._path(digest)
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

    def has(self, digest: str) -> bool:
        return self._path(check_digest(digest)).is_file()

    def delete(self, digest: str, *, if_stored_at: float | None = None) -> bool:
        path = self._path(check_digest(digest))
        if not self.blobs_directory.is_dir():
            return False  # nothing ever stored; do not create the directory to find that out
        with self._locked():
            try:
                stored_at = path.stat().st_mtime
            except FileNotFoundError:
                return False
            if if_stored_at is not None and stored_at != if_stored_at:
                return False  # stored again since it was listed: an apply is using it
            path.unlink()
        sync_directory(self.blobs_directory)  # the unlink survives a power cut too
        return True

    def _locked(self) -> AbstractContextManager[None]:
        """`blobs/.lock`: touching, renaming into place and deleting hold it."""
        return self.directory.locked(self.blobs_directory)

    def _path(self, digest: str) -> Path:
        return self.blobs_directory / digest

    @staticmethod
    def _is_stored(path: Path, digest: str) -> bool:
        """Whether `path` holds an intact copy of the blob named `digest`."""
        try:
            return blob_digest(path.read_bytes()) == digest
        except FileNotFoundError:
            return False

    def _touch(self, path: Path) -> bool:
        """Make a stored blob's `stored_at` now; False if it was deleted meanwhile."""
        with self._locked():
            try:
                os.utime(path)
            except FileNotFoundError:
                return False
        return True

    def list(self) -> list[BlobInfo]:
        try:
            entries = list(os.scandir(self.blobs_directory))
        except FileNotFoundError:
            return []
        blobs = []
        for entry in entries:
            if not is_digest(entry.name):  # .lock, or a dead writer's .blob-* file
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # deleted since the directory was read
                continue
            blobs.append(BlobInfo(entry.name, stat.st_size, stat.st_mtime))
        return sorted(blobs, key=lambda blob: blob.digest)
