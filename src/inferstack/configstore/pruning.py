"""Which stored blobs (model files) `inferstack models prune` deletes, decided without I/O.

A blob may go when the current registry references no model file by its digest and it was
stored at least a grace period ago (default 1 hour). The grace period is for applies in
progress: `inferstack apply` stores its model files first and saves the registry naming
them afterwards, so a young unreferenced blob may be about to be referenced. Storing bytes
already stored refreshes a blob's `stored_at` (see BlobStore.put), so this holds for
an apply that goes back to an older model file too.

Servers never need a blob the current registry does not reference. A worker reads model
files only while it loads a registry it was just handed, and every watch hands it the
newest one (the file store is polled every 0.25 s, ZooKeeper's pointer is watched), so a
worker that falls behind jumps to the current registry instead of loading older ones, and
the models of the revision it still serves meanwhile are already in its memory. The one
exposure is a worker still loading the previous revision when the prune runs, a fraction of
a second after an apply: that load can fail, and the worker loads the current revision next.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from inferstack.configstore.base import BlobInfo
from inferstack.core.registry import Registry

DEFAULT_GRACE_SECONDS = 3600.0


def referenced_digests(registry: Registry) -> set[str]:
    """The digests of every model file the registry's model configs name."""
    return {
        model.artifact
        for stored in registry.models.values()
        for model in stored.definition.models
        if model.artifact is not None
    }


def blobs_to_prune(
    blobs: Iterable[BlobInfo], referenced: Collection[str], now: float, grace: float
) -> list[BlobInfo]:
    """The blobs not in `referenced` that were stored at least `grace` seconds before
    `now` (unix seconds), oldest first."""
    if grace < 0:
        raise ValueError(f"grace period must not be negative, got {grace:g}s")
    prunable = [b for b in blobs if b.digest not in referenced and now - b.stored_at >= grace]
    return sorted(prunable, key=lambda blob: (blob.stored_at, blob.digest))
