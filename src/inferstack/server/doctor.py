"""`inferstack doctor`: check a deployment end to end, one result per check.

Every check goes through the adapters the server itself uses (server/components.py), so a
check that passes here means the server would reach the same system the same way. Each one
is bounded by a timeout and reports ok, warn or fail with, when it is not ok, what to do.
Blocking calls (ZooKeeper, LMDB, files) run on daemon threads: a system that hangs costs
its check the timeout and never keeps the command from exiting.

About 600 lines: one short method per check of every system, kept in one place so the
list of checks reads as the checklist it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferstack.client.channels import channel_credentials
from inferstack.configstore.base import BlobStore, ConfigStore
from inferstack.core.registry import Registry
from inferstack.kv.settings import CassandraSettings
from inferstack.server.components import open_config_store, open_storage
from inferstack.server.settings import (
    LmdbStorageSettings,
    ServeSettings,
    ZooKeeperConfigSettings,
)

State = Literal["ok", "warn", "fail"]
T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
SKEW_WARN_SECONDS = 0.5
SKEW_FAIL_SECONDS = 5.0
DISK_WARN_FRACTION = 0.10
DISK_FAIL_FRACTION = 0.02
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}  # a server bound to every address answers on loopback


@dataclass(frozen=True)
class CheckResult:
    check: str
    state: State
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "state": self.state, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class ServerTargets:
    """Where a running server should answer health checks; None: not checked."""

    grpc: str | None = None  # host:port
    http: str | None = None  # host:port
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None


class CheckTimeoutError(Exception):
    pass


async def bounded(seconds: float, work: Awaitable[T]) -> T:
    """`work`, or CheckTimeoutError after `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError as exc:
        raise CheckTimeoutError(f"no answer within {seconds:g} s") from exc


async def in_thread(function: Callable[[], T]) -> T:
    """Run a blocking call on a daemon thread (asyncio.to_thread's pool would be joined at
    exit, so a call that never returns would keep the command from exiting)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # the check timed out meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = function()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="doctor-check", daemon=True).start()
    return await future


def reason(exc: BaseException) -> str:
    """The first line of an error's message (drivers append stack dumps), or its type."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class Doctor:
    """Runs the checks in order; later checks use what earlier ones opened (the registry)."""

    def __init__(
        self, settings: ServeSettings, servers: ServerTargets, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.settings = settings
        self.servers = servers
        self.timeout = timeout
        self.results: list[CheckResult] = []
        self._config: ConfigStore | None = None
        self._registry: Registry | None = None

    def _add(self, check: str, state: State, detail: str, fix: str = "") -> None:
        self.results.append(CheckResult(check, state, detail, fix if state != "ok" else ""))

    async def run(self) -> list[CheckResult]:
        try:
            await self._config_store()
            await self._storage()
            await self._caches()
            await self._models()
            await self._server_health()
            self._disk()
        finally:
            if self._config is not None:
                config = self._config
                with contextlib.suppress(Exception):  # best effort, like storage's
                    await bounded(self.timeout, in_thread(config.close))
        return self.results

    # --- config store ---------------------------------------------------------------------

    def _config_where(self) -> str:
        config = self.settings.config
        if isinstance(config, ZooKeeperConfigSettings):
            return f"zookeeper {config.hosts} {config.root}"
        return f"files {self.settings.data_dir / 'config'}"

    async def _config_store(self) -> None:
        where = self._config_where()
        config = self.settings.config
        if not isinstance(config, ZooKeeperConfigSettings):
            registry_file = self.settings.data_dir / "config" / "registry.json"
            if not registry_file.is_file():
                missing = "no data directory" if not self.settings.data_dir.is_dir() else "nothing"
                self._add(
                    "config store",
                    "fail",
                    f"{missing} at {self.settings.data_dir}: no registry "
                    f"({registry_file} does not exist)",
                    "pass the --data-dir of a deployment (or set INFERSTACK_DATA_DIR), or "
                    "create one with `inferstack apply -f DEFINITIONS.yaml --data-dir DIR`",
                )
                return
        started = time.perf_counter()
        try:
            store = await bounded(self.timeout, in_thread(lambda: open_config_store(self.settings)))
            self._config = store
            registry = await bounded(self.timeout, in_thread(store.registry.load))
        except Exception as exc:
            fix = (
                f"check that ZooKeeper answers at {config.hosts} (`echo ruok | nc HOST PORT`) "
                "and that config.hosts in the deployment names it"
                if isinstance(config, ZooKeeperConfigSettings)
                else f"check that {self.settings.data_dir / 'config'} is readable; re-run "
                "`inferstack apply` if the registry file is damaged"
            )
            self._add("config store", "fail", f"{where}: {reason(exc)}", fix)
            return
        took = (time.perf_counter() - started) * 1e3
        self._registry = registry
        counts = (
            f"revision {registry.revision}: {len(registry.entities)} entities, "
            f"{len(registry.feature_groups)} feature groups, {len(registry.models)} models, "
            f"{len(registry.interaction_types)} interaction types"
        )
        if registry.revision == 0:
            self._add(
                "config store",
                "warn",
                f"{where}: reachable, but nothing was applied yet",
                "apply definitions: `inferstack apply -f DEFINITIONS.yaml`",
            )
            return
        self._add("config store", "ok", f"{where}: {counts}; loaded in {took:.0f} ms")

    # --- storage --------------------------------------------------------------------------

    async def _storage(self) -> None:
        if isinstance(self.settings.storage, CassandraSettings):
            await self._cassandra(self.settings.storage)
        else:
            await self._lmdb(self.settings.storage)

    async def _lmdb(self, settings: LmdbStorageSettings) -> None:
        from inferstack.kv.lmdb import LmdbStorage

        path = settings.path or self.settings.data_dir / "lmdb"
        if not (path / "data.mdb").is_file():
            self._add(
                "storage",
                "fail",
                f"lmdb {path}: no LMDB environment there",
                "pass the --data-dir of a deployment, or run `inferstack apply` (it creates "
                "the environment and a database per feature group)",
            )
            return
        try:
            storage = await bounded(self.timeout, in_thread(lambda: open_storage(self.settings)))
        except Exception as exc:
            self._add(
                "storage",
                "fail",
                f"lmdb {path}: {reason(exc)}",
                f"check that {path} is readable and writable by this user",
            )
            return
        assert isinstance(storage, LmdbStorage)
        try:
            self._add("storage", "ok", f"lmdb {path}: the environment opens")
            if self._registry is not None:
                groups = sorted(self._registry.feature_groups)
                missing = [g for g in groups if not storage.has_database(g)]
                self._tables("feature group", f"lmdb {path}", "database", groups, missing)
        finally:
            storage.close_sync()
        await self._lmdb_cold_tier()

    async def _lmdb_cold_tier(self) -> None:
        from inferstack.interactions.cold.lmdb import database_name
        from inferstack.kv.lmdb import LmdbStorage

        types = sorted(self._registry.interaction_types) if self._registry else []
        if not types:
            return
        path = self.settings.data_dir / "interactions" / "cold"
        if not (path / "data.mdb").is_file():  # opening would create it: the doctor must not
            self._tables("interaction type", f"lmdb {path}", "database", types, types)
            return
        storage = await bounded(self.timeout, in_thread(lambda: LmdbStorage(path)))
        try:
            missing = [t for t in types if not storage.has_database(database_name(t))]
            self._tables("interaction type", f"lmdb {path}", "database", types, missing)
        finally:
            storage.close_sync()

    async def _cassandra(self, settings: CassandraSettings) -> None:
        from inferstack.kv.cassandra import CassandraStorage

        where = f"{settings.type} {', '.join(settings.contact_points)}"
        storage = open_storage(self.settings)
        assert isinstance(storage, CassandraStorage)
        try:
            try:
                await bounded(self.timeout, storage.connect())
                tables = await bounded(self.timeout, storage.existing_tables())
            except Exception as exc:
                self._add(
                    "storage",
                    "fail",
                    f"{where}: {reason(exc)}",
                    "check that the nodes answer CQL on that port (`cqlsh HOST PORT`) and that "
                    "storage.contact_points in the deployment names them",
                )
                return
            if tables is None:
                self._add(
                    "storage",
                    "fail",
                    f"{where}: reachable, but keyspace '{settings.keyspace}' does not exist",
                    "run `inferstack apply` (it creates the keyspace and tables) or check "
                    "storage.keyspace in the deployment",
                )
            else:
                self._add("storage", "ok", f"{where}: keyspace '{settings.keyspace}' present")
                if self._registry is not None:
                    self._cassandra_tables(settings, tables, storage.table_of)
            await self._clock_skew(storage, where)
        finally:
            with contextlib.suppress(Exception):  # best effort: the results are what matter
                await bounded(self.timeout, storage.close())

    def _cassandra_tables(
        self,
        settings: CassandraSettings,
        tables: set[str],
        table_of: Callable[[str], str],
    ) -> None:
        """A table per feature group, and one per interaction type (the cold tier)."""
        from inferstack.interactions.cold.cassandra import TABLE_PREFIX as COLD_PREFIX
        from inferstack.kv.cassandra import table_name

        assert self._registry is not None
        where = f"{settings.type} {settings.keyspace}"
        groups = sorted(self._registry.feature_groups)
        missing = [g for g in groups if table_of(g) not in tables]
        self._tables("feature group", where, "table", groups, missing)
        types = sorted(self._registry.interaction_types)
        if types:
            missing = [
                t for t in types if table_name(t, COLD_PREFIX, "interaction type") not in tables
            ]
            self._tables("interaction type", where, "table", types, missing)

    def _tables(
        self, kind: str, where: str, noun: str, names: list[str], missing: list[str]
    ) -> None:
        """One check per kind of table ("feature group tables", "interaction type tables")."""
        check = f"{kind} tables"
        if missing:
            self._add(
                check,
                "fail",
                f"{where}: no {noun} for {kind}(s) {', '.join(missing)} "
                f"({len(names) - len(missing)} of {len(names)} present)",
                "run `inferstack serve` with this deployment (its supervisor creates missing "
                f"{noun}s before workers start), or apply the definitions again",
            )
        else:
            self._add(check, "ok", f"{where}: a {noun} for each of the {len(names)} {kind}s")

    async def _clock_skew(self, storage: Any, where: str) -> None:
        """Our clock against each node's: row expiry and cache generations are wall-clock."""
        try:
            nodes = await bounded(self.timeout, storage.nodes())
            skews: list[tuple[float, str]] = []
            for host, port in nodes:
                before = time.time()
                rows = await bounded(
                    self.timeout,
                    storage.query(
                        "SELECT toUnixTimestamp(now()) AS now_ms FROM system.local",
                        node=(host, port),
                    ),
                )
                after = time.time()
                local = (before + after) / 2  # the node read its clock about half way
                skews.append((abs(int(rows[0]["now_ms"]) / 1e3 - local), f"{host}:{port}"))
        except Exception as exc:
            self._add(
                "clock skew",
                "fail",
                f"{where}: could not read the nodes' clocks: {reason(exc)}",
                "check that every storage node answers CQL",
            )
            return
        if not skews:
            self._add("clock skew", "warn", f"{where}: no node reported its clock", "")
            return
        worst, node = max(skews)
        detail = f"largest skew {worst * 1e3:.0f} ms (node {node}, {len(skews)} node(s) read)"
        fix = (
            f"synchronise the clocks of this host and {node} (NTP, chrony): row expiry and "
            "cache generations are wall-clock times"
        )
        if worst > SKEW_FAIL_SECONDS:
            self._add("clock skew", "fail", detail, fix)
        elif worst > SKEW_WARN_SECONDS:
            self._add("clock skew", "warn", detail, fix)
        else:
            self._add("clock skew", "ok", detail)

    # --- caches ---------------------------------------------------------------------------

    async def _caches(self) -> None:
        shared = self.settings.cache.shared
        if shared is not None:
            await self._redis("shared cache", "cache.shared.address", shared.address)
        hot = self.settings.interactions.hot
        if hot.type == "redis":
            await self._redis("interactions hot tier", "interactions.hot.address", hot.address)

    async def _redis(self, check: str, field: str, address: str | None) -> None:
        import redis.asyncio as aioredis

        from inferstack.kv.redis import redacted, redis_url

        if not address:
            self._add(check, "fail", f"{field} is not set", f"set {field} in the deployment")
            return
        client = aioredis.from_url(
            redis_url(address), socket_connect_timeout=self.timeout, socket_timeout=self.timeout
        )
        shown = redacted(address)  # never print a password in the URL
        try:
            await bounded(self.timeout, client.ping())  # connects first: not timed
            started = time.perf_counter()
            await bounded(self.timeout, client.ping())
            took = (time.perf_counter() - started) * 1e3
        except Exception as exc:
            self._add(
                check,
                "fail",
                f"redis {shown} did not answer PING: {reason(exc)}",
                f"check that Redis listens at {shown} and that {field} in the deployment names it",
            )
            return
        finally:
            await client.aclose()
        self._add(check, "ok", f"redis {shown}: PONG in {took:.1f} ms")

    # --- models ---------------------------------------------------------------------------

    async def _models(self) -> None:
        if self._registry is None or self._config is None:
            return
        config = self._config
        for name, stored in sorted(self._registry.models.items()):
            for model in stored.definition.models:
                check = f"model {name}/{model.name}"
                if model.runtime == "onnx":
                    await self._onnx_blob(check, config.blobs, model.artifact)
                else:
                    for endpoint in model.endpoints:
                        await self._kserve(
                            check, endpoint.address, endpoint.model or model.name, endpoint.version
                        )

    async def _onnx_blob(self, check: str, blobs: BlobStore, digest: str | None) -> None:
        fix = "apply the model config again with the ONNX file at its `path`"
        if digest is None:
            self._add(check, "fail", "onnx model without a stored file digest", fix)
            return
        try:
            present = await bounded(self.timeout, in_thread(lambda: blobs.has(digest)))
        except Exception as exc:
            self._add(check, "fail", f"onnx blob {digest[:12]}: {reason(exc)}", fix)
            return
        if present:
            self._add(check, "ok", f"onnx file {digest[:12]} present in the config store")
        else:
            self._add(check, "fail", f"onnx file {digest[:12]} missing from the config store", fix)

    async def _kserve(self, check: str, address: str, model: str, version: str) -> None:
        from inferstack.inferflow.runtimes.kserve import KServeRuntime

        runtime = KServeRuntime(address, model, version, timeout=self.timeout)
        where = runtime.description
        try:
            server_ready = await bounded(self.timeout, runtime.server_ready())
            model_ready = server_ready and await bounded(self.timeout, runtime.model_ready())
        except Exception as exc:
            self._add(
                check,
                "fail",
                f"{where}: {reason(exc)}",
                f"start the model server at {address} with model '{model}' loaded, or fix "
                "the endpoint in the model config",
            )
            return
        finally:
            await runtime.close()
        if not server_ready:
            self._add(check, "fail", f"{where}: server not ready", "wait for it or restart it")
        elif not model_ready:
            self._add(
                check,
                "fail",
                f"{where}: model not ready",
                f"load model '{model}' on the server at {address}",
            )
        else:
            self._add(check, "ok", f"{where}: server and model ready")

    # --- the server's own ports -----------------------------------------------------------

    async def _server_health(self) -> None:
        if self.servers.grpc:
            await self._grpc_health(self.servers.grpc)
        if self.servers.http:
            await self._http_health(self.servers.http)

    async def _grpc_health(self, target: str) -> None:
        servers = self.servers
        credentials = channel_credentials(servers.ca, servers.cert, servers.key)
        if credentials is None and servers.tls:
            credentials = grpc.ssl_channel_credentials()  # the system's roots
        channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        metadata = (("authorization", f"Bearer {servers.token}"),) if servers.token else ()
        fix = f"start `inferstack serve` listening on {target}, or pass the --server it listens on"
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            started = time.perf_counter()
            answer = await bounded(
                self.timeout,
                stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=self.timeout, metadata=metadata
                ),
            )
            took = (time.perf_counter() - started) * 1e3
        except grpc.aio.AioRpcError as exc:
            detail = f"gRPC {target}: {exc.code().name}: {exc.details()}"
            self._add("server gRPC health", "fail", detail, fix)
            return
        except Exception as exc:
            self._add("server gRPC health", "fail", f"gRPC {target}: {reason(exc)}", fix)
            return
        finally:
            await channel.close(None)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        if answer.status == health_pb2.HealthCheckResponse.SERVING:
            self._add("server gRPC health", "ok", f"gRPC {target}: {status} in {took:.1f} ms")
        else:
            self._add(
                "server gRPC health",
                "fail",
                f"gRPC {target}: {status}",
                "see the server's log: a worker is starting or stopping",
            )

    async def _http_health(self, target: str) -> None:
        import aiohttp

        servers = self.servers
        context: ssl.SSLContext | None = None
        if servers.tls or servers.ca is not None:
            context = ssl.create_default_context(
                cafile=str(servers.ca) if servers.ca is not None else None
            )
            if servers.cert is not None and servers.key is not None:
                context.load_cert_chain(servers.cert, servers.key)
        url = f"{'https' if context is not None else 'http'}://{target}/healthz"
        headers = {"Authorization": f"Bearer {servers.token}"} if servers.token else {}
        fix = f"start `inferstack serve` with its HTTP port at {target}, or pass the --http it uses"
        started = time.perf_counter()
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers=headers, ssl=context or False) as response,
            ):
                status, body = response.status, await response.text()
        except Exception as exc:
            self._add("server HTTP health", "fail", f"GET {url}: {reason(exc)}", fix)
            return
        took = (time.perf_counter() - started) * 1e3
        if status == 200:
            self._add("server HTTP health", "ok", f"GET {url}: 200 in {took:.1f} ms")
        else:
            self._add(
                "server HTTP health",
                "fail",
                f"GET {url}: {status} {body[:200]}",
                "see the server's log",
            )

    # --- disk -----------------------------------------------------------------------------

    def _disk(self) -> None:
        path = self.settings.data_dir.absolute()
        while not path.exists() and path != path.parent:
            path = path.parent  # not created yet: the file system it would live on
        usage = shutil.disk_usage(path)
        free = usage.free / usage.total if usage.total else 0.0
        detail = (
            f"{path}: {usage.free / (1 << 30):.1f} GiB free of {usage.total / (1 << 30):.1f} "
            f"GiB ({free:.0%})"
        )
        fix = (
            f"free space on the file system holding {path}, or move the data dir: LMDB, "
            "the inference log and the config files need room to grow"
        )
        if free < DISK_FAIL_FRACTION:
            self._add("free disk", "fail", detail, fix)
        elif free < DISK_WARN_FRACTION:
            self._add("free disk", "warn", detail, fix)
        else:
            self._add("free disk", "ok", detail)


def server_targets_from(
    settings: ServeSettings, grpc_target: str | None, http_target: str | None
) -> tuple[str | None, str | None]:
    """The addresses to health-check: the ones given, else the ports the settings set
    (a deployment file or INFERSTACK_* variables), else none (no server is expected)."""
    if grpc_target or http_target:
        return grpc_target, http_target
    chosen = settings.model_fields_set
    host = "127.0.0.1" if settings.host in WILDCARD_HOSTS else settings.host
    grpc_address = f"{host}:{settings.grpc_port}" if "grpc_port" in chosen else None
    http_address = (
        f"{host}:{settings.http_port}" if "http_port" in chosen and settings.http_port > 0 else None
    )
    return grpc_address, http_address


async def diagnose(
    settings: ServeSettings, servers: ServerTargets, timeout: float = DEFAULT_TIMEOUT
) -> list[CheckResult]:
    return await Doctor(settings, servers, timeout).run()
