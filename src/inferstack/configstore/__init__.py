"""Where definitions live: the interfaces, and one adapter package per backing system."""

from inferstack.configstore.base import (
    BlobStore,
    CacheFeedStore,
    CallerStore,
    ConfigConflictError,
    ConfigStore,
    RegistryStore,
    Watch,
)

__all__ = [
    "BlobStore",
    "CacheFeedStore",
    "CallerStore",
    "ConfigConflictError",
    "ConfigStore",
    "RegistryStore",
    "Watch",
]
