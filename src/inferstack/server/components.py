"""Wiring: the only place that chooses adapters, from the deployment settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from inferstack.configstore.base import BlobStore, ConfigStore, Watch
from inferstack.core.errors import InvalidArgumentError, UnavailableError
from inferstack.core.registry import Registry
from inferstack.featurestore.cache.base import RowCache
from inferstack.featurestore.cache.coherence import CacheCoherence
from inferstack.featurestore.cache.memory import MemoryCache
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.rows import RowSource
from inferstack.featurestore.service import FeatureService
from inferstack.featurestore.storage.base import FeatureStorage
from inferstack.inferflow.features import FeatureSource, LocalFeatureSource, RemoteFeatureSource
from inferstack.inferflow.inferencelog.base import InferenceLogger, LogSink
from inferstack.inferflow.recent import (
    InteractionSource,
    LocalInteractionSource,
    RemoteInteractionSource,
)
from inferstack.inferflow.service import InferflowService, RuntimeLoader
from inferstack.interactions.cold.base import ColdStore
from inferstack.interactions.events import InteractionCatalog
from inferstack.interactions.hot.base import HotTier
from inferstack.interactions.service import InteractionService
from inferstack.kv.settings import CassandraSettings, RedisCacheSettings
from inferstack.server.registryswitch import RegistrySwitch
from inferstack.server.settings import (
    CompactionSettings,
    InferflowSettings,
    ServeSettings,
    ZooKeeperConfigSettings,
)
from inferstack.server.tls import read_pem

log = logging.getLogger(__name__)


def open_config_store(settings: ServeSettings) -> ConfigStore:
    config = settings.config
    if isinstance(config, ZooKeeperConfigSettings):
        from inferstack.configstore.zookeeper import open_zookeeper

        return open_zookeeper(
            config.hosts,
            config.root,
            connect_timeout=config.connect_timeout,
            request_timeout=config.request_timeout,
            session_timeout=config.session_timeout,
        )
    from inferstack.configstore.files import open_files

    return open_files(settings.data_dir)


def open_storage(settings: ServeSettings) -> FeatureStorage:
    storage = settings.storage
    if isinstance(storage, CassandraSettings):
        from inferstack.kv.cassandra import CassandraStorage

        return CassandraStorage(storage)
    from inferstack.kv.lmdb import LmdbStorage

    return LmdbStorage(storage.path or settings.data_dir / "lmdb")


def open_shared_cache(settings: RedisCacheSettings) -> RowCache:
    from inferstack.featurestore.cache.redis import RedisCache

    return RedisCache(settings)


async def prepare_storage(settings: ServeSettings, registry: Registry | None = None) -> None:
    """Create the tables (named databases) the registry needs, once, from one process.

    Run by the supervisor before it starts workers and by `apply` after it stores new
    definitions, so workers never race each other's CREATE TABLE (Cassandra answers such
    races with "Unknown CF" while its schema settles).
    """
    if registry is None:
        config = open_config_store(settings)
        try:
            registry = config.registry.load()
        finally:
            config.close()
    storage = open_storage(settings)
    cold = open_cold_store(settings)
    try:
        await storage.prepare(registry)
        await cold.prepare(registry)
    finally:
        await storage.close()
        await cold.close()


async def check_reachable(settings: ServeSettings) -> None:
    """Fail at start-up, naming the address, if a configured system does not answer.

    Run once by the supervisor before any worker starts, so nothing starts half-configured.
    """
    with _quiet("cassandra", "kazoo"):  # drivers log tracebacks; the error below says it all
        open_config_store(settings).close()  # ZooKeeper connects (or raises) in its constructor
        storage = open_storage(settings)
        try:
            connect = getattr(storage, "connect", None)
            if connect is not None:
                await connect()
        finally:
            await storage.close()
    shared = settings.cache.shared
    if shared is not None:
        await _ping_redis("cache.shared", shared.address, shared.timeout)
    hot = settings.interactions.hot
    if hot.type == "redis":
        await _ping_redis("interactions.hot", hot.address or "", hot.timeout)


async def _ping_redis(field: str, address: str, timeout: float) -> None:
    import redis.asyncio as aioredis

    from inferstack.kv.redis import redacted, redis_url

    client = aioredis.from_url(
        redis_url(address),
        socket_connect_timeout=max(timeout, 1.0),
        socket_timeout=max(timeout, 1.0),
    )
    try:
        await client.ping()
    except Exception as exc:
        shown = redacted(address)  # never print a password
        raise UnavailableError(f"{field}: redis at {shown} did not answer: {exc}") from exc
    finally:
        await client.aclose()


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def open_inference_log(settings: ServeSettings) -> InferenceLogger:
    log_settings = settings.inferflow.inference_log
    sink: LogSink
    if log_settings.type == "kafka":
        from inferstack.inferflow.inferencelog.kafka import KafkaSink

        if not log_settings.bootstrap:
            raise UnavailableError("inferflow.inference_log.bootstrap: needed for type kafka")
        sink = KafkaSink(log_settings.bootstrap, log_settings.topic)
    else:
        from inferstack.inferflow.inferencelog.parquet import ParquetSink

        sink = ParquetSink(
            log_settings.directory or settings.data_dir / "inference-log",
            rotate_bytes=int(log_settings.rotate_bytes),
            rotate_seconds=log_settings.rotate_seconds,
        )
    return InferenceLogger(sink, capacity=log_settings.queue)


class RemoteCredentials(TypedDict):
    token: str | None
    ca: Path | None
    cert: Path | None
    key: Path | None


def remote_credentials(settings: InferflowSettings) -> RemoteCredentials:
    """What inferflow presents to a remote feature store: a token read from its file (or
    $INFERSTACK_TOKEN, which the clients read themselves) and the TLS files."""
    token = None
    if settings.feature_store_token_file is not None:
        path = settings.feature_store_token_file
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise InvalidArgumentError(
                f"inferflow.feature_store_token_file {path}: {exc.strerror or exc}"
            ) from exc
        if not token:
            raise InvalidArgumentError(f"inferflow.feature_store_token_file {path} is empty")
    tls = settings.feature_store_tls
    for field in ("ca", "cert", "key"):
        file: Path | None = getattr(tls, field, None)
        if file is not None:  # checked here so the error names the setting
            read_pem(file, f"inferflow.feature_store_tls.{field}")
    return RemoteCredentials(
        token=token,
        ca=tls.ca if tls else None,
        cert=tls.cert if tls else None,
        key=tls.key if tls else None,
    )


def open_inferflow(
    settings: ServeSettings,
    blobs: BlobStore,
    service: FeatureService,
    interactions: InteractionService,
) -> InferflowService:
    source: FeatureSource
    recent: InteractionSource
    remote = settings.inferflow.feature_store
    if remote:  # the interaction store is served next to the remote feature store
        from inferstack.client import AsyncFeatureStoreClient, AsyncInteractionsClient

        credentials = remote_credentials(settings.inferflow)
        timeout = settings.inferflow.feature_store_timeout
        source = RemoteFeatureSource(
            AsyncFeatureStoreClient(remote, timeout=timeout, **credentials)
        )
        recent = RemoteInteractionSource(
            AsyncInteractionsClient(remote, timeout=timeout, **credentials)
        )
    else:
        source = LocalFeatureSource(service)
        recent = LocalInteractionSource(interactions)
    return InferflowService(source, RuntimeLoader(blobs.get), open_inference_log(settings), recent)


def open_hot_tier(settings: ServeSettings) -> HotTier:
    hot = settings.interactions.hot
    if hot.type == "redis":
        from inferstack.interactions.hot.redis import RedisHotTier

        if not hot.address:
            raise UnavailableError("interactions.hot.address: needed for type redis")
        return RedisHotTier(hot.address, prefix=hot.prefix, timeout=hot.timeout)
    from inferstack.interactions.hot.lmdb import LmdbHotTier

    return LmdbHotTier(hot.path or settings.data_dir / "interactions" / "hot")


def open_cold_store(settings: ServeSettings) -> ColdStore:
    """The cold tier lives where the feature store's rows do."""
    storage = settings.storage
    if isinstance(storage, CassandraSettings):
        from inferstack.interactions.cold.cassandra import CassandraColdStore

        return CassandraColdStore(storage)  # the same cluster settings as the feature rows
    from inferstack.interactions.cold.lmdb import LmdbColdStore

    return LmdbColdStore(settings.data_dir / "interactions" / "cold")


async def open_interactions(settings: ServeSettings, registry: Registry) -> InteractionService:
    cold = open_cold_store(settings)
    await cold.prepare(registry)
    return InteractionService(
        open_hot_tier(settings),
        cold,
        InteractionCatalog(registry),
        lease=settings.interactions.sweeper.lease,
    )


@dataclass
class Components:
    config: ConfigStore
    service: FeatureService
    inferflow: InferflowService
    interactions: InteractionService
    watch: Watch | None = None
    coherence: CacheCoherence | None = None  # caches following writes (cache feed)
    compaction: asyncio.Task[None] | None = None  # expired rows, embedded storage

    def clear_stale_readers(self) -> int:
        """Free the reader slots that dead processes (a killed worker or CLI) left in every
        LMDB environment this process has open: feature rows, hot and cold interactions.
        Returns how many were freed; adapters of other systems have nothing to free."""
        cleared = 0
        for part in (self.service.rows.storage, self.interactions.hot, self.interactions.cold):
            clear = getattr(part, "clear_stale_readers", None)  # the LMDB adapters
            if clear is not None:
                cleared += clear()
        return cleared

    async def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.coherence is not None:
            self.coherence.stop()
        if self.compaction is not None:
            self.compaction.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.compaction
        await self.interactions.close()
        await self.inferflow.close()
        self.config.close()
        await self.service.rows.close()


async def build(settings: ServeSettings, *, watch: bool = True) -> Components:
    config = open_config_store(settings)
    storage = open_storage(settings)
    registry = config.registry.load()
    await storage.prepare(registry)
    max_bytes = settings.local_cache_bytes
    local = MemoryCache(max_bytes) if max_bytes else None
    shared = open_shared_cache(settings.cache.shared) if settings.cache.shared else None
    rows = RowSource(storage, local, shared)
    service = FeatureService(rows, Catalog(registry), settings.max_keys)
    interactions = await open_interactions(settings, registry)
    inferflow = open_inferflow(settings, config.blobs, service, interactions)
    await inferflow.use_registry(registry, service.catalog)
    components = Components(config, service, inferflow, interactions)
    if watch:
        loop = asyncio.get_running_loop()
        switch = RegistrySwitch(storage, service, inferflow, interactions)

        def on_change(registry: Registry) -> None:  # called on the watcher's thread
            asyncio.run_coroutine_threadsafe(switch.to(registry), loop)

        components.watch = config.registry.watch(on_change)
        # Caches follow writes made anywhere: ingest, other workers' Persists.
        components.coherence = CacheCoherence(config.cache_feed, rows, loop)
        components.coherence.start()
        components.compaction = start_compaction(settings.compaction, storage, service)
    return components


def start_compaction(
    settings: CompactionSettings, storage: FeatureStorage, service: FeatureService
) -> asyncio.Task[None] | None:
    """Slow background deletion of expired rows, where storage does not expire rows itself
    (LMDB; Cassandra drops them by TTL)."""
    from inferstack.kv.lmdb import LmdbStorage

    if not settings.enabled or not isinstance(storage, LmdbStorage):
        return None
    from inferstack.featurestore.compaction import run_background

    return asyncio.create_task(
        run_background(
            storage,
            lambda: sorted(service.catalog.registry.feature_groups),
            rows_per_second=settings.rows_per_second,
            batch=settings.batch,
            pause=settings.pause,
        ),
        name="compaction",
    )
