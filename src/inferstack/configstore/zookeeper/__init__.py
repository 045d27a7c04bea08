"""Distributed config store: the registry and the rest in Apache ZooKeeper, through kazoo.

Znode layout under the root path (default ``/inferstack``)::

    <root>/current                     the registry pointer      (registry.py)
    <root>/registry/r-<rev>-<seq>/...  immutable registry versions (registry.py)
    <root>/blobs/<sha256>/...          model files by digest     (blobs.py)
    <root>/cache/state, slots/...      the cache feed            (cachefeed.py)
    <root>/callers                     who may call              (callers.py)

Each module's docstring says why its nodes have their shape. The four stores share one
kazoo client (connection.py), opened by `open_zookeeper`; closing the bundle stops every
watch they started, then the client.
"""

from __future__ import annotations

from inferstack.configstore.base import ConfigStore
from inferstack.configstore.zookeeper.blobs import (
    BLOB_CHUNK_BYTES,
    DEFAULT_MAX_BLOB_BYTES,
    ZooKeeperBlobStore,
)
from inferstack.configstore.zookeeper.cachefeed import ZooKeeperCacheFeed
from inferstack.configstore.zookeeper.callers import ZooKeeperCallerStore
from inferstack.configstore.zookeeper.connection import ZooKeeperConnection
from inferstack.configstore.zookeeper.registry import CorruptRegistryError, ZooKeeperRegistryStore
from inferstack.core.errors import InvalidArgumentError

__all__ = [
    "BLOB_CHUNK_BYTES",
    "DEFAULT_MAX_BLOB_BYTES",
    "CorruptRegistryError",
    "ZooKeeperBlobStore",
    "ZooKeeperCacheFeed",
    "ZooKeeperCallerStore",
    "ZooKeeperConnection",
    "ZooKeeperRegistryStore",
    "open_zookeeper",
]


def open_zookeeper(
    hosts: str,
    root: str = "/inferstack",
    *,
    connect_timeout: float = 5.0,
    request_timeout: float = 5.0,
    session_timeout: float = 10.0,
    keep_versions: int = 10,
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
) -> ConfigStore:
    """Connect (or raise UnavailableError naming `hosts`) and open the four stores.

    Arguments are checked before connecting, so a bad one fails without a ZooKeeper."""
    if keep_versions < 1:
        raise InvalidArgumentError(f"keep_versions must be at least 1, got {keep_versions}")
    if max_blob_bytes < 0:
        raise InvalidArgumentError(f"max_blob_bytes must not be negative, got {max_blob_bytes}")
    connection = ZooKeeperConnection(
        hosts,
        root,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        session_timeout=session_timeout,
    )
    return ConfigStore(
        registry=ZooKeeperRegistryStore(connection, keep_versions),
        blobs=ZooKeeperBlobStore(connection, max_blob_bytes),
        cache_feed=ZooKeeperCacheFeed(connection),
        callers=ZooKeeperCallerStore(connection),
        connection=connection,
    )
