"""Embedded config store: files under the data directory, each replaced by rename::

    <data_dir>/config/registry.json       the registry (registry.py)
    <data_dir>/config/blobs/<sha256>      model files (blobs.py)
    <data_dir>/config/cache/state.json    the cache feed (see cachefeed.py): generations and
    <data_dir>/config/cache/slots/<i>     the ring of invalidated-key batches
    <data_dir>/config/callers.json        who may call (core/callers.py): hashes, never tokens

The four stores share one `ConfigDirectory` (layout.py): the paths and the file locks.
"""

from __future__ import annotations

from pathlib import Path

from inferstack.configstore.base import ConfigStore
from inferstack.configstore.files.blobs import FileBlobStore
from inferstack.configstore.files.cachefeed import FileCacheFeed
from inferstack.configstore.files.callers import FileCallerStore
from inferstack.configstore.files.layout import CACHE_POLL_INTERVAL, ConfigDirectory
from inferstack.configstore.files.registry import FileRegistryStore

__all__ = [
    "ConfigDirectory",
    "FileBlobStore",
    "FileCacheFeed",
    "FileCallerStore",
    "FileRegistryStore",
    "open_files",
]


def open_files(
    data_dir: Path,
    poll_interval: float = 0.25,
    cache_poll_interval: float = CACHE_POLL_INTERVAL,
) -> ConfigStore:
    """The four stores over `<data_dir>/config`; nothing is created until written."""
    directory = ConfigDirectory(data_dir, poll_interval, cache_poll_interval)
    return ConfigStore(
        registry=FileRegistryStore(directory),
        blobs=FileBlobStore(directory),
        cache_feed=FileCacheFeed(directory),
        callers=FileCallerStore(directory),
        connection=directory,
    )
