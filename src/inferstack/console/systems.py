"""The Health page's list of configured systems and the state of each.

Addresses come from the deployment settings; states from small probes through the same
objects the server serves with (a read of one absent key, the shared cache's circuit
breaker, a load of the stored registry). Probes are bounded by a timeout and their answers
kept for a few seconds, so however many pages are open, a worker probes rarely.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from inferstack.inferflow.service import BrokenModel
from inferstack.kv.redis import redacted
from inferstack.kv.settings import CassandraSettings
from inferstack.server.components import Components
from inferstack.server.settings import ServeSettings, ZooKeeperConfigSettings

PROBE_TIMEOUT = 2.0
KEEP_SECONDS = 5.0
PROBE_KEY = b"\x00inferstack-console-probe"


@dataclass(frozen=True)
class SystemState:
    role: str  # "feature storage", "shared cache"...
    kind: str  # "cassandra", "lmdb", "redis"...
    where: str  # address or path
    state: str  # "up", "down", "degraded", "off", "unknown"
    detail: str = ""


class SystemProbe:
    def __init__(self, components: Components, settings: ServeSettings) -> None:
        self.components = components
        self.settings = settings
        self._kept: tuple[float, list[SystemState]] | None = None
        self._lock = asyncio.Lock()

    async def states(self) -> list[SystemState]:
        async with self._lock:  # concurrent refreshes share one round of probes
            now = time.monotonic()
            if self._kept is None or now - self._kept[0] > KEEP_SECONDS:
                self._kept = (now, await self._probe())
            return self._kept[1]

    async def _probe(self) -> list[SystemState]:
        return [
            await self._storage(),
            self._local_cache(),
            self._shared_cache(),
            await self._config_store(),
            await self._hot_tier(),
            self._inference_log(),
            *self._models(),
        ]

    async def _storage(self) -> SystemState:
        storage = self.settings.storage
        kind: str
        if isinstance(storage, CassandraSettings):
            kind, where = storage.type, f"{', '.join(storage.contact_points)} / {storage.keyspace}"
        else:
            kind, where = "lmdb", str(storage.path or self.settings.data_dir / "lmdb")
        groups = list(self.components.service.catalog.codecs)
        if not groups:
            return SystemState("feature storage", kind, where, "unknown", "no feature group yet")
        rows = self.components.service.rows
        return await _timed(
            "feature storage", kind, where, lambda: rows.storage.read(groups[0], [PROBE_KEY])
        )

    def _local_cache(self) -> SystemState:
        local = next(
            (c for c in self.components.service.rows.caches if c is not self._shared()), None
        )
        if local is None:
            return SystemState("local cache", "memory", "in each worker", "off")
        used, limit = getattr(local, "used_bytes", None), getattr(local, "max_bytes", None)
        detail = f"{_mib(used)} of {_mib(limit)} MiB in this worker" if used is not None else ""
        return SystemState("local cache", "memory", "in each worker", "up", detail)

    def _shared(self) -> Any:
        return self.components.service.rows.shared

    def _shared_cache(self) -> SystemState:
        configured = self.settings.cache.shared
        cache = self._shared()
        if configured is None or cache is None:
            return SystemState("shared cache", "redis", "-", "off")
        where = str(getattr(cache, "where", None) or redacted(configured.address))
        breaker = str(getattr(getattr(cache, "breaker_state", None), "name", "")).lower()
        if breaker == "open":
            return SystemState(
                "shared cache", "redis", where, "down", "circuit open: reads go to storage"
            )
        if breaker == "half_open":
            return SystemState("shared cache", "redis", where, "degraded", "probing after errors")
        detail = "circuit closed" if breaker else ""
        return SystemState("shared cache", "redis", where, "up", detail)

    async def _config_store(self) -> SystemState:
        config = self.settings.config
        if isinstance(config, ZooKeeperConfigSettings):
            kind, where = "zookeeper", f"{config.hosts} {config.root}"
        else:
            kind, where = "files", str(self.settings.data_dir / "config")
        in_use = self.components.service.catalog.revision
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                stored = await asyncio.to_thread(self.components.config.registry.load)
        except Exception as exc:
            return SystemState(
                "config store", kind, where, "down", f"{_reason(exc)}; serving revision {in_use}"
            )
        took = (time.perf_counter() - started) * 1e3
        behind = "" if stored.revision == in_use else f" (revision {stored.revision} stored)"
        detail = f"revision {in_use} in use{behind}; read in {took:.1f} ms"
        return SystemState("config store", kind, where, "up", detail)

    async def _hot_tier(self) -> SystemState:
        hot = self.settings.interactions.hot
        if hot.type == "redis":
            where = redacted(hot.address) if hot.address else "-"
        else:
            where = str(hot.path or self.settings.data_dir / "interactions" / "hot")
        tier = self.components.interactions.hot
        return await _timed(
            "interactions hot tier", hot.type, where, lambda: tier.scheduled(PROBE_KEY)
        )

    def _inference_log(self) -> SystemState:
        log = self.settings.inferflow.inference_log
        if log.type == "kafka":
            where = f"{log.bootstrap} {log.topic}"
        else:
            where = str(log.directory or self.settings.data_dir / "inference-log")
        return SystemState("inference log", log.type, where, "configured")

    def _models(self) -> list[SystemState]:
        states = []
        for name, model in sorted(self.components.inferflow.models.items()):
            if isinstance(model, BrokenModel):
                states.append(SystemState("model", name, f"v{model.version}", "down", model.reason))
            else:
                states.append(SystemState("model", name, f"v{model.plan.version}", "up", "loaded"))
        return states


async def _timed(
    role: str, kind: str, where: str, probe: Callable[[], Awaitable[object]]
) -> SystemState:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await probe()
    except Exception as exc:
        return SystemState(role, kind, where, "down", _reason(exc))
    took = (time.perf_counter() - started) * 1e3
    return SystemState(role, kind, where, "up", f"answered in {took:.1f} ms")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT:g} s"
    return f"{type(exc).__name__}: {exc}"


def _mib(value: object) -> str:
    return f"{int(value) / (1 << 20):.1f}" if isinstance(value, int) else "?"
