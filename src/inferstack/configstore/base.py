"""The config store interface: one whole registry, replaced atomically."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from inferstack.core.errors import InferstackError
from inferstack.core.registry import Registry


class ConfigConflictError(InferstackError):
    """Someone else applied definitions between our read and our write."""


class Watch(Protocol):
    def stop(self) -> None: ...


class ConfigStore(Protocol):
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

    def close(self) -> None: ...
