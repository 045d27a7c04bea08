"""Moving every service of a worker to a new registry revision, never backwards.

The config store's watch reports revisions on its own thread, and each switch awaits the
network (Cassandra prepares tables and statements; inferflow loads model runtimes). Switches
that ran side by side could finish out of order: revision N's slow `prepare` landing after
N+1's, so the feature catalog would move back to N while inferflow stayed on N+1. One lock
serialises them, and the revision is checked again after every await, so a switch to an
older revision than the one in use does nothing.
"""

from __future__ import annotations

import asyncio
import logging

from inferstack.core.registry import Registry
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.service import FeatureService
from inferstack.featurestore.storage.base import FeatureStorage
from inferstack.inferflow.service import InferflowService
from inferstack.interactions.service import InteractionService

log = logging.getLogger(__name__)


class RegistrySwitch:
    def __init__(
        self,
        storage: FeatureStorage,
        features: FeatureService,
        inferflow: InferflowService,
        interactions: InteractionService,
    ) -> None:
        self.storage = storage
        self.features = features
        self.inferflow = inferflow
        self.interactions = interactions
        self._lock = asyncio.Lock()

    def _behind(self, registry: Registry) -> bool:
        """Whether `registry` is newer than what the feature store serves."""
        return registry.revision > self.features.catalog.revision

    async def to(self, registry: Registry) -> bool:
        """Switch every service to `registry` unless something as new is in use already;
        whether it switched."""
        async with self._lock:
            if not self._behind(registry):
                return False
            await self.storage.prepare(registry)
            if not self._behind(registry):
                return False
            catalog = Catalog(registry)  # off the hot path, before any swap
            self.features.use_catalog(catalog)
            # Each of these swaps only to a newer revision than it has, after its awaits.
            await self.inferflow.use_registry(registry, catalog)
            await self.interactions.use_registry(registry)
            log.info("definitions revision %d in use", registry.revision)
            return True
