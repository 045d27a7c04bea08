"""Wiring: build storage, caches, config store and the feature service from settings."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from inferstack.configstore.base import ConfigStore, Watch
from inferstack.configstore.files import FileConfigStore
from inferstack.core.registry import Registry
from inferstack.featurestore.cache.memory import MemoryCache
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.rows import RowSource
from inferstack.featurestore.service import FeatureService
from inferstack.featurestore.storage.base import FeatureStorage
from inferstack.featurestore.storage.lmdb import LmdbStorage
from inferstack.server.settings import ServeSettings

log = logging.getLogger(__name__)


def open_config_store(settings: ServeSettings) -> ConfigStore:
    return FileConfigStore(settings.data_dir)


def open_storage(settings: ServeSettings) -> FeatureStorage:
    return LmdbStorage(settings.data_dir / "lmdb")


@dataclass
class Components:
    config: ConfigStore
    service: FeatureService
    watch: Watch | None = None

    async def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        self.config.close()
        await self.service.rows.close()


async def build(settings: ServeSettings, *, watch: bool = True) -> Components:
    config = open_config_store(settings)
    storage = open_storage(settings)
    registry = config.load()
    await storage.prepare(registry)
    local = MemoryCache(settings.cache_bytes) if settings.cache_bytes else None
    service = FeatureService(RowSource(storage, local), Catalog(registry), settings.max_keys)
    components = Components(config, service)
    if watch:
        loop = asyncio.get_running_loop()

        async def switch(registry: Registry) -> None:
            if registry.revision <= service.catalog.revision:
                return
            await storage.prepare(registry)
            service.use_catalog(Catalog(registry))
            log.info("definitions revision %d in use", registry.revision)

        def on_change(registry: Registry) -> None:  # called on the watcher's thread
            asyncio.run_coroutine_threadsafe(switch(registry), loop)

        components.watch = config.watch(on_change)
    return components
